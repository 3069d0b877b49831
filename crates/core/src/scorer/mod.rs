//! Token-importance scorers and the aggregation of per-head scores.
//!
//! A scorer looks at an [`Observation`] of one layer (the attention of the last queries,
//! the cached keys and values, the tokens' original positions) and gives every token a
//! score per head, higher meaning more important. [`aggregate`] folds the heads into one
//! score per token, which a [`crate::Selector`] turns into the kept indices.

mod attention;
mod expected;
mod simple;

use serde::{Deserialize, Serialize};

pub use attention::{AccumulatedAttention, LastQuery, ObservationWindow};
pub use expected::ExpectedAttention;

pub use simple::{KeyNorm, RandomScore, Recency, ValueNorm};

use crate::error::{Error, Result};
use crate::tensor::{Pool, Tensor};

/// What a layer shows a scorer. Tensors stay on the backend's device.
#[derive(Debug, Clone)]
pub struct Observation<'a, T: Tensor> {
    /// Index of the layer.
    pub layer: usize,
    /// How many times this layer has been observed before (0 at prefill); seeds streams.
    pub step: u64,
    /// Number of key/value heads; query heads come in groups of `q_heads / kv_heads`.
    pub kv_heads: usize,
    /// Original position of each of the `k` tokens being scored.
    pub positions: &'a [usize],
    /// Attention probabilities of the last `w` queries over all keys: `[q_heads, w, k]`.
    pub attention: Option<&'a T>,
    /// Cached keys (after RoPE): `[kv_heads, k, head_dim]`.
    pub keys: Option<&'a T>,
    /// Cached values: `[kv_heads, k, head_dim]`.
    pub values: Option<&'a T>,
    /// The queries of the call that filled the cache, for scorers that model them.
    pub queries: Option<QueryProbe<'a, T>>,
    /// Device on which to create score tensors.
    pub device: T::Device,
}

/// The queries of one call of a layer, before the rotary embedding.
#[derive(Debug, Clone)]
pub struct QueryProbe<'a, T: Tensor> {
    /// Queries after their projection (and bias and norm, where the block has them), before
    /// the rotary embedding and the attention scale: `[q_heads, n, head_dim]`.
    pub queries: &'a T,
    /// The original position of each of the `n` queries.
    pub positions: &'a [usize],
    /// The layer's rotary frequencies, one per pair of a head's dims (half-split pairs).
    pub rope_inv_freq: &'a [f64],
}

impl<T: Tensor> Observation<'_, T> {
    /// Number of tokens being scored.
    pub fn tokens(&self) -> usize {
        self.positions.len()
    }

    fn attention(&self, scorer: &'static str) -> Result<&T> {
        let a = self.attention.ok_or(Error::MissingInput { scorer, what: "attention probabilities" })?;
        let shape = a.shape();
        if shape.len() != 3 || shape[2] != self.tokens() {
            return Err(Error::Shape {
                op: scorer,
                detail: format!("attention must be [heads, queries, {}], got {shape:?}", self.tokens()),
            });
        }
        Ok(a)
    }
}

/// What a scorer needs the backend to compute for an [`Observation`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Needs {
    /// Attention of the last this-many queries; 0 for none. `usize::MAX` asks for every
    /// query, which only accumulating scorers do: they read the sum over queries, so a
    /// backend may hand them that sum as a single row.
    pub attention_queries: usize,
    /// The cached keys.
    pub keys: bool,
    /// The cached values.
    pub values: bool,
    /// The call's queries before the rotary embedding ([`QueryProbe`]).
    pub queries: bool,
}

/// A scorer copied with its state, behind a box (implemented for every `Clone` scorer).
pub trait ScorerClone<T: Tensor> {
    /// An independent copy: what one copy observes later does not change the other.
    fn clone_box(&self) -> Box<dyn Scorer<T>>;
}

impl<T: Tensor, S: Scorer<T> + Clone + 'static> ScorerClone<T> for S {
    fn clone_box(&self) -> Box<dyn Scorer<T>> {
        Box::new(self.clone())
    }
}

/// Scores tokens of one layer. A scorer may keep state across calls (H2O's running sum);
/// [`Scorer::retain`] tells it which tokens survived an eviction so it can compact it.
/// Scorers are `Clone` ([`ScorerClone`]) so that a session can be forked with what its
/// scorers learnt; state must never be changed in place through a shared tensor.
pub trait Scorer<T: Tensor>: Send + ScorerClone<T> {
    /// Short name, as in policy files.
    fn name(&self) -> &'static str;

    /// What the observation must carry.
    fn needs(&self) -> Needs;

