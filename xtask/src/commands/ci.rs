//! `cargo xtask ci`: the checks CI runs, cheapest first, stopping at the first failure.
//! It installs what the tests need first: the default model, libtorch and the ONNX Runtime
//! library (all from PyPI); the CUDA compiler (PyPI too) comes just before the `cuda` build.
//!
//! Fuzzing is not part of it: its instrumented build alone took 11 of CI's minutes on 2
//! cores. `cargo xtask fuzz` runs it; the GGUF reader's and the policy parser's bad inputs
//! are tests of their own (`gguf_hardening`, `policy`), which CI runs.

use super::cargo;

pub fn run() -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    cargo(&["fmt", "--all", "--", "--check"])?;
    super::fetch::run()?;
    super::libtorch::setup()?;
    super::onnxruntime::setup()?;
    // In the release profile, so that the build scripts and procedural macros it compiles
    // are the ones the release builds below use.
    cargo(&["clippy", "--release", "--workspace", "--all-targets", "--locked", "--", "-D", "warnings"])?;
    let cli_tch = ["clippy", "--release", "-p", "sieve-cli", "--all-targets", "--features", "tch", "--locked"];
    cargo(&[&cli_tch[..], &["--", "-D", "warnings"]].concat())?;
    let tch_tools =
        ["--release", "-p", "sieve-parity", "-p", "sieve-benches", "--all-targets", "--features", "tch", "--locked"];
    cargo(&[&["clippy"][..], &tch_tools, &["--", "-D", "warnings"]].concat())?;
    // sieve-tch (the CLI with libtorch), which `sieve --backend tch` runs, and the parity
    // tool with libtorch; the tch tests must not be skipped here.
    super::libtorch::build()?;
    // `--tests`: every target with tests (libraries, integration tests), not the doc tests
    // (there are none; rustdoc would still take half a minute to find that out) nor the
    // examples (clippy checked them above).
    super::cargo_with(&["test", "--workspace", "--locked", "--release", "--tests"], &[("SIEVE_REQUIRE_TCH", "1")])?;
    // The three backends against each other; the table goes to the log.
    super::parity::run_built(&[])?;
    // And with bf16 matrices, where libtorch's products run in bf16 (their own bounds): two
    // prompts and two policies, a minute.
    super::parity::run_built(&["--dtype", "bf16", "--prompts", "chat,passkey", "--policies", "none,snapkv@"])?;
    // candle's `cuda` feature: nvcc from PyPI, stub CUDA libraries, the build and its tests
    // (which skip, saying so: CI has no GPU).
    super::cuda::test()?;
    eprintln!("\nxtask ci: all checks passed in {:.1} min", started.elapsed().as_secs_f64() / 60.0);
    Ok(())
}
