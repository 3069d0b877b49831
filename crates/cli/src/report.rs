//! Statistics for people (stderr) and machines (JSON).

use sieve_engine::Generation;

fn mib(bytes: usize) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// One block of human-readable statistics on stderr.
pub fn print_stats(g: &Generation) {
    let s = &g.stats;
    let layers = s.tokens_per_layer.len().max(1);
    let computed: usize = s.tokens_per_layer.iter().sum();
    let entries: usize = s.kv_entries.iter().sum();
    eprintln!();
    eprintln!(
        "[sieve] backend {} | policy {} | prompt {} tokens | generated {} ({:?})",
        s.backend, s.policy, s.prompt_tokens, s.generated_tokens, g.stop_reason
    );
    eprintln!(
        "[sieve] time to first token {:.1} ms | decode {:.1} tokens/s | scoring {:.1} ms",
        s.ttft_ms, s.decode_tok_s, s.prune_ms
    );
    eprintln!(
        "[sieve] prefill computed {:.1}% of token-layers | FLOPs saved {:.1}% | KV {} entries/layer avg, {:.2} MiB ({:.1}% of unpruned {:.2} MiB; {:.2} MiB allocated)",
        100.0 * computed as f64 / (s.prompt_tokens * layers).max(1) as f64,
        100.0 * s.flops_saved,
        entries / layers,
        mib(s.kv_bytes),
        100.0 * s.kv_bytes as f64 / s.kv_bytes_unpruned.max(1) as f64,
        mib(s.kv_bytes_unpruned),
        mib(s.kv_bytes_allocated),
    );
    if s.revived_tokens > 0 || s.aux_bytes > 0 {
        eprintln!(
            "[sieve] revived {} pruned prompt tokens while decoding | aux cache {:.2} MiB left",
            s.revived_tokens,
            mib(s.aux_bytes)
        );
    }
    eprintln!(
        "[sieve] weights {:.1} MiB | resident {:.1} MiB (peak {:.1} MiB, loading included)",
        mib(s.weight_bytes),
        s.rss_bytes as f64 / 1048576.0,
        s.peak_rss_bytes as f64 / 1048576.0
    );
}

/// The JSON record of `sieve generate --json`.
pub fn json(g: &Generation) -> serde_json::Value {
    let s = &g.stats;
    serde_json::json!({
        "text": g.text,
        "stop_reason": g.stop_reason,
        "prompt_tokens": s.prompt_tokens,
        "generated_tokens": s.generated_tokens,
        "ttft_ms": s.ttft_ms,
        "decode_tok_s": s.decode_tok_s,
        "kv_bytes": s.kv_bytes,
        "kv_bytes_unpruned": s.kv_bytes_unpruned,
        "stats": s,
    })
}
