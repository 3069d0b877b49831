//! The backend conformance suite: a backend against [`HostBackend`] on synthetic models.
//!
//! Each case builds the backend under test and the reference on the same
//! [`crate::synthetic`] weights, drives both through the same calls (prefill, decode steps,
//! positions with gaps, probes, caches compacted or truncated between calls) and compares
//! hidden states, caches, probes and logits. A backend crate instantiates it with
//! [`crate::backend_conformance!`], which makes one `#[test]` per case (plus the core's
//! tensor cases, [`sieve_core::tensor_conformance!`]).
//!
//! Values agree when `|a - b| <= ATOL + RTOL * |b|`: the reference accumulates in `f64`,
//! a backend in `f32` with its own summation order, which on these small models moves
//! values by about 1e-6; a wrong rotary pair, mask or head mapping moves them by more
//! than 1e-2.

use sieve_core::{HostTensor, Tensor};

use crate::backend::{Backend, LayerCall, LayerOutput, Probe};
use crate::cache::LayerCache;
use crate::config::ModelConfig;
use crate::error::{BackendFailure, Error, Result};
use crate::quant::GgmlType;
use crate::reference::HostBackend;
use crate::synthetic;
use crate::weights::Weights;

/// Absolute tolerance of the comparisons.
pub const ATOL: f32 = 1e-4;
/// Relative tolerance of the comparisons.
pub const RTOL: f32 = 1e-4;

/// How far a decode step on packed weights may be from the reference: the norm of the
/// difference of each compared tensor, relative to the reference's norm. A backend may
/// multiply Q4_0, Q4_1 and Q8_0 blocks by its input quantized to 16 bits per block of 32
/// (the candle CPU kernels do): each input value then moves by up to `amax / 65534` of its
/// block, which on the packed model's random weights moves a layer's output by about
/// 4e-5 of its norm, and single values that are small sums of large terms by more than
/// the element-wise tolerance. A misread block (a wrong nibble order, scale, minimum or
/// offset) moves the whole tensor by over 10 %.
pub const PACKED_STEP_RELATIVE: f32 = 1e-3;

/// How far a backend whose f16 and bf16 products round their input to 16 bits
/// ([`Backend::half_precision_products`]) may be from the reference, as a norm relative to
/// the reference's: bf16 keeps 8 bits of mantissa, so each rounded input moves by up to
/// 2^-9 of itself, and a layer's output by a few 1e-3 of its norm; a misread matrix
/// (transposed, the wrong kind) moves it by over 10 %.
pub const HALF_PRODUCT_RELATIVE: f32 = 2e-2;

/// When a backend's tensor counts as equal to the reference's.
#[derive(Debug, Clone, Copy)]
enum Tolerance {
    /// Every element within `atol + rtol * |reference|`.
    Elementwise(f32, f32),
    /// `‖ours − reference‖ ≤ bound · ‖reference‖`.
    Norm(f32),
}

/// Builds the backend under test from a configuration and weights.
pub type Make<'a, B> = &'a dyn Fn(&ModelConfig, Weights) -> B;

fn mismatch(case: &str, detail: String) -> Error {
    Error::Mismatch { case: case.to_string(), detail }
}

fn backend_err<B: Backend>(b: &B) -> impl Fn(B::Error) -> Error + '_ {
    move |e| Error::Backend(BackendFailure::new(b.name(), e))
}

/// Compares a backend tensor with the reference's: same shape, values within
/// [`ATOL`] and [`RTOL`].
pub fn compare<T: Tensor>(case: &str, got: &T, want: &HostTensor) -> Result<()> {
    Ok(sieve_core::conformance::compare_within(case, got, want, ATOL, RTOL)?)
}

/// The pair under comparison: the backend and the reference on the same weights, with one
/// cache per layer each.
struct Pair<B: Backend> {
    ours: B,
    reference: HostBackend,
    caches: Vec<LayerCache<B::Tensor>>,
    reference_caches: Vec<LayerCache<HostTensor>>,
    tolerance: Tolerance,
}

impl<B: Backend> Pair<B> {
    fn new(make: Make<'_, B>, config: &ModelConfig, seed: u64, untied: bool) -> Result<Self> {
        Self::on(make, config, synthetic::weights(config, seed, untied), Tolerance::Elementwise(ATOL, RTOL))
    }

