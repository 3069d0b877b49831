//! The device check: a backend on some device (a GPU above all) against candle's CPU
//! kernels, on a synthetic model with the default model's shapes, so that it needs no model
//! file. Three parts, each a table of [`DeviceReport`]:
//!
//! - **conformance**: every case of the backend conformance suite and of the core's tensor
//!   cases, run on the device against the host reference;
//! - **agreement**: for each weight type and policy, logits and kept positions of a prefill
//!   and a few decode steps on the device against the CPU;
//! - **speed**: time to first token and decode speed at several prompt lengths, with the
//!   FLOP/s they amount to.

use std::time::Instant;

use serde::Serialize;
use sieve_backend::conformance::{self as cases, Make};
use sieve_backend::{Backend, BackendDevice, ModelConfig, Weights, synthetic};
use sieve_core::conformance as tensor_cases;
use sieve_engine::{Logits, Policy, Session};

use crate::error::{Error, Result};

/// One conformance case on the device.
#[derive(Debug, Clone, Serialize)]
pub struct CaseResult {
    pub case: String,
    pub passed: bool,
    /// The failure, empty when it passed.
    pub detail: String,
}

/// Runs the backend conformance suite with `make` (which builds the backend on the device
/// under test), then the core's tensor cases on that backend's device.
pub fn conformance<B: Backend>(make: Make<'_, B>) -> Vec<CaseResult>
where
    BackendDevice<B>: Clone,
{
    fn one(name: &str, r: std::result::Result<(), impl std::fmt::Display>) -> CaseResult {
        let detail = r.err().map(|e| e.to_string()).unwrap_or_default();
        CaseResult { case: name.to_string(), passed: detail.is_empty(), detail }
    }
    macro_rules! run {
        ($module:ident, $t:ty, $arg:expr; $($case:ident),+ $(,)?) => {
            vec![$( one(stringify!($case), $module::$case::<$t>($arg)) ),+]
        };
    }
    let mut out = run!(cases, B, make; embed, prefill, gapped_positions, decode_steps, probes, compacted_caches,
        per_head_caches, ragged_caches, long_prefill, block_options, sliding_window, packed_weights);
    let config = synthetic::tiny_config();
    let device = make(&config, synthetic::weights(&config, 0, false)).device();
    out.extend(run!(tensor_cases, B::Tensor, &device; host_transfer, reductions, indexing, softmax_matmul,
        elementwise, pooling, top_k, scorer_last_query, scorer_snapkv, scorer_h2o, scorer_attention_free, aggregation));
    out
}

/// One policy at one weight type: the device against the CPU.
#[derive(Debug, Clone, Serialize)]
pub struct Agreement {
    /// Weight type (`f32`, `f16`, `bf16`).
    pub dtype: String,
    pub policy: String,
    /// Prompt tokens, then decode steps.
    pub prompt_tokens: usize,
    pub steps: usize,
    /// Largest relative error `|a - b| / |b|` (Euclidean) of a logits row.
    pub logits_error: f64,
    /// The tolerance for `logits_error` at this weight type ([`tolerance`]).
    pub tolerance: f64,
    /// The least `kept_overlap` that passes ([`min_overlap`]).
    pub min_overlap: f64,
    /// Fraction of caches (layers, or layer-heads for per-head policies) whose kept
    /// positions are identical on both.
    pub kept_identical: f64,
    /// Positions kept by both over positions kept by either, over all caches.
    pub kept_overlap: f64,
    pub passed: bool,
}

/// Largest relative logits error allowed between the device and the CPU: `f32` differs
/// only in summation order; `f16` and `bf16` round every product's inputs, so the check
/// compares them with the CPU computing in `f32` on the same (rounded) weights.
pub fn tolerance(dtype: &str) -> f64 {
    match dtype {
        "f16" => 1e-2,
        "bf16" => 5e-2,
        _ => 1e-3,
    }
}

/// Smallest share of kept positions both sides must agree on ([`Agreement::kept_overlap`]):
/// scores that nearly tie may fall either way under other summation orders or rounding,
/// so a few positions at the cut may differ, more where the products are rounded.
pub fn min_overlap(dtype: &str) -> f64 {
    match dtype {
        "f16" => 0.97,
        "bf16" => 0.95,
        _ => 0.99,
    }
}

/// The kept positions of every cache (each head of a per-head cache on its own).
fn kept<B: Backend>(session: &Session<'_, B>) -> Vec<Vec<usize>> {
    let heads = |c: &sieve_backend::LayerCache<_>, n: usize| -> Vec<Vec<usize>> {
        match c.is_per_head() {
            true => (0..n).map(|h| c.head_positions(h).to_vec()).collect(),
            false => vec![c.positions().to_vec()],
        }
    };
    let n_kv = session.backend().config().n_kv_heads;
    session.caches().iter().flat_map(|c| heads(c, n_kv)).collect()
}

/// Logits rows, and kept positions per cache.
type Trace = (Vec<Vec<f32>>, Vec<Vec<usize>>);

/// Logits rows and kept positions of a prefill of `tokens` and `steps` decode steps (the
/// prompt's tokens again, so that both sides feed the same tokens).
fn trace<B: Backend>(backend: &B, policy: &Policy, tokens: &[u32], steps: usize) -> Result<Trace> {
    let mut session = Session::new(backend, policy.clone())?;
    let mut rows = vec![session.prefill(tokens, Logits::Last)?.last().to_vec()];
    for i in 0..steps {
        let row = session.step(tokens[i % tokens.len()])?;
        rows.push(row);
    }
    Ok((rows, kept(&session)))
}

fn relative_error(a: &[f32], b: &[f32]) -> f64 {
    let diff: f64 = a.iter().zip(b).map(|(x, y)| f64::from(x - y).powi(2)).sum();
    let norm: f64 = b.iter().map(|y| f64::from(*y).powi(2)).sum();
    (diff / norm.max(f64::MIN_POSITIVE)).sqrt()
}

/// The device (`target`) against the CPU (`reference`) for one policy.
pub fn agreement<A: Backend, R: Backend>(
    target: &A,
    reference: &R,
    dtype: &str,
    policy: &Policy,
    tokens: &[u32],
    steps: usize,
) -> Result<Agreement> {
    let (got, kept_got) = trace(target, policy, tokens, steps)?;
    let (want, kept_want) = trace(reference, policy, tokens, steps)?;
    let logits_error = got.iter().zip(&want).map(|(a, b)| relative_error(a, b)).fold(0.0, f64::max);
    let identical = kept_got.iter().zip(&kept_want).filter(|(a, b)| a == b).count();
    let (mut both, mut either) = (0usize, 0usize);
    for (a, b) in kept_got.iter().zip(&kept_want) {
        let common = a.iter().filter(|p| b.binary_search(p).is_ok()).count();
        both += common;
        either += a.len() + b.len() - common;
    }
    let (tolerance, min_overlap) = (tolerance(dtype), min_overlap(dtype));
    let kept_identical = identical as f64 / kept_want.len().max(1) as f64;
    let kept_overlap = both as f64 / either.max(1) as f64;
    Ok(Agreement {
        dtype: dtype.into(),
        policy: policy.name.clone(),
        prompt_tokens: tokens.len(),
        steps,
        logits_error,
        tolerance,
        min_overlap,
        kept_identical,
        kept_overlap,
        passed: logits_error <= tolerance && kept_got.len() == kept_want.len() && kept_overlap >= min_overlap,
    })
}

/// One speed measurement on the device.
#[derive(Debug, Clone, Serialize)]
pub struct Speed {
    pub dtype: String,
    pub policy: String,
    pub prompt_tokens: usize,
    /// Time to first token (the prefill and its last logits row), milliseconds.
    pub ttft_ms: f64,
    /// Decode steps per second after the prefill.
    pub decode_tok_s: f64,
    /// The unpruned model's prefill FLOPs over the TTFT (what the pruned run saves shows
    /// up as a higher figure), TFLOP/s.
    pub prefill_tflops: f64,
    /// The unpruned model's FLOPs per decode step times the decode speed, TFLOP/s.
    pub decode_tflops: f64,
    /// KV cache bytes after the prefill and the decode steps.
    pub kv_bytes: usize,
    /// Device memory in use after the run, before the session is dropped, and after it is
    /// dropped (bytes; `None` where the device cannot say).
    pub device_bytes_in_use: Option<u64>,
    pub device_bytes_after_drop: Option<u64>,
}

/// Matrix FLOPs per token of one pass through the layers (every projection), without the
/// LM head.
fn layer_flops_per_token(c: &ModelConfig) -> f64 {
    let (q, kv) = ((c.n_heads * c.head_dim) as f64, (c.n_kv_heads * c.head_dim) as f64);
    let h = c.hidden as f64;
    2.0 * c.n_layers as f64 * (h * (q + 2.0 * kv) + q * h + 3.0 * h * c.ffn as f64)
}

/// FLOPs of an unpruned causal prefill of `n` tokens: the projections of every token, the
/// attention products (`QK^T` and `AV` over the causal half) and one row of logits.
pub fn prefill_flops(c: &ModelConfig, n: usize) -> f64 {
    let n = n as f64;
    let attention = 2.0 * c.n_layers as f64 * (c.n_heads * c.head_dim) as f64 * n * n;
    layer_flops_per_token(c) * n + attention + 2.0 * (c.vocab * c.hidden) as f64
}

/// FLOPs of one unpruned decode step at context `n`.
pub fn decode_flops(c: &ModelConfig, n: usize) -> f64 {
    let attention = 4.0 * c.n_layers as f64 * (c.n_heads * c.head_dim) as f64 * n as f64;
    layer_flops_per_token(c) + attention + 2.0 * (c.vocab * c.hidden) as f64
}

/// Times one prefill of `tokens` and `steps` decode steps under `policy`; `memory` reads
/// the device's memory in use.
pub fn speed<B: Backend>(
    backend: &B,
    dtype: &str,
    policy: &Policy,
    tokens: &[u32],
    steps: usize,
    memory: &dyn Fn() -> Option<u64>,
) -> Result<Speed> {
    if steps == 0 {
        return Err(Error::Invalid("decode steps must be at least 1".into()));
    }
    let mut session = Session::new(backend, policy.clone())?;
    let start = Instant::now();
    let first = session.prefill(tokens, Logits::Last)?;
    let ttft = start.elapsed().as_secs_f64();
    let mut next = argmax(first.last());
    let start = Instant::now();
    for _ in 0..steps {
        next = argmax(&session.step(next)?);
    }
    let decode = start.elapsed().as_secs_f64();
    let kv_bytes = session.kv_bytes();
    let device_bytes_in_use = memory();
    drop(session);
    let c = backend.config();
    let mid = tokens.len() + steps / 2;
    Ok(Speed {
        dtype: dtype.into(),
        policy: policy.name.clone(),
        prompt_tokens: tokens.len(),
        ttft_ms: ttft * 1e3,
        decode_tok_s: steps as f64 / decode,
        prefill_tflops: prefill_flops(c, tokens.len()) / ttft / 1e12,
        decode_tflops: decode_flops(c, mid) * steps as f64 / decode / 1e12,
        kv_bytes,
        device_bytes_in_use,
        device_bytes_after_drop: memory(),
    })
}

fn argmax(row: &[f32]) -> u32 {
    row.iter().enumerate().fold((0, f32::MIN), |best, (i, &v)| if v > best.1 { (i, v) } else { best }).0 as u32
}

/// Deterministic token ids for a synthetic model: a fixed pseudo-random walk over the
/// vocabulary (no text is needed: the weights are random too).
pub fn tokens(vocab: usize, n: usize) -> Vec<u32> {
    let mut rng = sieve_core::rng::SplitMix64::new(0x5eed);
    (0..n).map(|_| (rng.next_f32() * vocab as f32) as u32 % vocab as u32).collect()
}

/// The default model's weights' shapes with deterministic random values, `context`
/// positions long.
pub fn synthetic_model(context: usize) -> (ModelConfig, Weights) {
    let config = ModelConfig { context, ..synthetic::smollm2_135m_config() };
    let weights = synthetic::weights(&config, 11, false);
    (config, weights)
}

/// Everything one device check found, as written to `device-check.json`.
#[derive(Debug, Clone, Serialize)]
pub struct DeviceReport {
    pub command: String,
    pub backend: String,
    pub device: String,
    /// Matrix peak the FLOP/s figures are compared with, TFLOP/s.
    pub peak_tflops: f64,
    pub conformance: Vec<CaseResult>,
    pub agreement: Vec<Agreement>,
    pub speed: Vec<Speed>,
}

impl DeviceReport {
    /// Whether every conformance case and every agreement passed.
    pub fn passed(&self) -> bool {
        self.conformance.iter().all(|c| c.passed) && self.agreement.iter().all(|a| a.passed)
    }

    /// The three tables as markdown.
    pub fn markdown(&self) -> String {
        use std::fmt::Write;
        let mut s =
            format!("# Device check: {} on {}\n\n`{}`\n\n## Conformance\n\n", self.backend, self.device, self.command);
        let failed: Vec<_> = self.conformance.iter().filter(|c| !c.passed).collect();
        let passed: Vec<&str> = self.conformance.iter().filter(|c| c.passed).map(|c| c.case.as_str()).collect();
        let _ = writeln!(s, "{} of {} cases pass: {}.\n", passed.len(), self.conformance.len(), passed.join(", "));
        for c in failed {
            let _ = writeln!(s, "- **{}** fails: {}", c.case, c.detail);
        }
        s.push_str("\n## Agreement with the CPU\n\n");
        s.push_str("| dtype | policy | tokens | logits error | tolerance | identical kept sets | kept overlap | least overlap | |\n");
        s.push_str("|---|---|---:|---:|---:|---:|---:|---:|---|\n");
        for a in &self.agreement {
            let _ = writeln!(
                s,
                "| {} | {} | {} + {} | {:.2e} | {:.0e} | {:.1}% | {:.2}% | {:.0}% | {} |",
                a.dtype,
                a.policy,
                a.prompt_tokens,
                a.steps,
                a.logits_error,
                a.tolerance,
                100.0 * a.kept_identical,
                100.0 * a.kept_overlap,
                100.0 * a.min_overlap,
                if a.passed { "ok" } else { "**FAIL**" }
            );
        }
        if !self.speed.is_empty() {
            let _ = writeln!(
                s,
                "\n## Speed\n\nModel FLOP/s are the unpruned model's FLOPs over the time; % of the {:.0} TFLOP/s peak.\n",
                self.peak_tflops
            );
            s.push_str("| dtype | policy | prompt | TTFT ms | TTFT speedup | prefill TFLOP/s | % peak | decode tok/s | decode speedup | decode TFLOP/s | KV MiB | device MiB in use / after drop |\n");
            s.push_str("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
            for p in &self.speed {
                let base = self
                    .speed
                    .iter()
                    .find(|b| b.dtype == p.dtype && b.prompt_tokens == p.prompt_tokens && b.policy == "none");
                let (ttft_x, decode_x) =
                    base.map_or((f64::NAN, f64::NAN), |b| (b.ttft_ms / p.ttft_ms, p.decode_tok_s / b.decode_tok_s));
                let mib = |b: Option<u64>| b.map_or("-".to_string(), |b| format!("{:.0}", b as f64 / 1048576.0));
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {:.1} | {:.2}x | {:.2} | {:.2}% | {:.1} | {:.2}x | {:.4} | {:.1} | {} / {} |",
                    p.dtype,
                    p.policy,
                    p.prompt_tokens,
                    p.ttft_ms,
                    ttft_x,
                    p.prefill_tflops,
                    100.0 * p.prefill_tflops / self.peak_tflops,
                    p.decode_tok_s,
                    decode_x,
                    p.decode_tflops,
                    p.kv_bytes as f64 / 1048576.0,
                    mib(p.device_bytes_in_use),
                    mib(p.device_bytes_after_drop),
                );
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The FLOP count per token is twice the layers' matrix parameters, counted here from
    /// the weights themselves; attention adds `2 n^2` per query channel and layer.
    #[test]
    fn flops_follow_the_weights() {
        let config = ModelConfig { n_layers: 3, ..synthetic::smollm2_135m_config() };
        let weights = synthetic::weights(&config, 1, false);
        let matrices: usize =
            weights.layers.iter().flat_map(|l| l.tensors()).filter(|w| w.shape.len() == 2).map(|w| w.data.len()).sum();
        let head = 2.0 * (config.vocab * config.hidden) as f64;
        assert_eq!(prefill_flops(&config, 1) - head - 2.0 * 3.0 * 576.0, 2.0 * matrices as f64);
        let quadratic = prefill_flops(&config, 20) - 20.0 * (prefill_flops(&config, 1) - head) - head;
        assert!((quadratic - 2.0 * 3.0 * 576.0 * (400.0 - 20.0)).abs() < 1e-6, "{quadratic}");
        assert_eq!(decode_flops(&config, 0), prefill_flops(&config, 1) - 2.0 * 3.0 * 576.0);
    }

    #[test]
    fn synthetic_tokens_are_fixed_and_in_the_vocabulary() {
        let t = tokens(100, 1000);
        assert_eq!(t, tokens(100, 1000));
        assert!(t.iter().all(|&x| x < 100));
        assert!(t.iter().collect::<std::collections::HashSet<_>>().len() > 90);
    }
}
