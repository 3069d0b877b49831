//! Choosing the next token from logits.

use sieve_core::rng::SplitMix64;

use crate::error::{Error, Result};

/// Sampling settings.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// 0 for greedy decoding; otherwise logits are divided by it.
    pub temperature: f32,
    /// Keep only the `k` most likely tokens.
    pub top_k: Option<usize>,
    /// Keep the smallest set of tokens whose probability reaches `p`.
    pub top_p: Option<f32>,
    /// Divide positive (multiply negative) logits of tokens already seen; 1 disables it.
    pub repetition_penalty: f32,
    /// Seed of the sampler.
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self { temperature: 0.0, top_k: None, top_p: None, repetition_penalty: 1.0, seed: 0 }
    }
}

impl SamplingParams {
    /// Checks every value's range.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Invalid(m));
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return bad(format!("temperature {} must be a finite number >= 0", self.temperature));
        }
        if self.top_k == Some(0) {
            return bad("top_k must be at least 1".into());
        }
        if let Some(p) = self.top_p
            && !(p > 0.0 && p <= 1.0)
        {
            return bad(format!("top_p {p} must be in (0, 1]"));
        }
        if !(self.repetition_penalty.is_finite() && self.repetition_penalty > 0.0) {
            return bad(format!("repetition_penalty {} must be a finite number > 0", self.repetition_penalty));
        }
        Ok(())
    }
}

/// A sampler with its random state.
#[derive(Debug, Clone)]
pub struct Sampler {
    params: SamplingParams,
    rng: SplitMix64,
}

impl Sampler {
    /// A sampler; fails on out-of-range settings.
    pub fn new(params: SamplingParams) -> Result<Self> {
        params.validate()?;
        let rng = SplitMix64::new(params.seed);
        Ok(Self { params, rng })
    }

    /// The next token given `logits` and the ids seen so far (for the repetition penalty).
    pub fn sample(&mut self, logits: &[f32], history: &[u32]) -> Result<u32> {
        // `all` first (it vectorises); the position only when something is wrong.
        if !logits.iter().all(|x| x.is_finite()) {
            let position = logits.iter().position(|x| !x.is_finite()).unwrap_or(0);
            return Err(Error::NonFiniteLogits { position, value: logits[position] });
        }
        let p = &self.params;
        if p.temperature == 0.0 && p.repetition_penalty == 1.0 {
            return Ok(argmax(logits));
        }
        let mut logits = logits.to_vec();
        if p.repetition_penalty != 1.0 {
            let mut seen: Vec<u32> = history.to_vec();
            seen.sort_unstable();
            seen.dedup();
            for id in seen {
                if let Some(x) = logits.get_mut(id as usize) {
                    *x = if *x > 0.0 { *x / p.repetition_penalty } else { *x * p.repetition_penalty };
                }
            }
        }
        if p.temperature == 0.0 {
            return Ok(argmax(&logits));
        }
        // Candidates by decreasing logit, ties to the lower id.
        let mut order: Vec<usize> = (0..logits.len()).collect();
        order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
        if let Some(k) = p.top_k {
            order.truncate(k);
        }
        let max = logits[order[0]];
        let mut probs: Vec<f64> = order.iter().map(|&i| (((logits[i] - max) / p.temperature) as f64).exp()).collect();
        let total: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|x| *x /= total);
        if let Some(top_p) = p.top_p {
            let mut acc = 0.0;
            let keep = probs.iter().position(|&x| {
                acc += x;
                acc >= top_p as f64
            });
            let n = keep.map_or(probs.len(), |i| i + 1);
            order.truncate(n);
            probs.truncate(n);
            let total: f64 = probs.iter().sum();
            probs.iter_mut().for_each(|x| *x /= total);
        }
        let r = self.rng.next_f32() as f64;
        let mut acc = 0.0;
        for (i, &pr) in probs.iter().enumerate() {
            acc += pr;
            if r < acc {
                return Ok(order[i] as u32);
            }
        }
        Ok(order[probs.len() - 1] as u32)
    }
}