    /// The backend under test and the reference on the same weights, with empty caches.
    fn on(make: Make<'_, B>, config: &ModelConfig, weights: Weights, tolerance: Tolerance) -> Result<Self> {
        let reference = HostBackend::new(config, weights.clone())?;
        let ours = make(config, weights);
        let n = config.n_layers;
        Ok(Self {
            ours,
            reference,
            caches: (0..n).map(|_| LayerCache::default()).collect(),
            reference_caches: (0..n).map(|_| LayerCache::default()).collect(),
            tolerance,
        })
    }

    fn tiny(make: Make<'_, B>) -> Result<Self> {
        Self::new(make, &synthetic::tiny_config(), 1, false)
    }

    /// Runs every layer on `tokens` at `positions` on both sides, comparing after each
    /// layer; the last layer asks for `probe`. Returns both last-layer outputs.
    fn forward(
        &mut self,
        case: &str,
        tokens: &[u32],
        positions: &[usize],
        probe: Probe,
    ) -> Result<(LayerOutput<B::Tensor>, LayerOutput<HostTensor>)> {
        let err = backend_err(&self.ours);
        let mut h = self.ours.embed(tokens).map_err(&err)?;
        let mut r = self.reference.embed(tokens)?;
        self.compare(&format!("{case}: embed"), &h, &r)?;
        let layers = self.reference.config().n_layers;
        for l in 0..layers {
            let p = if l + 1 == layers { probe } else { Probe::NONE };
            let out = self.ours.layer(LayerCall::new(l, &h, positions, p), &mut self.caches[l]).map_err(&err)?;
            let want = self.reference.layer(LayerCall::new(l, &r, positions, p), &mut self.reference_caches[l])?;
            self.compare(&format!("{case}: layer {l} hidden"), &out.hidden, &want.hidden)?;
            self.compare_cache(case, l)?;
            if l + 1 == layers {
                return Ok((out, want));
            }
            (h, r) = (out.hidden, want.hidden);
        }
        Err(mismatch(case, "the model has no layers".into()))
    }

    fn compare<T: Tensor>(&self, case: &str, got: &T, want: &HostTensor) -> Result<()> {
        match self.tolerance {
            Tolerance::Elementwise(atol, rtol) => {
                Ok(sieve_core::conformance::compare_within(case, got, want, atol, rtol)?)
            }
            Tolerance::Norm(bound) => {
                if got.shape() != want.shape() {
                    return Err(mismatch(case, format!("shape {:?}, reference {:?}", got.shape(), want.shape())));
                }
                let got = got.to_host()?;
                let norm = |v: &mut dyn Iterator<Item = f32>| v.map(|x| f64::from(x).powi(2)).sum::<f64>().sqrt();
                let diff = norm(&mut got.iter().zip(want.data()).map(|(a, b)| a - b));
                let base = norm(&mut want.data().iter().copied()).max(1e-12);
                if diff.is_finite() && diff <= f64::from(bound) * base {
                    Ok(())
                } else {
                    Err(mismatch(case, format!("relative difference {:.3e} (tolerance {bound:.0e})", diff / base)))
                }
            }
        }
    }

    fn compare_cache(&self, case: &str, l: usize) -> Result<()> {
        let (ours, theirs) = (&self.caches[l], &self.reference_caches[l]);
        if ours.positions() != theirs.positions() {
            return Err(mismatch(
                case,
                format!("layer {l} cache positions {:?}, reference {:?}", ours.positions(), theirs.positions()),
            ));
        }
        for (what, got, want) in [("keys", ours.keys()?, theirs.keys()?), ("values", ours.values()?, theirs.values()?)]
        {
            match (got, want) {
                (Some(g), Some(w)) => self.compare(&format!("{case}: layer {l} cached {what}"), &g, &w)?,
                (None, None) => {}
                (g, _) => {
                    return Err(mismatch(case, format!("layer {l} cached {what} present: {}", g.is_some())));
                }
            }
        }
        Ok(())
    }

    fn logits(&self, case: &str, out: &LayerOutput<B::Tensor>, want: &LayerOutput<HostTensor>) -> Result<()> {
        let got = self.ours.logits(&out.hidden).map_err(backend_err(&self.ours))?;
        self.compare(&format!("{case}: logits"), &got, &self.reference.logits(&want.hidden)?)
    }
}

