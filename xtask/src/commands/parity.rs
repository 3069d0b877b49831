//! `cargo xtask parity [ARGS]`: installs what the three backends need (the default model,
//! libtorch, ONNX Runtime), then runs the `sieve-parity` binary with ARGS
//! (`--backends candle,tch,ort`, `--model M`, `--json FILE`, ...; see its `--help`).

use anyhow::Result;

pub fn run(args: &[String]) -> Result<()> {
    super::fetch::run()?;
    super::libtorch::setup()?;
    super::onnxruntime::setup()?;
    let mut cargo_args = vec!["run", "--release", "--locked", "-q", "-p", "sieve-parity", "--"];
    cargo_args.extend(args.iter().map(String::as_str));
    super::cargo(&cargo_args)
}