/// Index of the largest logit, ties to the lower index.
pub fn argmax(logits: &[f32]) -> u32 {
    // The largest value, 16 lanes at a time (this vectorises; NaN never wins a
    // comparison), then its first position.
    let mut lanes = [f32::NEG_INFINITY; 16];
    let chunks = logits.chunks_exact(16);
    let rest = chunks.remainder();
    for chunk in chunks {
        for (m, &x) in lanes.iter_mut().zip(chunk) {
            *m = if x > *m { x } else { *m };
        }
    }
    let max = lanes.iter().chain(rest).fold(f32::NEG_INFINITY, |m, &x| if x > m { x } else { m });
    logits.iter().position(|&x| x == max).unwrap_or(0) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_the_argmax() {
        let mut s = Sampler::new(SamplingParams::default()).unwrap();
        assert_eq!(s.sample(&[0.1, 3.0, 3.0, -1.0], &[]).unwrap(), 1);
    }

    /// The lane-wise maximum finds the first largest value wherever it sits: in a lane
    /// of any chunk, in the remainder, tied across chunks, or only negative values.
    #[test]
    fn argmax_finds_the_first_largest_anywhere() {
        for len in [1, 15, 16, 17, 49_152, 49_153] {
            for at in [0, len / 3, len - 1] {
                let mut x: Vec<f32> = (0..len).map(|i| -1.0 - (i % 7) as f32).collect();
                x[at] = 2.0;
                assert_eq!(argmax(&x), at as u32, "len {len}, at {at}");
                if at + 20 < len {
                    x[at + 20] = 2.0;
                    assert_eq!(argmax(&x), at as u32, "len {len}, tie after {at}");
                }
            }
            let plain = (0..len).map(|i| -((i * 37 % 101) as f32)).collect::<Vec<_>>();
            let want = plain.iter().enumerate().fold(0, |b, (i, &v)| if v > plain[b] { i } else { b });
            assert_eq!(argmax(&plain), want as u32, "len {len}, negative values");
        }
    }

    #[test]
    fn repetition_penalty_demotes_seen_tokens() {
        let mut s = Sampler::new(SamplingParams { repetition_penalty: 4.0, ..Default::default() }).unwrap();
        assert_eq!(s.sample(&[2.0, 1.0], &[0]).unwrap(), 1);
    }

    #[test]
    fn top_k_one_is_greedy_and_seeds_repeat() {
        let params = SamplingParams { temperature: 1.0, top_k: Some(1), ..Default::default() };
        let mut s = Sampler::new(params).unwrap();
        assert_eq!(s.sample(&[0.0, 5.0, 1.0], &[]).unwrap(), 1);
        let params = SamplingParams { temperature: 1.0, seed: 9, ..Default::default() };
        let logits = [0.0f32; 50];
        let a: Vec<u32> =
            (0..10).scan(Sampler::new(params.clone()).unwrap(), |s, _| s.sample(&logits, &[]).ok()).collect();
        let b: Vec<u32> = (0..10).scan(Sampler::new(params).unwrap(), |s, _| s.sample(&logits, &[]).ok()).collect();
        assert_eq!(a, b);
        assert!(a.iter().any(|&x| x != a[0]));
    }

    #[test]
    fn top_p_keeps_the_nucleus() {
        let params = SamplingParams { temperature: 1.0, top_p: Some(0.5), seed: 3, ..Default::default() };
        let mut s = Sampler::new(params).unwrap();
        for _ in 0..20 {
            assert_eq!(s.sample(&[10.0, 0.0, 0.0], &[]).unwrap(), 0);
        }
    }

    #[test]
    fn bad_settings_and_logits_are_errors() {
        assert!(Sampler::new(SamplingParams { temperature: -1.0, ..Default::default() }).is_err());
        assert!(Sampler::new(SamplingParams { top_p: Some(1.5), ..Default::default() }).is_err());
        assert!(Sampler::new(SamplingParams { top_k: Some(0), ..Default::default() }).is_err());
        let mut s = Sampler::new(SamplingParams::default()).unwrap();
        assert!(matches!(s.sample(&[0.0, f32::NAN], &[]), Err(Error::NonFiniteLogits { position: 1, .. })));
    }
}
