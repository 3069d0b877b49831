//! The backend conformance suite (and the core's tensor cases) on candle's CPU.

use sieve_backend::{ModelConfig, Weights};
use sieve_candle::{CandleBackend, CandleDevice};

fn cpu(config: &ModelConfig, weights: Weights) -> CandleBackend {
    CandleBackend::from_weights(config, weights, CandleDevice::Cpu).expect("candle backend")
}

sieve_backend::backend_conformance!(CandleBackend, cpu);
