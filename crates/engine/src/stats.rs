//! Statistics of a run: what was computed, what is cached, how long it took.

use serde::Serialize;

use sieve_backend::ModelConfig;

/// Counters of one prefill and the decoding after it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RunStats {
    /// Backend name.
    pub backend: String,
    /// Policy name.
    pub policy: String,
    /// Tokens in the prompt.
    pub prompt_tokens: usize,
    /// Tokens generated.
    pub generated_tokens: usize,
    /// Prompt tokens each layer computed during prefill.
    pub tokens_per_layer: Vec<usize>,
    /// KV entries per layer at the end of the run (per KV head, averaged over the heads
    /// when they keep different counts).
    pub kv_entries: Vec<usize>,
    /// Bytes of the live KV entries at the end of the run.
    pub kv_bytes: usize,
    /// Bytes the KV storage has allocated at the end of the run (live entries plus the
    /// room a backend reserved ahead).
    pub kv_bytes_allocated: usize,
    /// KV cache bytes the same run would hold without eviction.
    pub kv_bytes_unpruned: usize,
    /// Estimated prefill FLOPs.
    pub prefill_flops: f64,
    /// Estimated prefill FLOPs without pruning.
    pub prefill_flops_unpruned: f64,
    /// Fraction of prefill FLOPs saved by pruning.
    pub flops_saved: f64,
    /// Time to first token (prefill plus sampling the first token), milliseconds.
    pub ttft_ms: f64,
    /// Time spent scoring and selecting during prefill, milliseconds.
    pub prune_ms: f64,
    /// Decode time after the first token, milliseconds.
    pub decode_ms: f64,
    /// Decode tokens per second (tokens after the first over `decode_ms`).
    pub decode_tok_s: f64,
    /// Peak resident memory of the process, bytes (0 where unknown): loading included.
    pub peak_rss_bytes: u64,
    /// Resident memory of the process when the generation ended, bytes (0 where unknown).
    pub rss_bytes: u64,
    /// Bytes of model weights.
    pub weight_bytes: usize,
    /// Pruned prompt tokens brought back from the aux cache while decoding (each once).
    pub revived_tokens: usize,
    /// Bytes of hidden states the aux cache holds for revival at the end of the run.
    pub aux_bytes: usize,
}

/// FLOPs of one layer for `rows` query tokens and `pairs` allowed (query, key) pairs.
pub fn layer_flops(c: &ModelConfig, rows: usize, pairs: usize) -> f64 {
    let (q_out, kv_out) = ((c.n_heads * c.head_dim) as f64, (c.n_kv_heads * c.head_dim) as f64);
    let h = c.hidden as f64;
    let proj = 2.0 * rows as f64 * (h * (q_out + 2.0 * kv_out) + q_out * h + 3.0 * h * c.ffn as f64);
    let attn = 4.0 * pairs as f64 * q_out;
    proj + attn
}

/// Number of (query, key) pairs a causal mask allows; both position lists increasing.
pub fn causal_pairs(queries: &[usize], keys: &[usize]) -> usize {
    let mut j = 0;
    let mut total = 0;
    for &q in queries {
        while j < keys.len() && keys[j] <= q {
            j += 1;
        }
        total += j;
    }
    total
}

/// A size line of `/proc/self/status` in bytes (0 elsewhere).
fn status_bytes(key: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with(key)).map(String::from))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|kb| kb.parse::<u64>().ok()))
        .map_or(0, |kb| kb * 1024)
}

/// Peak resident set size of this process (0 where unknown).
pub fn peak_rss_bytes() -> u64 {
    status_bytes("VmHWM:")
}

/// Resident set size of this process now (0 where unknown).
pub fn rss_bytes() -> u64 {
    status_bytes("VmRSS:")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causal_pairs_counts_visible_keys() {
        assert_eq!(causal_pairs(&[0, 1, 2], &[0, 1, 2]), 6);
        assert_eq!(causal_pairs(&[5], &[0, 3, 9]), 2);
        assert_eq!(causal_pairs(&[2, 7], &[0, 2, 5, 7]), 2 + 4);
    }
}
