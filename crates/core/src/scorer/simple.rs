//! Scorers that need no attention: norms, position, randomness.

use super::{Needs, Observation, Scorer};
use crate::error::{Error, Result};
use crate::rng::SplitMix64;
use crate::tensor::Tensor;

fn l2_norm<T: Tensor>(x: &T, scorer: &'static str) -> Result<T> {
    if x.rank() != 3 {
        return Err(Error::Shape {
            op: scorer,
            detail: format!("expected [kv_heads, tokens, head_dim], got {:?}", x.shape()),
        });
    }
    x.sqr()?.sum(2)?.sqrt()
}

/// Keys with a small L2 norm score high.
///
/// Devoto et al., 2024 ("A Simple and Effective L2 Norm-Based Strategy for KV Cache
/// Compression") find that keys with a low norm draw high attention, so keeping the
/// lowest-norm keys approximates attention-based eviction without computing attention.
#[derive(Debug, Clone, Copy, Default)]
pub struct KeyNorm;

impl<T: Tensor + Send> Scorer<T> for KeyNorm {
    fn name(&self) -> &'static str {
        "knorm"
    }

    fn needs(&self) -> Needs {
        Needs { keys: true, ..Needs::default() }
    }

    fn score(&mut self, obs: &Observation<'_, T>) -> Result<T> {
        let keys = obs.keys.ok_or(Error::MissingInput { scorer: "knorm", what: "keys" })?;
        l2_norm(keys, "knorm")?.affine(-1.0, 0.0)
    }
}

/// Values with a large L2 norm score high: a value's contribution to the attention
/// output scales with its norm (the value-norm criterion of Guo et al., 2024, "Attention
/// Score is not All You Need for Token Importance Indicator in KV Cache Reduction").
#[derive(Debug, Clone, Copy, Default)]
pub struct ValueNorm;

impl<T: Tensor + Send> Scorer<T> for ValueNorm {
    fn name(&self) -> &'static str {
        "vnorm"
    }

    fn needs(&self) -> Needs {
        Needs { values: true, ..Needs::default() }
    }

    fn score(&mut self, obs: &Observation<'_, T>) -> Result<T> {
        let values = obs.values.ok_or(Error::MissingInput { scorer: "vnorm", what: "values" })?;
        l2_norm(values, "vnorm")
    }
}

/// The score of a token is its original position: the most recent tokens win.
///
/// With the first tokens protected as attention sinks this is StreamingLLM (Xiao et al.,
/// 2024, "Efficient Streaming Language Models with Attention Sinks").
#[derive(Debug, Clone, Copy, Default)]
pub struct Recency;

impl<T: Tensor + Send> Scorer<T> for Recency {
    fn name(&self) -> &'static str {
        "recency"
    }

    fn needs(&self) -> Needs {
        Needs::default()
    }

    fn score(&mut self, obs: &Observation<'_, T>) -> Result<T> {
        let pos: Vec<f32> = obs.positions.iter().map(|&p| p as f32).collect();
        T::from_host(&pos, &[1, pos.len()], &obs.device)
    }
}

/// Uniform random scores, reproducible from `seed`, the layer and the step: the baseline
/// that pruning papers report next to their methods.
#[derive(Debug, Clone, Copy, Default)]
pub struct RandomScore {
    /// The seed.
    pub seed: u64,
}

impl<T: Tensor + Send> Scorer<T> for RandomScore {
    fn name(&self) -> &'static str {
        "random"
    }

    fn needs(&self) -> Needs {
        Needs::default()
    }

    fn score(&mut self, obs: &Observation<'_, T>) -> Result<T> {
        let mut rng = SplitMix64::for_stream(self.seed, obs.layer as u64, obs.step);
        let s: Vec<f32> = (0..obs.tokens()).map(|_| rng.next_f32()).collect();
        T::from_host(&s, &[1, s.len()], &obs.device)
    }
}
