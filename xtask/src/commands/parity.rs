//! `cargo xtask parity [ARGS]` and `cargo xtask scoring-bench`, the commands that need all
//! three backends. `parity`: installs what the three backends need (the default model,
//! libtorch, ONNX Runtime), then runs the `sieve-parity` binary with ARGS
//! (`--backends candle,tch,ort`, `--model M`, `--json FILE`, ...; see its `--help`).

use anyhow::Result;

pub fn run(args: &[String]) -> Result<()> {
    super::fetch::run()?;
    super::libtorch::setup()?;
    super::onnxruntime::setup()?;
    let mut cargo_args = vec!["run", "--release", "--locked", "-q", "-p", "sieve-parity", "--features", "tch", "--"];
    cargo_args.extend(args.iter().map(String::as_str));
    super::cargo(&cargo_args)
}

/// `cargo xtask scoring-bench`: the criterion benchmark of scoring + selection, which needs
/// all three backends.
pub fn scoring_bench() -> Result<()> {
    super::fetch::run()?;
    super::libtorch::setup()?;
    super::onnxruntime::setup()?;
    super::cargo(&["bench", "--locked", "-p", "sieve-benches", "--features", "tch", "--bench", "scoring"])
}