    /// Per-head scores `[heads, k]`, higher is more important. Stateful scorers update
    /// their state with this observation.
    fn score(&mut self, obs: &Observation<'_, T>) -> Result<T>;

    /// How per-head scores are folded into one score per token.
    fn aggregation(&self) -> Aggregation {
        Aggregation::Mean
    }

    /// Whether the scorer accumulates state and so must observe every step, not only the
    /// steps whose scores are used.
    fn is_stateful(&self) -> bool {
        false
    }

    /// One score per token: [`Scorer::score`] folded with [`aggregate`].
    fn score_tokens(&mut self, obs: &Observation<'_, T>) -> Result<T> {
        let per_head = self.score(obs)?;
        aggregate(&per_head, obs.kv_heads, self.aggregation())
    }

    /// One score per token and KV head `[kv_heads, k]`: [`Scorer::score`] with the query
    /// heads of each GQA group averaged, for selection per KV head.
    fn score_kv_heads(&mut self, obs: &Observation<'_, T>) -> Result<T> {
        let per_head = self.score(obs)?;
        per_kv_head(&per_head, obs.kv_heads)
    }

    /// Only the tokens at `kept` (sorted indices into the last scored set) remain.
    fn retain(&mut self, _kept: &[usize]) -> Result<()> {
        Ok(())
    }

    /// Entries joined the cache among the scored ones (revived tokens): `rows` are their
    /// indices in the new order, increasing; every other entry keeps its order. A scorer
    /// with state per entry gives them none yet (nothing has attended to them).
    fn insert(&mut self, _rows: &[usize]) -> Result<()> {
        Ok(())
    }

    /// In KV head `h`, only the tokens at `kept[h]` remain (per-head selection). A scorer
    /// without state has nothing to compact; a stateful one that keeps one row per token
    /// must override this unless every head keeps the same tokens.
    fn retain_heads(&mut self, kept: &[Vec<usize>]) -> Result<()> {
        match kept.first() {
            Some(first) if kept.iter().all(|k| k == first) => self.retain(first),
            _ if !self.is_stateful() => Ok(()),
            _ => Err(Error::InvalidPolicy(format!("scorer `{}` cannot follow a per-head eviction", self.name()))),
        }
    }
}

/// Per-head scores `[heads, k]` as one row per KV head `[kv_heads, k]`: the query heads of
/// each GQA group averaged (they read the same cached entry), a single row (a scorer that
/// ranks every head alike) repeated.
pub fn per_kv_head<T: Tensor>(scores: &T, kv_heads: usize) -> Result<T> {
    let shape = scores.shape();
    if shape.len() != 2 || kv_heads == 0 {
        return Err(Error::Shape { op: "per_kv_head", detail: format!("expected [heads, tokens], got {shape:?}") });
    }
    let (heads, k) = (shape[0], shape[1]);
    if heads == kv_heads {
        Ok(scores.clone())
    } else if heads == 1 {
        T::cat(&vec![scores; kv_heads], 0)
    } else if heads % kv_heads == 0 {
        scores.reshape(&[kv_heads, heads / kv_heads, k])?.mean(1)
    } else {
        Err(Error::Shape { op: "per_kv_head", detail: format!("{heads} heads are not groups of {kv_heads} KV heads") })
    }
}

/// How scores of several heads become one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Aggregation {
    /// The average over heads.
    #[default]
    Mean,
    /// The largest head's score: a token is kept if any head needs it.
    Max,
}

/// Folds per-head scores `[heads, k]` into `[k]`.
///
/// When `heads` is a multiple of `kv_heads` greater than it (query heads of a GQA model),
/// the query heads of each group are first averaged, since they read the same cached
/// key/value entry; the groups are then combined with `agg`. Otherwise `agg` is applied
/// over all heads directly.
pub fn aggregate<T: Tensor>(scores: &T, kv_heads: usize, agg: Aggregation) -> Result<T> {
    let shape = scores.shape();
    if shape.len() != 2 {
        return Err(Error::Shape { op: "aggregate", detail: format!("expected [heads, tokens], got {shape:?}") });
    }
    let (heads, k) = (shape[0], shape[1]);
    let per_kv = if kv_heads > 0 && heads > kv_heads && heads % kv_heads == 0 {
        scores.reshape(&[kv_heads, heads / kv_heads, k])?.mean(1)?
    } else {
        scores.clone()
    };
    match agg {
        Aggregation::Mean => per_kv.mean(0),
        Aggregation::Max => per_kv.max(0),
    }
}

fn default_window() -> usize {
    32
}
fn default_kernel() -> usize {
    5
}
fn default_pool() -> Pool {
    Pool::Avg
}

