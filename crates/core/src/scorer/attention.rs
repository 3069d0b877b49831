//! Scorers that read attention probabilities.

use super::{Aggregation, Needs, Observation, Scorer};
use crate::error::{Error, Result};
use crate::tensor::{Pool, Tensor};

/// Attention of the last query over all tokens.
///
/// LazyLLM (Fu et al., 2024, "LazyLLM: Dynamic Token Pruning for Efficient Long Context
/// LLM Inference") prunes prompt tokens during prefill by the attention the last prompt
/// token pays them; TOVA (Oren et al., 2024, "Transformers are Multi-State RNNs") evicts
/// the cache entry with the lowest attention from the current query at each decoding step.
#[derive(Debug, Clone, Copy, Default)]
pub struct LastQuery {
    /// How heads are folded.
    pub aggregation: Aggregation,
}

impl<T: Tensor + Send> Scorer<T> for LastQuery {
    fn name(&self) -> &'static str {
        "last-query"
    }

    fn needs(&self) -> Needs {
        Needs { attention_queries: 1, ..Needs::default() }
    }

    fn aggregation(&self) -> Aggregation {
        self.aggregation
    }

    fn score(&mut self, obs: &Observation<'_, T>) -> Result<T> {
        let a = obs.attention("last-query")?;
        let w = a.dim(1)?;
        if w == 0 {
            return Err(Error::Shape { op: "last-query", detail: "attention of zero queries".into() });
        }
        let last = a.narrow(1, w - 1, 1)?;
        last.reshape(&[a.dim(0)?, a.dim(2)?])
    }
}

/// Attention of an observation window: the last `window` queries' attention summed per
/// key, then smoothed with 1-D pooling of width `kernel` so that the neighbours of an
/// important token are kept with it.
///
/// SnapKV (Li et al., 2024, "SnapKV: LLM Knows What You Are Looking for Before
/// Generation") observes that the attention of the last few prompt tokens predicts which
/// entries generation will need.
#[derive(Debug, Clone, Copy)]
pub struct ObservationWindow {
    /// Queries in the observation window.
    pub window: usize,
    /// Pooling width (odd).
    pub kernel: usize,
    /// Average or max pooling.
    pub pooling: Pool,
    /// How heads are folded.
    pub aggregation: Aggregation,
}

impl<T: Tensor + Send> Scorer<T> for ObservationWindow {
    fn name(&self) -> &'static str {
        "snapkv"
    }

    fn needs(&self) -> Needs {
        Needs { attention_queries: self.window, ..Needs::default() }
    }

    fn aggregation(&self) -> Aggregation {
        self.aggregation
    }

    fn score(&mut self, obs: &Observation<'_, T>) -> Result<T> {
        let a = obs.attention("snapkv")?;
        let w = a.dim(1)?;
        let recent = a.narrow(1, w - w.min(self.window), w.min(self.window))?;
        recent.sum(1)?.pool1d(self.kernel, self.pooling)
    }
}

/// Attention accumulated over all queries seen so far, kept as state across steps.
///
/// H2O (Zhang et al., 2023, "H2O: Heavy-Hitter Oracle for Efficient Generative Inference
/// of Large Language Models") keeps the "heavy hitters": tokens whose summed attention
/// over all past queries is largest. The running sum grows with the cache and is
/// compacted by [`Scorer::retain`] when entries are evicted.
#[derive(Debug, Clone)]
pub struct AccumulatedAttention<T> {
    /// How heads are folded.
    pub aggregation: Aggregation,
    state: Option<T>,
}

impl<T> AccumulatedAttention<T> {
    /// A scorer with an empty running sum.
    pub fn new(aggregation: Aggregation) -> Self {
        Self { aggregation, state: None }
    }

    /// The running sum `[heads, k]`, if anything was observed.
    pub fn state(&self) -> Option<&T> {
        self.state.as_ref()
    }
}

impl<T: Tensor + Send> Scorer<T> for AccumulatedAttention<T> {
    fn name(&self) -> &'static str {
        "h2o"
    }

    fn is_stateful(&self) -> bool {
        true
    }

    fn needs(&self) -> Needs {
        Needs { attention_queries: usize::MAX, ..Needs::default() }
    }

    fn aggregation(&self) -> Aggregation {
        self.aggregation
    }

    fn score(&mut self, obs: &Observation<'_, T>) -> Result<T> {
        let step = obs.attention("h2o")?.sum(1)?;
        let (heads, k) = (step.dim(0)?, step.dim(1)?);
        let total = match self.state.take() {
            None => step,
            Some(prev) => {
                let seen = prev.dim(1)?;
                if prev.dim(0)? != heads || seen > k {
                    return Err(Error::Shape {
                        op: "h2o",
                        detail: format!(
                            "running sum {:?} does not fit an observation of {heads} heads x {k} tokens",
                            prev.shape()
                        ),
                    });
                }
                let grown = if seen < k {
                    let zeros = T::from_host(&vec![0.0; heads * (k - seen)], &[heads, k - seen], &obs.device)?;
                    T::cat(&[&prev, &zeros], 1)?
                } else {
                    prev
                };
                grown.add(&step)?
            }
        };
        self.state = Some(total.clone());
        Ok(total)
    }

    fn retain(&mut self, kept: &[usize]) -> Result<()> {
        if let Some(state) = &self.state {
            self.state = Some(state.index_select(1, kept)?);
        }
        Ok(())
    }
}
