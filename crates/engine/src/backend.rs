//! The Backend trait: a transformer block at a time, on some runtime.

use sieve_core::Tensor;

use crate::config::ModelConfig;
use crate::error::Result;

/// Shorthand for a backend's tensor type.
pub type BTensor<B> = <B as Backend>::Tensor;
/// Shorthand for a backend's device type.
pub type BDevice<B> = <<B as Backend>::Tensor as Tensor>::Device;

/// One layer's KV cache. The engine owns it (so it can compact it with the core's tensor
/// trait); the backend appends to it in [`Backend::layer`]. Keys are stored after RoPE.
/// Each layer's cache may have its own length.
#[derive(Debug, Clone)]
pub struct LayerCache<T> {
    /// Keys `[kv_heads, len, head_dim]`, `None` while empty.
    pub keys: Option<T>,
    /// Values `[kv_heads, len, head_dim]`, `None` while empty.
    pub values: Option<T>,
    /// Original position of each entry, increasing.
    pub positions: Vec<usize>,
}

impl<T> Default for LayerCache<T> {
    fn default() -> Self {
        Self { keys: None, values: None, positions: Vec::new() }
    }
}

impl<T: Tensor> LayerCache<T> {
    /// Number of cached tokens.
    pub fn len(&self) -> usize {
        self.positions.len()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.positions.is_empty()
    }

    /// Keeps only the entries at `kept` (sorted indices). The old tensors are dropped, so
    /// their memory is freed.
    pub fn retain(&mut self, kept: &[usize]) -> Result<()> {
        if kept.len() == self.len() {
            return Ok(());
        }
        if let Some(k) = &self.keys {
            self.keys = Some(k.index_select(1, kept)?);
        }
        if let Some(v) = &self.values {
            self.values = Some(v.index_select(1, kept)?);
        }
        self.positions = kept.iter().map(|&i| self.positions[i]).collect();
        Ok(())
    }
}

/// What [`Backend::layer`] must report besides the hidden states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Probe {
    /// Attention probabilities of this many last queries (0 for none).
    pub last_queries: usize,
    /// The attention probabilities summed over every query of the call.
    pub column_sums: bool,
}

impl Probe {
    /// Nothing to report.
    pub const NONE: Probe = Probe { last_queries: 0, column_sums: false };

    /// Whether anything is asked for.
    pub fn any(&self) -> bool {
        self.last_queries > 0 || self.column_sums
    }
}

/// What [`Backend::layer`] returns.
#[derive(Debug, Clone)]
pub struct LayerOutput<T> {
    /// Hidden states after the block `[tokens, hidden]`.
    pub hidden: T,
    /// Attention probabilities of the last `probe.last_queries` queries over every cached
    /// key (including this call's tokens): `[heads, min(last_queries, tokens), cache_len]`.
    pub attention: Option<T>,
    /// With `probe.column_sums`: attention summed over all of this call's queries,
    /// `[heads, 1, cache_len]`.
    pub attention_sums: Option<T>,
}

/// A runtime that executes a Llama-family decoder one block at a time.
///
/// Implementations hold the model's weights on their device. Positions given to
/// [`Backend::layer`] are original token positions: after pruning they may have gaps, and
/// the rotary embedding and causal mask must use them, not row indices (a query at
/// position `p` attends to cached keys whose position is at most `p`).
pub trait Backend {
    /// The backend's tensor, which the pruning core scores with.
    type Tensor: Tensor + Send + 'static;

    /// Short name (`candle`, `tch`, `ort`).
    fn name(&self) -> &'static str;

    /// The model's configuration.
    fn config(&self) -> &ModelConfig;

    /// The device tensors live on.
    fn device(&self) -> BDevice<Self>;

    /// Embeddings of `tokens`: `[tokens.len(), hidden]`.
    fn embed(&self, tokens: &[u32]) -> Result<Self::Tensor>;

    /// Runs decoder layer `index` on `hidden` (`[n, hidden]`, tokens at `positions`),
    /// appending their keys and values to `cache`, and reports what `probe` asks for.
    fn layer(
        &self,
        index: usize,
        hidden: &Self::Tensor,
        positions: &[usize],
        cache: &mut LayerCache<Self::Tensor>,
        probe: Probe,
    ) -> Result<LayerOutput<Self::Tensor>>;

    /// Final norm and LM head: logits `[n, vocab]` for hidden states `[n, hidden]`.
    fn logits(&self, hidden: &Self::Tensor) -> Result<Self::Tensor>;
}
