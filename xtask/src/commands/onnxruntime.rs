//! `cargo xtask setup-ort`: the ONNX Runtime shared library from the `onnxruntime` wheel
//! on PyPI, extracted into the cache where sieve looks for it, idempotently.

use std::path::PathBuf;

use anyhow::Result;

/// Installs the library unless it is there; returns its path.
pub fn setup() -> Result<PathBuf> {
    Ok(sieve_fetch::onnxruntime::install(&mut |m| eprintln!("{m}"))?)
}

pub fn run() -> Result<()> {
    let lib = setup()?;
    println!("{}", lib.display());
    Ok(())
}
