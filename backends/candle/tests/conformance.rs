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

/// candle's ops with every matrix in `f16` or `bf16`: the products compute in that type
/// (what `--dtype f16|bf16` gives on CUDA), against the same weights decoded to `f32`.
mod half {
    use sieve_backend::quant::GgmlType;
    use sieve_backend::synthetic;
    use sieve_engine::{Logits, Policy, Session};

    use super::*;

    /// Relative error `|a - b| / |b|` (Euclidean norms) of each logits row, largest first.
    fn logits_error(format: GgmlType) -> (candle_core::DType, f32) {
        let config = synthetic::tiny_config();
        let weights = synthetic::weights(&config, 3, true).with_matrices_in(format);
        let f32 = make(&config, weights.clone().into_f32(), Kernels::Ops);
        let half = make(&config, weights, Kernels::Ops);
        let tokens: Vec<u32> = (0..40).map(|i| (i * 13 % 64) as u32).collect();
        let run = |backend: &CandleBackend| {
            let mut session = Session::new(backend, Policy::none()).unwrap();
            let mut rows = vec![session.prefill(&tokens, Logits::Last).unwrap().last().to_vec()];
            rows.extend(tokens[..8].iter().map(|&t| session.step(t).unwrap()));
            rows
        };
        let (want, got) = (run(&f32), run(&half));
        let worst = want
            .iter()
            .zip(&got)
            .map(|(a, b)| {
                let norm = |v: &mut dyn Iterator<Item = f32>| v.map(|x| x * x).sum::<f32>().sqrt();
                norm(&mut a.iter().zip(b).map(|(x, y)| x - y)) / norm(&mut a.iter().copied())
            })
            .fold(0f32, f32::max);
        eprintln!("{format:?}: relative logits error {worst:.2e}");
        (half.compute_dtype(), worst)
    }

    #[test]
    fn bf16_matrices_compute_in_bf16_within_2_percent() {
        let (dtype, error) = logits_error(GgmlType::BF16);
        assert_eq!(dtype, candle_core::DType::BF16);
        // Rounded activations, so not the f32 numbers; bf16 keeps 8 bits of mantissa.
        assert!(error > 0.0 && error < 2e-2, "relative logits error {error}");
    }

    #[test]
    fn f16_matrices_compute_in_f16_within_half_a_percent() {
        let (dtype, error) = logits_error(GgmlType::F16);
        assert_eq!(dtype, candle_core::DType::F16);
        assert!(error > 0.0 && error < 5e-3, "relative logits error {error}");
    }

    #[test]
    fn mixed_formats_compute_in_f32() {
        let config = synthetic::packed_config();
        let backend = make(&config, synthetic::packed_weights(&config, 4), Kernels::Ops);
        assert_eq!(backend.compute_dtype(), candle_core::DType::F32);
    }
}