fn tokens(n: usize, vocab: usize, salt: usize) -> Vec<u32> {
    (0..n).map(|i| ((i * 31 + salt * 7 + 3) % vocab) as u32).collect()
}

/// Embeddings of tokens, repeated and at both ends of the vocabulary.
pub fn embed<B: Backend>(make: Make<'_, B>) -> Result<()> {
    let pair = Pair::tiny(make)?;
    let ids = [3, 0, 63, 3, 17];
    compare("embed", &pair.ours.embed(&ids).map_err(backend_err(&pair.ours))?, &pair.reference.embed(&ids)?)
}

/// A prefill of 12 tokens through every layer from empty caches, and its logits.
pub fn prefill<B: Backend>(make: Make<'_, B>) -> Result<()> {
    let mut pair = Pair::tiny(make)?;
    let positions: Vec<usize> = (0..12).collect();
    let (out, want) = pair.forward("prefill", &tokens(12, 64, 0), &positions, Probe::NONE)?;
    pair.logits("prefill", &out, &want)
}

/// Rows at positions with gaps, as after prefill pruning: the rotary embedding and the
/// causal mask follow the positions, not the row indices.
pub fn gapped_positions<B: Backend>(make: Make<'_, B>) -> Result<()> {
    let mut pair = Pair::tiny(make)?;
    let positions = [0, 2, 3, 7, 8, 15, 40];
    pair.forward("gapped positions", &tokens(7, 64, 1), &positions, Probe::NONE)?;
    pair.forward("gapped positions, then a step", &[5], &[41], Probe::NONE).map(drop)
}

/// A prefill, then single-token decode steps appended to the caches.
pub fn decode_steps<B: Backend>(make: Make<'_, B>) -> Result<()> {
    let mut pair = Pair::tiny(make)?;
    let positions: Vec<usize> = (0..6).collect();
    pair.forward("decode", &tokens(6, 64, 2), &positions, Probe::NONE)?;
    for (i, t) in [9u32, 44, 1].into_iter().enumerate() {
        let (out, want) = pair.forward(&format!("decode step {i}"), &[t], &[6 + i], Probe::NONE)?;
        pair.logits(&format!("decode step {i}"), &out, &want)?;
    }
    Ok(())
}

/// Every probe of `out` against the reference's `want`, each required.
fn every_probe<T: Tensor>(case: &str, out: &LayerOutput<T>, want: &LayerOutput<HostTensor>) -> Result<()> {
    for (what, got, exp) in [
        ("attention", &out.attention, &want.attention),
        ("sums", &out.attention_sums, &want.attention_sums),
        ("queries", &out.queries, &want.queries),
    ] {
        match (got, exp) {
            (Some(g), Some(w)) => compare(&format!("{case}: {what}"), g, w)?,
            _ => return Err(mismatch(case, format!("{what} missing"))),
        }
    }
    Ok(())
}

/// The attention probes: the last queries' probabilities (zero where masked) and the sums
/// over every query, on a call that follows cached tokens.
pub fn probes<B: Backend>(make: Make<'_, B>) -> Result<()> {
    let mut pair = Pair::tiny(make)?;
    pair.forward("probes", &tokens(5, 64, 3), &[0, 1, 2, 3, 4], Probe::NONE)?;
    let probe = Probe { last_queries: 3, column_sums: true, queries: true };
    let (out, want) = pair.forward("probes", &tokens(4, 64, 4), &[5, 6, 8, 9], probe)?;
    every_probe("probes", &out, &want)?;
    // A probe asking for more queries than the call has rows gets every row.
    let probe = Probe { last_queries: 8, column_sums: false, queries: false };
    let (out, want) = pair.forward("probes, one row", &[7], &[10], probe)?;
    match (&out.attention, &want.attention) {
        (Some(g), Some(w)) => compare("probes: one row", g, w),
        _ => Err(mismatch("probes", "attention of a single row missing".into())),
    }
}

