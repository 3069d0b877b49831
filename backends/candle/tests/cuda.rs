//! candle on CUDA (the `cuda` feature): the backend conformance suite and the core's tensor
//! cases on the GPU, each against the host reference, and a synthetic model decoded on the GPU
//! and on the CPU. Without a GPU each test says that it skipped and checks that asking for
//! one is a clear error. Every CUDA test lives in this one binary: each test binary of a
//! `cuda` build embeds candle's kernels (about 48 MB).
#![cfg(feature = "cuda")]

use sieve_backend::{ModelConfig, Weights, conformance, synthetic};
use sieve_candle::{CandleBackend, CandleDevice, CandleTensor};
use sieve_engine::{Logits, Policy, Session};

/// Runs each case `module::case::<T>(arg)`, failing with the case's name.
macro_rules! cases {
    ($module:ident, $t:ty, $arg:expr; $($case:ident),+ $(,)?) => {
        $(
            $module::$case::<$t>($arg).unwrap_or_else(|e| panic!("{} on CUDA: {e}", stringify!($case)));
        )+
    };
}

/// Whether a CUDA device is there; without one, checks the error and says the test skipped.
fn gpu(test: &str) -> bool {
    match CandleDevice::Cuda(0).open() {
        Ok(_) => true,
        Err(e) => {
            let message = e.to_string();
            assert!(message.contains("CUDA") || message.contains("cuda"), "unclear error: {message}");
            eprintln!("{test}: skipped, no CUDA device here ({message})");
            false
        }
    }
}

fn on_gpu(config: &ModelConfig, weights: Weights) -> CandleBackend {
    CandleBackend::new(config, &weights, CandleDevice::Cuda(0)).expect("candle on CUDA")
}

#[test]
fn backend_conformance_on_cuda() {
    if !gpu("backend_conformance_on_cuda") {
        return;
    }
    cases!(conformance, CandleBackend, &on_gpu; embed, prefill, gapped_positions, decode_steps, probes,
        compacted_caches, per_head_caches, long_prefill, block_options, sliding_window, packed_weights);
}

#[test]
fn tensor_cases_on_cuda() {
    if !gpu("tensor_cases_on_cuda") {
        return;
    }
    use sieve_core::conformance as core;
    let device = CandleDevice::Cuda(0).open().expect("CUDA device");
    cases!(core, CandleTensor, &device; host_transfer, reductions, indexing, softmax_matmul, elementwise,
        pooling, top_k, scorer_last_query, scorer_snapkv, scorer_h2o, scorer_attention_free, aggregation);
}

/// A synthetic model (the default model's block at a small size) prefilled and decoded under
/// SnapKV eviction and a decode budget on the GPU and on the CPU: the same kept positions
/// and logits within 1e-3 (f32 on both, different summation orders).
#[test]
fn synthetic_model_on_cuda_matches_the_cpu() {
    if !gpu("synthetic_model_on_cuda_matches_the_cpu") {
        return;
    }
    let config = ModelConfig { context: 512, ..synthetic::tiny_config() };
    let weights = synthetic::weights(&config, 7, false);
    let cpu = CandleBackend::new(&config, &weights, CandleDevice::Cpu).unwrap();
    let cuda = on_gpu(&config, weights);
    let policy = Policy::from_toml(
        "[kv]\nkeep = 0.5\nsinks = 2\n[kv.scorer]\nkind = \"snapkv\"\nwindow = 8\n[decode]\nbudget = 48\nevery = 4\n[decode.scorer]\nkind = \"h2o\"\n",
    )
    .unwrap();
    let tokens: Vec<u32> = (0..80).map(|i| (i * 37 % 61) as u32).collect();
    let run = |backend: &CandleBackend| {
        let mut session = Session::new(backend, policy.clone()).unwrap();
        let mut rows = vec![session.prefill(&tokens, Logits::Last).unwrap().last().to_vec()];
        for &t in &tokens[..24] {
            rows.push(session.step(t).unwrap());
        }
        let kept: Vec<Vec<usize>> = session.caches().iter().map(|c| c.positions().to_vec()).collect();
        (rows, kept)
    };
    let ((want, kept_cpu), (got, kept_gpu)) = (run(&cpu), run(&cuda));
    assert_eq!(kept_cpu, kept_gpu, "kept positions");
    for (i, (a, b)) in want.iter().zip(&got).enumerate() {
        let diff = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
        assert!(diff < 1e-3, "row {i}: logits differ by {diff}");
    }
}
