//! [`Runtime`]: one loaded backend, used through the backend contract.

use sieve_backend::{Backend, DeviceSpec, LayerCache, LayerCall, LayerOutput, ModelConfig, Probe, Weights};

use crate::error::{Error, Result};
use crate::kind::BackendKind;
use crate::tensor::{RuntimeDevice, RuntimeTensor, Variant};

/// A backend chosen at run time among those compiled in.
// One per loaded model: the size of the enum does not matter, and boxing a variant would
// hide its backend behind a `Box` in every dispatched call.
#[allow(clippy::large_enum_variant)]
pub enum Runtime {
    /// candle.
    #[cfg(feature = "candle")]
    Candle(sieve_candle::CandleBackend),
    /// libtorch.
    #[cfg(feature = "tch")]
    Tch(sieve_tch::TchBackend),
    /// ONNX Runtime.
    #[cfg(feature = "ort")]
    Ort(sieve_ort::OrtBackend),
}

/// Calls `$body` with `$b` bound to the backend inside `$runtime`.
macro_rules! dispatch {
    ($runtime:expr, $b:ident => $body:expr) => {
        match $runtime {
            #[cfg(feature = "candle")]
            Runtime::Candle($b) => $body,
            #[cfg(feature = "tch")]
            Runtime::Tch($b) => $body,
            #[cfg(feature = "ort")]
            Runtime::Ort($b) => $body,
        }
    };
}

impl Runtime {
    /// Bytes of device memory in use, where the backend can say (candle on CUDA).
    pub fn device_memory_in_use(&self) -> Option<u64> {
        match self {
            #[cfg(feature = "candle")]
            Runtime::Candle(b) => b.device_memory_in_use(),
            #[allow(unreachable_patterns)]
            _ => None,
        }
    }

    /// Builds the backend `kind` on `device` from `weights` (moved in: on the CPU, candle
    /// keeps them without a copy). ONNX Runtime is loaded from the path `sieve-fetch`
    /// names (`$SIEVE_ORT_LIB`, `$ORT_DYLIB_PATH`, or the cache).
    pub fn load(kind: BackendKind, device: DeviceSpec, config: &ModelConfig, weights: Weights) -> Result<Self> {
        match kind {
            BackendKind::Candle => Self::candle(device, config, weights),
            BackendKind::Tch => Self::tch(device, config, weights),
            BackendKind::Ort => Self::ort(device, config, weights),
        }
    }

    #[cfg(feature = "candle")]
    fn candle(device: DeviceSpec, config: &ModelConfig, weights: Weights) -> Result<Self> {
        Ok(Runtime::Candle(sieve_candle::CandleBackend::from_weights(config, weights, device.into())?))
    }

    #[cfg(not(feature = "candle"))]
    fn candle(_: DeviceSpec, _: &ModelConfig, _: Weights) -> Result<Self> {
        Err(Error::NotCompiled { kind: BackendKind::Candle, hint: "rebuild with the `candle` feature" })
    }

    #[cfg(feature = "tch")]
    fn tch(device: DeviceSpec, config: &ModelConfig, weights: Weights) -> Result<Self> {
        // libtorch keeps bf16 and f16 matrices in their kind and decodes other packed
        // formats to f32, one matrix at a time.
        Ok(Runtime::Tch(sieve_tch::TchBackend::new(config, &weights, sieve_tch::device(device))?))
    }

    #[cfg(not(feature = "tch"))]
    fn tch(_: DeviceSpec, _: &ModelConfig, _: Weights) -> Result<Self> {
        Err(Error::NotCompiled { kind: BackendKind::Tch, hint: "build sieve-tch with `cargo xtask build-tch`" })
    }

    #[cfg(feature = "ort")]
    fn ort(device: DeviceSpec, config: &ModelConfig, weights: Weights) -> Result<Self> {
        sieve_ort::load(&sieve_fetch::onnxruntime::library_path())?;
        // Matrices in Q4_0, Q4_1, Q5_0 or Q8_0 blocks stay in them (`MatMulNBits`); the
        // backend decodes other packed formats itself.
        Ok(Runtime::Ort(sieve_ort::OrtBackend::from_weights(config, weights, device.into())?))
    }

    #[cfg(not(feature = "ort"))]
    fn ort(_: DeviceSpec, _: &ModelConfig, _: Weights) -> Result<Self> {
        Err(Error::NotCompiled { kind: BackendKind::Ort, hint: "rebuild with the `ort` feature" })
    }

    /// Which backend this is.
    pub fn kind(&self) -> BackendKind {
        match self {
            #[cfg(feature = "candle")]
            Runtime::Candle(_) => BackendKind::Candle,
            #[cfg(feature = "tch")]
            Runtime::Tch(_) => BackendKind::Tch,
            #[cfg(feature = "ort")]
            Runtime::Ort(_) => BackendKind::Ort,
        }
    }
}

