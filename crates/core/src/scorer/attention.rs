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
/// The window's own tokens (the last `window` of the scored set, whose queries did the
/// observing) are always kept: they score above any attention sum, whatever the policy's
/// `recent` says, and the pooling runs over the tokens before the window only, so that
/// the window's columns (the diagonal) do not lift their neighbours.
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
        let (heads, queries, k) = (a.dim(0)?, a.dim(1)?, a.dim(2)?);
        let w = queries.min(self.window).min(k);
        // Each query's probabilities sum to one, so `w + 1` is above any column's sum.
        let window = T::from_host(&vec![w as f32 + 1.0; heads * w], &[heads, w], &obs.device)?;
        if w == k {
            return Ok(window);
        }
        let summed = a.narrow(1, queries - w, w)?.sum(1)?;
        let before = summed.narrow(1, 0, k - w)?.pool1d(self.kernel, self.pooling)?;
        if w == 0 {
            return Ok(before);
        }
        T::cat(&[&before, &window], 1)
    }
}

/// Attention accumulated over all queries seen so far, kept as state across steps.
///
/// H2O (Zhang et al., 2023, "H2O: Heavy-Hitter Oracle for Efficient Generative Inference
/// of Large Language Models") keeps the "heavy hitters": tokens whose summed attention
/// over all past queries is largest. The running sum grows with the cache and is
/// compacted by [`Scorer::retain`] when entries are evicted.
///
/// With `normalize`, each token's sum is divided by the number of queries that saw it
/// (under a causal mask, early tokens are seen by more queries and would otherwise win on
/// count alone). The queries of an observation are the entries added since the previous
/// one: their positions are above every position seen before.
#[derive(Debug, Clone)]
pub struct AccumulatedAttention<T> {
    /// How heads are folded.
    pub aggregation: Aggregation,
    /// Divide by the number of queries that saw each token.
    pub normalize: bool,
    state: Option<T>,
    /// Queries that saw each token so far, one row per row of the running sum (the rows
    /// differ once KV heads keep different tokens).
    seen_by: Vec<Vec<f32>>,
    /// The largest position observed so far.
    last: Option<usize>,
}

impl<T> AccumulatedAttention<T> {
    /// A scorer with an empty running sum.
    pub fn new(aggregation: Aggregation) -> Self {
        Self { aggregation, normalize: false, state: None, seen_by: Vec::new(), last: None }
    }

    /// The same, dividing by the number of queries that saw each token.
    pub fn normalized(aggregation: Aggregation) -> Self {
        Self { normalize: true, ..Self::new(aggregation) }
    }

    /// The running sum `[heads, k]`, if anything was observed.
    pub fn state(&self) -> Option<&T> {
        self.state.as_ref()
    }

    /// Counts the queries of an observation of tokens at `positions` (the entries newer
    /// than anything observed before, the last ones in every head) against every token of
    /// each of `rows` rows: every query sees the older entries, and a new entry is seen by
    /// the queries at or after its position.
    fn count_queries(&mut self, positions: &[usize], rows: usize) {
        let first_new = self.last.map_or(0, |last| positions.partition_point(|&p| p <= last));
        let queries = &positions[first_new..];
        if self.seen_by.is_empty() {
            self.seen_by = vec![Vec::new(); rows];
        }
        for row in &mut self.seen_by {
            row.resize(positions.len(), 0.0);
            for (j, seen) in row.iter_mut().enumerate() {
                *seen += if j < first_new {
                    queries.len() as f32
                } else {
                    (queries.len() - queries.partition_point(|&q| q < positions[j])) as f32
                };
            }
        }
        self.last = positions.last().copied().max(self.last);
    }
}

impl<T: Tensor + Send + 'static> Scorer<T> for AccumulatedAttention<T> {
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
        self.count_queries(obs.positions, heads);
        if !self.normalize {
            return Ok(total);
        }
        let mut scores = total.to_host()?;
        for (row, seen) in scores.chunks_mut(k.max(1)).zip(&self.seen_by) {
            for (s, &n) in row.iter_mut().zip(seen) {
                *s /= n.max(1.0);
            }
        }
        T::from_host(&scores, &[heads, k], &obs.device)
    }

    fn retain(&mut self, kept: &[usize]) -> Result<()> {
        if let Some(state) = &self.state {
            self.state = Some(state.index_select(1, kept)?);
        }
        for row in &mut self.seen_by {
            *row = kept.iter().map(|&i| row.get(i).copied().unwrap_or(0.0)).collect();
        }
        Ok(())
    }

    fn insert(&mut self, rows: &[usize]) -> Result<()> {
        let Some(state) = &self.state else { return Ok(()) };
        let (heads, seen) = (state.dim(0)?, state.dim(1)?);
        // The new order: an inserted row reads a zero column appended after the old ones.
        let total = seen + rows.len();
        let mut from = Vec::with_capacity(total);
        let (mut old, mut next) = (0, rows.iter().peekable());
        for i in 0..total {
            if next.peek() == Some(&&i) {
                next.next();
                from.push(seen);
            } else {
                from.push(old);
                old += 1;
            }
        }
        if old != seen || next.peek().is_some() {
            return Err(Error::Shape { op: "h2o", detail: format!("rows {rows:?} inserted among {seen} entries") });
        }
        let zeros = T::from_host(&vec![0.0; heads], &[heads, 1], &state.device())?;
        self.state = Some(T::cat(&[state, &zeros], 1)?.index_select(1, &from)?);
        for row in &mut self.seen_by {
            row.resize(seen, 0.0);
            row.push(0.0);
            *row = from.iter().map(|&i| row[i]).collect();
        }
        Ok(())
    }

    fn retain_heads(&mut self, kept: &[Vec<usize>]) -> Result<()> {
        let Some(state) = &self.state else { return Ok(()) };
        let heads = state.dim(0)?;
        if kept.is_empty() || heads % kept.len() != 0 {
            return Err(Error::Shape {
                op: "h2o",
                detail: format!("{heads} rows of running sums for {} KV heads", kept.len()),
            });
        }
        // Row h belongs to the query head h, of KV head h / (heads / kv_heads).
        let group = heads / kept.len();
        let rows =
            (0..heads).map(|h| state.narrow(0, h, 1)?.index_select(1, &kept[h / group])).collect::<Result<Vec<T>>>()?;
        self.state = Some(T::cat(&rows.iter().collect::<Vec<_>>(), 0)?);
        for (h, row) in self.seen_by.iter_mut().enumerate() {
            *row = kept[h / group].iter().map(|&i| row.get(i).copied().unwrap_or(0.0)).collect();
        }
        Ok(())
    }
}
