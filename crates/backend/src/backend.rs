//! The Backend trait: a transformer block at a time, on some runtime.

use sieve_core::Tensor;

use crate::cache::LayerCache;
use crate::config::ModelConfig;

/// Shorthand for a backend's tensor type.
pub type BackendTensor<B> = <B as Backend>::Tensor;
/// Shorthand for the device type of a backend's tensors.
pub type BackendDevice<B> = <<B as Backend>::Tensor as Tensor>::Device;

/// What [`Backend::layer`] must report besides the hidden states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Probe {
    /// Attention probabilities of this many last queries (0 for none).
    pub last_queries: usize,
    /// The attention probabilities summed over every query of the call.
    pub column_sums: bool,
    /// The call's queries before the rotary embedding.
    pub queries: bool,
}

impl Probe {
    /// Nothing to report.
    pub const NONE: Probe = Probe { last_queries: 0, column_sums: false, queries: false };

    /// Whether anything is asked for.
    pub fn any(&self) -> bool {
        self.last_queries > 0 || self.column_sums || self.queries
    }
}

/// One call of a decoder layer: which layer, on which rows, and what to report.
#[derive(Debug)]
pub struct LayerCall<'a, T> {
    /// The layer.
    pub index: usize,
    /// Hidden states `[n, hidden]`.
    pub hidden: &'a T,
    /// The original position of each row.
    pub positions: &'a [usize],
    /// What to report besides the hidden states.
    pub probe: Probe,
}

impl<T> Clone for LayerCall<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for LayerCall<'_, T> {}

impl<'a, T> LayerCall<'a, T> {
    /// Layer `index` on `hidden` at `positions`, reporting `probe`.
    pub fn new(index: usize, hidden: &'a T, positions: &'a [usize], probe: Probe) -> Self {
        Self { index, hidden, positions, probe }
    }
}

/// What [`Backend::layer`] returns.
#[derive(Debug, Clone)]
pub struct LayerOutput<T> {
    /// Hidden states after the block `[tokens, hidden]`.
    pub hidden: T,
    /// Attention probabilities of the last `probe.last_queries` queries over every cached
    /// key (including this call's tokens): `[heads, min(last_queries, tokens), cache_len]`,
    /// zero where the causal mask hides a key.
    pub attention: Option<T>,
    /// With `probe.column_sums`: attention summed over all of this call's queries,
    /// `[heads, 1, cache_len]`.
    pub attention_sums: Option<T>,
    /// With `probe.queries`: the call's queries after their projection (bias and q norm
    /// included) and before the rotary embedding and the attention scale,
    /// `[heads, tokens, head_dim]`.
    pub queries: Option<T>,
}

/// A runtime that executes a Llama-family decoder one block at a time.
///
/// Implementations hold the model's weights on their device and compute in `f32` (scores
/// and probabilities always come back as `f32`). The engine drives them: it embeds the
/// tokens, runs each layer over the rows that survive pruning, scores and compacts the
/// caches with the core's tensor trait, and asks for logits.
///
/// # What the engine guarantees
///
/// The engine checks its inputs once, before calling a backend, so implementations need
/// not repeat these checks (a violation must still be an error, never undefined
/// behaviour):
/// - every token id given to [`Backend::embed`] is below `config().vocab`;
/// - `positions` given to [`Backend::layer`] are increasing, below `config().context`, as
///   many as `hidden` has rows, and not already in `cache`. They are greater than every
///   cached position except in a decode step that revives pruned tokens: those rows fall
///   among the cached positions (only in a cache whose KV heads share their entries), and
///   the cache must then hold every row in position order afterwards
///   ([`crate::LayerCache::append`] does so; a backend writing in place calls
///   [`crate::LayerCache::sort_rows`] before attending), with the probes' key columns in
///   that order;
/// - `index < config().n_layers`.
///
/// # What implementations guarantee
///
/// Positions are original token positions: after pruning they may have gaps, and the
/// rotary embedding and causal mask must use them, not row indices (a query at position
/// `p` attends to the cached keys whose position is at most `p`). When the cache's KV
/// heads keep different numbers of entries, head `h`'s first
/// [`crate::LayerCache::head_padding`]`(h)` rows hold no entry and must get no attention.
/// Keys are cached after the rotary embedding. [`crate::conformance`] checks all of this against
/// [`crate::reference::HostBackend`].
pub trait Backend {
    /// The backend's tensor, which the pruning core scores with.
    type Tensor: Tensor + Send + 'static;

    /// The backend's error. Tensor-trait failures (`sieve_core::Error`) convert into it.
    type Error: std::error::Error + Send + Sync + 'static + From<sieve_core::Error>;

    /// Short name (`candle`, `tch`, `ort`, `host`).
    fn name(&self) -> &'static str;

    /// The model's configuration.
    fn config(&self) -> &ModelConfig;

    /// The device tensors live on.
    fn device(&self) -> BackendDevice<Self>;

    /// Whether products with f16 or bf16 matrices round their input to that precision
    /// (libtorch's reduced-precision kernels do) rather than multiplying the 16-bit values
    /// by `f32` inputs. Such products move a layer's output by about 1e-3 of its norm, so
    /// [`crate::conformance`] holds them to [`crate::conformance::HALF_PRODUCT_RELATIVE`].
    fn half_precision_products(&self) -> bool {
        false
    }

    /// Embeddings of `tokens`: `[tokens.len(), hidden]`.
    fn embed(&self, tokens: &[u32]) -> Result<Self::Tensor, Self::Error>;

    /// Runs decoder layer `call.index` on `call.hidden` (`[n, hidden]`, tokens at
    /// `call.positions`), appending their keys and values to `cache`, and reports what
    /// `call.probe` asks for.
    fn layer(
        &self,
        call: LayerCall<'_, Self::Tensor>,
        cache: &mut LayerCache<Self::Tensor>,
    ) -> Result<LayerOutput<Self::Tensor>, Self::Error>;

    /// Final norm and LM head: logits `[n, vocab]` for hidden states `[n, hidden]`.
    fn logits(&self, hidden: &Self::Tensor) -> Result<Self::Tensor, Self::Error>;

    /// Runs one layer for several independent sequences at once: `calls[i]` on
    /// `caches[i]`, every call with the same `index`. The outputs are those of
    /// [`Backend::layer`] on each call alone, up to the rounding of a product computed for
    /// more rows at a time.
    ///
    /// The default runs the calls one after the other. A backend overrides it to read
    /// each weight matrix once for all the sequences' rows (decode steps of a server's
    /// sequences), while each sequence attends over its own, differently pruned cache.
    fn layer_batch(
        &self,
        calls: &[LayerCall<'_, Self::Tensor>],
        caches: &mut [&mut LayerCache<Self::Tensor>],
    ) -> Result<Vec<LayerOutput<Self::Tensor>>, Self::Error> {
        check_batch(calls, caches.len())?;
        calls.iter().zip(caches.iter_mut()).map(|(call, cache)| self.layer(*call, cache)).collect()
    }
}

/// Checks a [`Backend::layer_batch`] call: one cache per call, one layer for all.
pub fn check_batch<T>(calls: &[LayerCall<'_, T>], caches: usize) -> sieve_core::Result<()> {
    if calls.len() != caches {
        let detail = format!("{} calls and {caches} caches", calls.len());
        return Err(sieve_core::Error::Shape { op: "layer_batch", detail });
    }
    if calls.windows(2).any(|w| w[0].index != w[1].index) {
        return Err(sieve_core::Error::Shape {
            op: "layer_batch",
            detail: "the calls are for different layers".into(),
        });
    }
    Ok(())
}
