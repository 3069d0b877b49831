//! `sieve-candle`: the candle backend of sieve.
//!
//! [`CandleTensor`] implements the core's tensor trait on candle tensors, so scoring runs
//! on candle's device; [`CandleBackend`] implements the backend contract
//! ([`sieve_backend::Backend`]), one decoder block at a time, in `f32`. CPU by default;
//! CUDA with the `cuda` feature.

mod backend;
mod error;
mod tensor;

pub use backend::{CandleBackend, CandleDevice};
pub use error::{Error, Result};
pub use tensor::CandleTensor;
