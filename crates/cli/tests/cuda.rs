//! candle on CUDA (the `cuda` feature; `cargo xtask build-cuda`, CI runs it with stub CUDA
//! libraries): the conformance suite and the core's tensor cases on the GPU, a synthetic
//! model decoded on the GPU and on the CPU, and the `sieve` binary on the GPU. Without a
//! GPU each test says that it skipped and checks that asking for one is a clear error.
//!
//! Every CUDA test lives in this one binary, in the crate whose build is the shipped one:
//! each test binary of a `cuda` build embeds candle's kernels (about 48 MB), and a second
//! crate's test would build them again under other features.
#![cfg(feature = "cuda")]

mod common;

use common::{TempPath, sieve, stderr_of};
use sieve_backend::{ModelConfig, Weights, synthetic};
use sieve_candle::{CandleBackend, CandleDevice};
use sieve_engine::{Logits, Policy, Session};

/// Whether a CUDA device is there; without one, checks the error and says the test skipped.
fn gpu(test: &str) -> bool {
    match CandleDevice::Cuda(0).open() {
        Ok(_) => true,
        Err(e) => {
            let message = e.to_string();
            assert!(message.starts_with("no CUDA device 0 here: "), "unclear error: {message}");
            assert!(!message.contains("backtrace") && !message.contains(" 0: "), "a backtrace in: {message}");
            eprintln!("{test}: skipped, no CUDA device here ({message})");
            false
        }
    }
}

fn on_gpu(config: &ModelConfig, weights: Weights) -> CandleBackend {
    CandleBackend::new(config, &weights, CandleDevice::Cuda(0)).expect("candle on CUDA")
}

/// The backend conformance cases and the core's tensor cases, on the GPU.
#[test]
fn conformance_on_cuda() {
    if !gpu("conformance_on_cuda") {
        return;
    }
    let failed: Vec<_> =
        sieve_eval::device::conformance::<CandleBackend>(&on_gpu).into_iter().filter(|c| !c.passed).collect();
    assert!(failed.is_empty(), "{failed:#?}");
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

/// `sieve generate` and `sieve device-check` on the GPU; without one, each fails with one
/// line that names the cause.
#[test]
fn the_binary_on_cuda() {
    let out_dir = TempPath::dir("device-check-cuda");
    let check = ["device-check", "--device", "cuda:0", "--check-policies", "none,snapkv", "--lengths", "256"];
    let runs = [
        sieve().args(["generate", "--device", "cuda:0", "-n", "4", "--raw", "The capital of France is"]).output(),
        sieve()
            .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
            .args(check)
            .args(["--decode-tokens", "4", "--out"])
            .arg(&out_dir.0)
            .output(),
    ];
    let present = gpu("the_binary_on_cuda");
    for out in runs {
        let out = out.unwrap();
        let err = stderr_of(&out);
        if present {
            assert!(out.status.success(), "{err}");
        } else {
            assert_eq!(out.status.code(), Some(1), "{err}");
            let last = err.trim().lines().last().unwrap_or_default();
            assert!(last.starts_with("error: ") && last.contains("no CUDA device 0 here"), "{err}");
            assert_eq!(err.lines().filter(|l| l.starts_with("error")).count(), 1, "{err}");
        }
    }
}