/// A call whose rows fall among the cached positions (tokens revived while decoding, with
/// a new token after them): each row attends to the entries at or before it, the cache
/// ends in position order, and the probes' columns follow it.
pub fn interleaved_rows<B: Backend>(make: Make<'_, B>) -> Result<()> {
    let mut pair = Pair::tiny(make)?;
    pair.forward("interleaved", &tokens(6, 64, 8), &[0, 1, 4, 6, 9, 10], Probe::NONE)?;
    let probe = Probe { last_queries: 1, column_sums: true, queries: true };
    let (out, want) = pair.forward("interleaved rows", &tokens(4, 64, 9), &[2, 3, 7, 11], probe)?;
    every_probe("interleaved rows", &out, &want)?;
    pair.logits("interleaved rows", &out, &want)?;
    let (out, want) = pair.forward("interleaved, then a step", &[6], &[12], Probe::NONE)?;
    pair.logits("interleaved, then a step", &out, &want)
}

/// Caches compacted between calls (the engine's eviction) and truncated (a conversation
/// going back to a common prefix): the next calls see exactly the remaining entries.
pub fn compacted_caches<B: Backend>(make: Make<'_, B>) -> Result<()> {
    let mut pair = Pair::tiny(make)?;
    pair.forward("compacted", &tokens(10, 64, 5), &(0..10).collect::<Vec<_>>(), Probe::NONE)?;
    for l in 0..pair.caches.len() {
        let kept = [0, 3, 4, 8, 9];
        pair.caches[l].retain(&kept)?;
        pair.reference_caches[l].retain(&kept)?;
    }
    for (i, t) in [2u32, 3].into_iter().enumerate() {
        pair.forward("compacted, then a step", &[t], &[10 + i], Probe::NONE)?;
    }
    for l in 0..pair.caches.len() {
        pair.caches[l].truncate(9);
        pair.reference_caches[l].truncate(9);
    }
    let (out, want) = pair.forward("truncated, then a call", &tokens(3, 64, 6), &[9, 10, 11], Probe::NONE)?;
    pair.logits("truncated", &out, &want)
}

/// Caches whose KV heads keep different entries (per-head selection): each head attends
/// over its own rows in the steps and the call that follow.
pub fn per_head_caches<B: Backend>(make: Make<'_, B>) -> Result<()> {
    let mut pair = Pair::tiny(make)?;
    pair.forward("per head", &tokens(10, 64, 11), &(0..10).collect::<Vec<_>>(), Probe::NONE)?;
    let heads = pair.reference.config().n_kv_heads;
    let kept: Vec<Vec<usize>> = (0..heads).map(|h| vec![0, 2 + h % 3, 5, 7 + h % 3]).collect();
    for l in 0..pair.caches.len() {
        pair.caches[l].retain_heads(&kept)?;
        pair.reference_caches[l].retain_heads(&kept)?;
    }
    for (i, t) in [4u32, 9].into_iter().enumerate() {
        pair.forward(
            "per head, then a step",
            &[t],
            &[10 + i],
            Probe { last_queries: 1, column_sums: false, queries: false },
        )?;
    }
    let (out, want) = pair.forward("per head, then a call", &tokens(3, 64, 12), &[12, 13, 14], Probe::NONE)?;
    pair.logits("per head", &out, &want)
}

