//! A test-only switch: a backend wrapper that adds a small bias to one decoder layer's
//! output, so that a test can check that parity notices a backend that is slightly wrong.

use sieve_backend::{Backend, BackendDevice, LayerCache, LayerCall, LayerOutput, ModelConfig};
use sieve_core::Tensor as _;

/// The layer whose output is biased.
pub const LAYER: usize = 10;
/// The bias added to every element of that layer's hidden states (which are of magnitude
/// 1–100): enough to move the final logits by about 1e-2, far more than rounding does.
pub const BIAS: f32 = 1e-2;

/// `B` with [`BIAS`] added to the hidden states that layer [`LAYER`] returns.
pub struct Perturbed<'a, B>(pub &'a B);

impl<B: Backend> Backend for Perturbed<'_, B> {
    type Tensor = B::Tensor;
    type Error = B::Error;

    fn name(&self) -> &'static str {
        self.0.name()
    }

    fn config(&self) -> &ModelConfig {
        self.0.config()
    }

    fn device(&self) -> BackendDevice<Self> {
        self.0.device()
    }

    fn embed(&self, tokens: &[u32]) -> Result<Self::Tensor, B::Error> {
        self.0.embed(tokens)
    }

    fn layer(
        &self,
        call: LayerCall<'_, Self::Tensor>,
        cache: &mut LayerCache<Self::Tensor>,
    ) -> Result<LayerOutput<Self::Tensor>, B::Error> {
        let mut out = self.0.layer(call, cache)?;
        if call.index == LAYER {
            out.hidden = out.hidden.affine(1.0, BIAS)?;
        }
        Ok(out)
    }

    fn logits(&self, hidden: &Self::Tensor) -> Result<Self::Tensor, B::Error> {
        self.0.logits(hidden)
    }
}