/// A scorer as written in a policy file (`[section.scorer]` with a `kind`). Variants
/// without settings are empty structs so that unknown keys are still rejected.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum ScorerSpec {
    /// Attention of the last query over all tokens (LazyLLM; TOVA during decoding).
    #[serde(alias = "tova", alias = "lazyllm")]
    LastQuery {
        #[serde(default)]
        aggregation: Aggregation,
    },
    /// Attention of an observation window of the last `window` queries, summed and smoothed
    /// by 1-D pooling (SnapKV).
    Snapkv {
        #[serde(default = "default_window")]
        window: usize,
        #[serde(default = "default_kernel")]
        kernel: usize,
        #[serde(default = "default_pool")]
        pooling: Pool,
        #[serde(default)]
        aggregation: Aggregation,
    },
    /// Attention accumulated over every query seen so far (H2O heavy hitters); with
    /// `normalize`, divided by the number of queries that saw each token.
    H2o {
        #[serde(default)]
        aggregation: Aggregation,
        #[serde(default)]
        normalize: bool,
    },
    /// Negated L2 norm of the keys: low-norm keys draw attention (KNorm).
    Knorm {},
    /// L2 norm of the values.
    Vnorm {},
    /// Later tokens score higher (StreamingLLM, with sinks protected by the selector).
    #[serde(alias = "streaming")]
    Recency {},
    /// Uniform random scores from a seed: the baseline.
    Random {
        #[serde(default)]
        seed: u64,
    },
    /// The attention future queries are expected to pay, from the statistics of the
    /// prompt's queries (Expected Attention; `[kv]` only).
    ExpectedAttention {
        /// Future positions the rotary rotation is averaged over.
        #[serde(default = "default_future")]
        future: usize,
        /// Leading positions left out of the statistics and always kept.
        #[serde(default = "default_sinks")]
        sinks: usize,
        /// Whether the queries' covariance is used besides their mean.
        #[serde(default = "default_true")]
        covariance: bool,
        /// Whether scores are multiplied by the value's norm.
        #[serde(default = "default_true")]
        value_norm: bool,
    },
}

fn default_future() -> usize {
    512
}
fn default_sinks() -> usize {
    4
}
fn default_true() -> bool {
    true
}

impl ScorerSpec {
    /// Checks ranges; `key` names the policy section in messages.
    pub fn validate(&self, key: &str) -> Result<()> {
        if let ScorerSpec::ExpectedAttention { future, .. } = *self {
            if key != "kv" {
                return Err(Error::InvalidPolicy(format!(
                    "{key}.scorer: expected-attention scores the prompt once it is cached; use it in [kv]"
                )));
            }
            if future == 0 || future > 1 << 20 {
                return Err(Error::out_of_range(format!("{key}.scorer.future"), future, "1 to 1048576"));
            }
        }
        if let ScorerSpec::Snapkv { window, kernel, .. } = *self {
            if window == 0 {
                return Err(Error::out_of_range(format!("{key}.scorer.window"), window, "at least 1"));
            }
            if kernel == 0 || kernel % 2 == 0 || kernel > 63 {
                return Err(Error::out_of_range(format!("{key}.scorer.kernel"), kernel, "an odd number from 1 to 63"));
            }
        }
        Ok(())
    }

    /// How many of the last tokens this scorer always keeps: SnapKV's observation window
    /// (the queries that observe are kept with their tokens, as in the paper). Policies
    /// protect at least this many recent tokens.
    pub fn keeps_last(&self) -> usize {
        match *self {
            ScorerSpec::Snapkv { window, .. } => window,
            _ => 0,
        }
    }

    /// The policy-file name of this scorer.
    pub fn name(&self) -> &'static str {
        match self {
            ScorerSpec::LastQuery { .. } => "last-query",
            ScorerSpec::Snapkv { .. } => "snapkv",
            ScorerSpec::H2o { .. } => "h2o",
            ScorerSpec::Knorm {} => "knorm",
            ScorerSpec::Vnorm {} => "vnorm",
            ScorerSpec::Recency {} => "recency",
            ScorerSpec::Random { .. } => "random",
            ScorerSpec::ExpectedAttention { .. } => "expected-attention",
        }
    }

    /// A fresh scorer (with empty state) for tensors of type `T`.
    pub fn build<T: Tensor + Send + 'static>(&self) -> Box<dyn Scorer<T>> {
        match *self {
            ScorerSpec::LastQuery { aggregation } => Box::new(LastQuery { aggregation }),
            ScorerSpec::Snapkv { window, kernel, pooling, aggregation } => {
                Box::new(ObservationWindow { window, kernel, pooling, aggregation })
            }
            ScorerSpec::H2o { aggregation, normalize: false } => Box::new(AccumulatedAttention::new(aggregation)),
            ScorerSpec::H2o { aggregation, normalize: true } => Box::new(AccumulatedAttention::normalized(aggregation)),
            ScorerSpec::Knorm {} => Box::new(KeyNorm),
            ScorerSpec::Vnorm {} => Box::new(ValueNorm),
            ScorerSpec::Recency {} => Box::new(Recency),
            ScorerSpec::Random { seed } => Box::new(RandomScore { seed }),
            ScorerSpec::ExpectedAttention { future, sinks, covariance, value_norm } => {
                Box::new(ExpectedAttention { future, sinks, covariance, value_norm })
            }
        }
    }
}