/// Caches whose KV heads keep different numbers of entries (Ada-KV budgets): a head with
/// fewer is padded at the front, and attention must skip each head's padding rows, in
/// decode steps and in a call long enough to be split into blocks. The reference's probes
/// are checked to be zero on the padding and to sum to one elsewhere, so a reference that
/// read the padding would fail too.
pub fn ragged_caches<B: Backend>(make: Make<'_, B>) -> Result<()> {
    let config = ModelConfig { context: 512, ..synthetic::tiny_config() };
    let mut pair = Pair::new(make, &config, 4, false)?;
    pair.forward("ragged", &tokens(12, 64, 13), &(0..12).collect::<Vec<_>>(), Probe::NONE)?;
    let (heads, group) = (config.n_kv_heads, config.n_heads / config.n_kv_heads);
    // Head h keeps every (h + 1)-th entry: 12, 6, ... entries.
    let kept: Vec<Vec<usize>> = (0..heads).map(|h| (0..12).step_by(h + 1).collect()).collect();
    for l in 0..pair.caches.len() {
        pair.caches[l].retain_heads(&kept)?;
        pair.reference_caches[l].retain_heads(&kept)?;
    }
    let padding: Vec<usize> = (0..heads).map(|h| pair.reference_caches[0].head_padding(h)).collect();
    if padding.iter().all(|&p| p == 0) {
        return Err(mismatch("ragged", "the heads were not padded".into()));
    }
    let probe = Probe { last_queries: 1, column_sums: true, queries: false };
    for (i, t) in [4u32, 9].into_iter().enumerate() {
        let (out, want) = pair.forward("ragged, then a step", &[t], &[12 + i], probe)?;
        let (Some(a), Some(w)) = (&out.attention, &want.attention) else {
            return Err(mismatch("ragged", "attention probe missing".into()));
        };
        compare("ragged: probes", a, w)?;
        let m = w.shape()[2];
        for (qh, row) in w.data().chunks_exact(m).enumerate() {
            let pad = padding[qh / group];
            let live: f32 = row[pad..].iter().sum();
            if row[..pad].iter().any(|&p| p != 0.0) || (live - 1.0).abs() > 1e-5 {
                return Err(mismatch("ragged", format!("reference head {qh} reads its padding: {row:?}")));
            }
        }
    }
    // A shared selection over every row keeps no padding row.
    for l in 0..pair.caches.len() {
        let all: Vec<usize> = (1..pair.caches[l].len()).collect();
        pair.caches[l].retain_heads(&vec![all.clone(); heads])?;
        pair.reference_caches[l].retain_heads(&vec![all; heads])?;
    }
    let n = 270;
    let probe = Probe { last_queries: 3, column_sums: true, queries: false };
    let (out, want) =
        pair.forward("ragged, then a long call", &tokens(n, 64, 14), &(20..20 + n).collect::<Vec<_>>(), probe)?;
    if let (Some(g), Some(w)) = (&out.attention_sums, &want.attention_sums) {
        compare("ragged: sums", g, w)?;
    }
    pair.logits("ragged", &out, &want)
}

/// A prefill longer than the blocks backends split attention into (300 rows), with every
/// probe.
pub fn long_prefill<B: Backend>(make: Make<'_, B>) -> Result<()> {
    let config = ModelConfig { context: 512, ..synthetic::tiny_config() };
    let mut pair = Pair::new(make, &config, 3, false)?;
    let probe = Probe { last_queries: 16, column_sums: true, queries: true };
    let (out, want) = pair.forward("long prefill", &tokens(300, 64, 7), &(0..300).collect::<Vec<_>>(), probe)?;
    every_probe("long prefill", &out, &want)?;
    pair.logits("long prefill", &out, &want)
}

/// The optional parts of the block: q/k/v biases, Llama-3 rotary scaling, an untied LM
/// head.
pub fn block_options<B: Backend>(make: Make<'_, B>) -> Result<()> {
    let mut pair = Pair::new(make, &synthetic::tiny_config_with_options(), 2, true)?;
    pair.forward("options", &tokens(9, 64, 8), &[0, 1, 2, 3, 10, 20, 30, 70, 100], Probe::NONE)?;
    let (out, want) = pair.forward("options, then a step", &[4], &[101], Probe::NONE)?;
    pair.logits("options", &out, &want)
}

/// Gemma 3's block ([`synthetic::tiny_gemma_config`]): q/k norms, post norms, GeGLU,
/// scaled embeddings and logits, and a local first layer whose window of 6 positions cuts
/// into a prefill, a gapped call and the decode steps after them (cached keys beyond a
/// query's window are masked by position).
pub fn sliding_window<B: Backend>(make: Make<'_, B>) -> Result<()> {
    let mut pair = Pair::new(make, &synthetic::tiny_gemma_config(), 4, false)?;
    let probe = Probe { last_queries: 3, column_sums: true, queries: true };
    let (out, want) = pair.forward("gemma block", &tokens(10, 64, 13), &(0..10).collect::<Vec<_>>(), probe)?;
    pair.logits("gemma block", &out, &want)?;
    for (what, got, exp) in [
        ("attention", &out.attention, &want.attention),
        ("sums", &out.attention_sums, &want.attention_sums),
        ("queries", &out.queries, &want.queries),
    ] {
        match (got, exp) {
            (Some(g), Some(w)) => compare(&format!("gemma block: {what}"), g, w)?,
            _ => return Err(mismatch("gemma block", format!("{what} missing"))),
        }
    }
    pair.forward("gemma block, gapped", &tokens(4, 64, 14), &[11, 13, 17, 18], Probe::NONE)?;
    for (i, t) in [3u32, 50].into_iter().enumerate() {
        let (out, want) = pair.forward("gemma block, then a step", &[t], &[19 + i], Probe::NONE)?;
        pair.logits("gemma block, then a step", &out, &want)?;
    }
    Ok(())
}

