//! The backend conformance suite (and the core's tensor cases) on candle's CPU, with both
//! ways the backend computes: its own kernels and candle's ops.

use sieve_backend::{ModelConfig, Weights};
use sieve_candle::{CandleBackend, CandleDevice, Kernels};

fn make(config: &ModelConfig, weights: Weights, kernels: Kernels) -> CandleBackend {
    CandleBackend::with_kernels(config, weights, CandleDevice::Cpu, kernels).expect("candle backend")
}

/// sieve's CPU kernels, the default on the CPU.
mod kernels {
    use super::*;

    sieve_backend::backend_conformance!(CandleBackend, |c: &ModelConfig, w| make(c, w, Kernels::Auto));
}

/// candle's ops, what runs on CUDA.
mod ops {
    use super::*;

    sieve_backend::backend_conformance!(CandleBackend, |c: &ModelConfig, w| make(c, w, Kernels::Ops));
}