/// One layer on backend `b`: the runtime's cache is handed over as `b`'s own (tensors
/// moved, not copied) and handed back afterwards, also when the layer fails.
fn layer_on<B>(
    b: &B,
    index: usize,
    hidden: &RuntimeTensor,
    positions: &[usize],
    cache: &mut LayerCache<RuntimeTensor>,
    probe: Probe,
) -> Result<LayerOutput<RuntimeTensor>>
where
    B: Backend,
    B::Tensor: Variant,
    Error: From<B::Error>,
{
    let hidden = B::Tensor::borrow(hidden)?;
    let mut inner = std::mem::take(cache).map(B::Tensor::unwrap)?;
    let out = b.layer(LayerCall::new(index, hidden, positions, probe), &mut inner);
    *cache = rewrap(inner);
    Ok(wrap_output(out?))
}

/// [`layer_on`] for a batch of sequences: every cache handed over and handed back.
fn layer_batch_on<B>(
    b: &B,
    calls: &[LayerCall<'_, RuntimeTensor>],
    caches: &mut [&mut LayerCache<RuntimeTensor>],
) -> Result<Vec<LayerOutput<RuntimeTensor>>>
where
    B: Backend,
    B::Tensor: Variant,
    Error: From<B::Error>,
{
    let hidden = calls.iter().map(|c| B::Tensor::borrow(c.hidden)).collect::<sieve_core::Result<Vec<_>>>()?;
    let mut inner = Vec::with_capacity(caches.len());
    for cache in caches.iter_mut() {
        match std::mem::take(*cache).map(B::Tensor::unwrap) {
            Ok(c) => inner.push(c),
            Err(e) => {
                // Hand back what was taken before failing.
                for (slot, c) in caches.iter_mut().zip(inner) {
                    **slot = rewrap(c);
                }
                return Err(e.into());
            }
        }
    }
    let inner_calls: Vec<_> =
        calls.iter().zip(&hidden).map(|(c, h)| LayerCall::new(c.index, *h, c.positions, c.probe)).collect();
    let out = {
        let mut refs: Vec<&mut LayerCache<B::Tensor>> = inner.iter_mut().collect();
        b.layer_batch(&inner_calls, &mut refs)
    };
    for (slot, c) in caches.iter_mut().zip(inner) {
        **slot = rewrap(c);
    }
    Ok(out?.into_iter().map(wrap_output).collect())
}

fn rewrap<T: Variant + sieve_core::Tensor>(cache: LayerCache<T>) -> LayerCache<RuntimeTensor> {
    cache.map(|t| Ok::<_, std::convert::Infallible>(t.wrap())).unwrap_or_else(|e| match e {})
}

fn wrap_output<T: Variant>(out: LayerOutput<T>) -> LayerOutput<RuntimeTensor> {
    LayerOutput {
        hidden: out.hidden.wrap(),
        attention: out.attention.map(Variant::wrap),
        attention_sums: out.attention_sums.map(Variant::wrap),
        queries: out.queries.map(Variant::wrap),
    }
}

impl Backend for Runtime {
    type Tensor = RuntimeTensor;
    type Error = Error;

    fn name(&self) -> &'static str {
        dispatch!(self, b => b.name())
    }

    fn config(&self) -> &ModelConfig {
        dispatch!(self, b => b.config())
    }

    fn half_precision_products(&self) -> bool {
        dispatch!(self, b => b.half_precision_products())
    }

    fn device(&self) -> RuntimeDevice {
        match self {
            #[cfg(feature = "candle")]
            Runtime::Candle(b) => RuntimeDevice::Candle(b.device()),
            #[cfg(feature = "tch")]
            Runtime::Tch(b) => RuntimeDevice::Tch(b.device()),
            #[cfg(feature = "ort")]
            Runtime::Ort(b) => RuntimeDevice::Ort(b.device()),
        }
    }

    fn embed(&self, tokens: &[u32]) -> Result<RuntimeTensor> {
        dispatch!(self, b => Ok(b.embed(tokens)?.wrap()))
    }

    fn layer(
        &self,
        call: LayerCall<'_, RuntimeTensor>,
        cache: &mut LayerCache<RuntimeTensor>,
    ) -> Result<LayerOutput<RuntimeTensor>> {
        let LayerCall { index, hidden, positions, probe } = call;
        dispatch!(self, b => layer_on(b, index, hidden, positions, cache, probe))
    }

    fn logits(&self, hidden: &RuntimeTensor) -> Result<RuntimeTensor> {
        dispatch!(self, b => Ok(b.logits(Variant::borrow(hidden)?)?.wrap()))
    }

    fn layer_batch(
        &self,
        calls: &[LayerCall<'_, RuntimeTensor>],
        caches: &mut [&mut LayerCache<RuntimeTensor>],
    ) -> Result<Vec<LayerOutput<RuntimeTensor>>> {
        sieve_backend::check_batch(calls, caches.len())?;
        dispatch!(self, b => layer_batch_on(b, calls, caches))
    }
}
