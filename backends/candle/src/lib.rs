//! `sieve-candle`: the candle backend of sieve.
//!
//! [`CandleTensor`] implements the core's tensor trait on candle tensors, so scoring runs
//! on candle's device; [`CandleBackend`] implements the engine's Backend trait, one
//! decoder block at a time, in `f32`. CPU by default; CUDA with the `cuda` feature.

mod backend;
mod tensor;

pub use backend::{CandleBackend, CandleDevice};
pub use tensor::CandleTensor;
