//! `cargo xtask parity [ARGS]`, `cargo xtask scoring-bench` and `cargo xtask peers`, the
//! commands that need all three backends. `parity`: installs what the three backends need (the default model,
//! libtorch, ONNX Runtime), then runs the `sieve-parity` binary with ARGS
//! (`--backends candle,tch,ort`, `--model M`, `--json FILE`, ...; see its `--help`).

use anyhow::{Result, bail};

pub fn run(args: &[String]) -> Result<()> {
    super::fetch::run()?;
    super::libtorch::setup()?;
    super::onnxruntime::setup()?;
    let mut cargo_args = vec!["run", "--release", "--locked", "-q", "-p", "sieve-parity", "--features", "tch", "--"];
    cargo_args.extend(args.iter().map(String::as_str));
    super::cargo(&cargo_args)
}

/// Runs `target/release/sieve-parity-tch`, written by `cargo xtask build-tch`, with ARGS:
/// the suite without a build of its own (CI builds it beside `sieve-tch`).
pub fn run_built(args: &[&str]) -> Result<()> {
    let bin = super::libtorch::parity_bin();
    if !bin.is_file() {
        bail!("{} is missing: `cargo xtask build-tch` builds it", bin.display());
    }
    let mut command = std::process::Command::new(&bin);
    command.args(args).current_dir(super::workspace_root());
    super::run_step(&format!("sieve-parity-tch {}", args.join(" ")), "sieve-parity-tch", &mut command)
}

/// `cargo xtask scoring-bench`: the criterion benchmark of scoring + selection, which needs
/// all three backends.
pub fn scoring_bench() -> Result<()> {
    super::fetch::run()?;
    super::libtorch::setup()?;
    super::onnxruntime::setup()?;
    super::cargo(&["bench", "--locked", "-p", "sieve-benches", "--features", "tch", "--bench", "scoring"])
}

/// `cargo xtask peers`: llama.cpp, libtorch and ONNX Runtime set up, then the `peers`
/// benchmark with all three backends and as many threads as the machine has cores.
pub fn peers(args: &[String]) -> Result<()> {
    let peer = super::llamacpp::setup()?;
    super::libtorch::setup()?;
    super::onnxruntime::setup()?;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).to_string();
    let (bin, model) = (peer.bin.display().to_string(), peer.f32_model.display().to_string());
    let mut cargo_args = vec!["run", "--release", "--locked", "-q", "-p", "sieve-benches", "--features", "tch"];
    cargo_args.extend(["--bin", "peers", "--", "--llama-bin", &bin, "--llama-model", &model, "--threads", &threads]);
    cargo_args.extend(args.iter().map(String::as_str));
    super::cargo_with(&cargo_args, &[("SIEVE_THREADS", &threads)])
}
