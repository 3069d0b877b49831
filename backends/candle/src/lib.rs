//! `sieve-candle`: the candle backend of sieve.
//!
//! [`CandleTensor`] implements the core's tensor trait on candle tensors, so scoring runs
//! on candle's device; [`CandleBackend`] implements the backend contract
//! ([`sieve_backend::Backend`]), one decoder block at a time, in `f32`: on the CPU with
//! sieve's own kernels ([`cpu`]), on CUDA (the `cuda` feature) with candle's ops.

mod backend;
pub mod cpu;
mod error;
mod ops;
mod tensor;

pub use backend::{CandleBackend, CandleDevice, Kernels};
pub use error::{Error, Result};
pub use tensor::CandleTensor;

/// One layer call on candle's tensors.
pub(crate) type Call<'a> = sieve_backend::LayerCall<'a, CandleTensor>;
/// A layer's KV cache of candle's tensors.
pub(crate) type Cache = sieve_backend::LayerCache<CandleTensor>;
/// What a layer returns.
pub(crate) type Output = Result<sieve_backend::LayerOutput<CandleTensor>>;