/// Every packed format ([`crate::quant::GgmlType`]) in one model: the backend (kernels on
/// the blocks, or the weights decoded at load) must compute what the reference computes on
/// the decoded `f32` values.
pub fn packed_weights<B: Backend>(make: Make<'_, B>) -> Result<()> {
    let config = synthetic::packed_config();
    let probe = make(&config, synthetic::weights(&config, 4, true));
    let half = probe.half_precision_products();
    drop(probe);
    // A backend with reduced-precision products sees the 16-bit formats in their own
    // check below; every other format must still match at the usual tolerance.
    let formats: Vec<GgmlType> = GgmlType::ALL.into_iter().filter(|t| !half || !t.is_half()).collect();
    let weights = synthetic::packed_weights_in(&config, 4, &formats);
    let mut pair = Pair::on(make, &config, weights, Tolerance::Elementwise(ATOL, RTOL))?;
    // Five rows take the batched path (checked at the usual tolerance), one row the matrix
    // x vector path.
    let (out, want) = pair.forward("packed", &tokens(5, 64, 9), &[0, 1, 2, 3, 4], Probe::NONE)?;
    pair.logits("packed", &out, &want)?;
    pair.tolerance = Tolerance::Norm(PACKED_STEP_RELATIVE);
    let (out, want) = pair.forward("packed, then a step", &[17], &[5], Probe::NONE)?;
    pair.logits("packed, then a step", &out, &want)?;
    if half {
        let weights = synthetic::packed_weights_in(&config, 5, &[GgmlType::F16, GgmlType::BF16]);
        let mut pair = Pair::on(make, &config, weights, Tolerance::Norm(HALF_PRODUCT_RELATIVE))?;
        let (out, want) = pair.forward("f16 and bf16", &tokens(5, 64, 9), &[0, 1, 2, 3, 4], Probe::NONE)?;
        pair.logits("f16 and bf16", &out, &want)?;
        let (out, want) = pair.forward("f16 and bf16, then a step", &[17], &[5], Probe::NONE)?;
        pair.logits("f16 and bf16, then a step", &out, &want)?;
    }
    Ok(())
}

/// Instantiates the conformance suite for a backend: one `#[test]` per case of this
/// module, and the core's tensor cases on the backend's device. `$make` builds the backend
/// from `(&ModelConfig, Weights)` (and may panic: it runs in tests).
///
/// ```ignore
/// sieve_backend::backend_conformance!(CandleBackend, |config, weights| {
///     CandleBackend::from_weights(config, weights, CandleDevice::Cpu).unwrap()
/// });
/// ```
#[macro_export]
macro_rules! backend_conformance {
    ($backend:ty, $make:expr) => {
        $crate::backend_conformance!(@cases $backend, $make;
            embed, prefill, gapped_positions, decode_steps, probes, interleaved_rows, compacted_caches, per_head_caches, ragged_caches,
            long_prefill, block_options, sliding_window, packed_weights);

        mod tensor {
            #[allow(unused_imports)]
            use super::*;

            fn device() -> $crate::BackendDevice<$backend> {
                let config = $crate::synthetic::tiny_config();
                let make = $make;
                let backend: $backend = make(&config, $crate::synthetic::weights(&config, 0, false));
                $crate::Backend::device(&backend)
            }

            $crate::sieve_core::tensor_conformance!(<$backend as $crate::Backend>::Tensor, device());
        }
    };
    (@cases $backend:ty, $make:expr; $($case:ident),* $(,)?) => {
        $(
            #[test]
            fn $case() {
                let make = $make;
                let make = |c: &$crate::ModelConfig, w: $crate::Weights| -> $backend { make(c, w) };
                if let Err(e) = $crate::conformance::$case::<$backend>(&make) {
                    panic!("{e}");
                }
            }
        )*
    };
}

#[cfg(test)]
mod tests {
    use crate::reference::HostBackend;

    crate::backend_conformance!(HostBackend, |c: &crate::ModelConfig, w| HostBackend::new(c, w).unwrap());
}
