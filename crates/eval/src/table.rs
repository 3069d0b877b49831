//! `results.md`: the grid as one markdown table, with notes on what each column measures.

use crate::bench::{Point, Results};

fn mib(bytes: f64) -> f64 {
    bytes / (1024.0 * 1024.0)
}

/// `{v:.digits$}{suffix}`, or `-` for a missing (NaN) value.
fn cell(v: f64, digits: usize, suffix: &str) -> String {
    if v.is_finite() { format!("{v:.digits$}{suffix}") } else { "-".into() }
}

fn row(p: &Point, windows: usize) -> String {
    let pooled = if windows > 1 {
        format!(" {:.3} | {} |", p.perplexity_windows, cell((p.perplexity_windows_ratio - 1.0) * 100.0, 1, "%"))
    } else {
        String::new()
    };
    format!(
        "| {} | {} | {:?} | {:.0} | {} | {:.1} | {} | {:.2} | {} | {:.2} | {} | {:.0}% | {:.3} | {} |{pooled}\n",
        p.length,
        p.policy,
        p.keep,
        p.ttft_ms,
        cell(p.ttft_speedup, 2, "x"),
        p.decode_tok_s,
        cell(p.decode_speedup, 2, "x"),
        mib(p.kv_bytes_prefill as f64),
        cell(p.kv_prefill_ratio, 3, ""),
        mib(p.kv_bytes as f64),
        cell(p.kv_ratio, 3, ""),
        100.0 * p.computed,
        p.perplexity,
        cell((p.perplexity_ratio - 1.0) * 100.0, 1, "%"),
    )
}

/// The markdown report.
pub fn markdown(r: &Results) -> String {
    let mut out = String::from("# sieve bench\n\n");
    out.push_str(&format!("`{}`\n\n", r.command));
    out.push_str(&format!(
        "model `{}`, backend {}, text `{}`, {} decode tokens, {} continuation tokens scored, {} timed run(s) per point, {:.0} s in all\n\n",
        r.model, r.backend, r.text, r.decode_tokens, r.continuation, r.repeats, r.elapsed_s
    ));
    let w = r.ppl_windows;
    out.push_str(
        "| length | policy | keep | TTFT ms | TTFT speedup | decode tok/s | decode speedup | KV after prefill MiB \
         | vs none | KV at end MiB | vs none | prefill computed | ppl | ppl change |",
    );
    out.push_str(&if w > 1 { format!(" ppl, {w} windows | change |\n") } else { "\n".into() });
    out.push_str("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    out.push_str(if w > 1 { "---:|---:|\n" } else { "\n" });
    for p in &r.points {
        out.push_str(&row(p, w));
    }
    out.push_str(&format!(
        "\nNotes:\n\n\
         - Every ratio compares a point with the unpruned model (`none`) at the same length, measured in the same \
         process (after one unmeasured warm-up generation). The speedups compare with unpruned runs timed \
         alternately with the point's own (`baseline_ttft_ms` in results.json), so a drift of the machine's speed \
         during the grid moves both sides alike.\n\
         - TTFT (prefill plus the first token) and decode tokens/s come from a greedy generation of up to {} tokens \
         after the first `length` tokens of the text: the run `sieve generate --raw -n {}` makes (median of {} run(s)).\n\
         - KV after prefill: the cache right after the context's prefill. KV at end: after the generation, as \
         `sieve generate` reports it (policies with a decode budget evict while generating).\n\
         - ppl: compressed-context perplexity of the {} tokens after the context, teacher-forced against the pruned \
         cache (the first window).{}\n\
         - Peak RSS is not measured per point (the process's high-water mark only grows): the whole process peaked \
         at {:.1} MiB resident, weights included.\n",
        r.decode_tokens,
        r.decode_tokens,
        r.repeats,
        r.continuation,
        if w > 1 {
            format!(
                " ppl, {w} windows: the same over {w} consecutive windows of context plus continuation from the \
                 text's start, their scored tokens pooled; the frontier plot uses it."
            )
        } else {
            String::new()
        },
        mib(r.peak_rss_bytes as f64),
    ));
    out
}
