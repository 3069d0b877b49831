//! `cargo xtask setup-ort`: the ONNX Runtime shared library from the `onnxruntime` wheel
//! on PyPI, extracted into the cache where sieve looks for it, idempotently.

use std::fs;
use std::path::PathBuf;

use anyhow::{Result, bail};
use sieve_ort::runtime::{ORT_VERSION, install_dir};

use super::wheels::{extract, pip_download, wheel};

/// Installs the library unless it is there; returns its path.
pub fn setup() -> Result<PathBuf> {
    let dir = install_dir();
    let lib = dir.join("lib").join(format!("libonnxruntime.so.{ORT_VERSION}"));
    if lib.is_file() {
        eprintln!("ONNX Runtime {ORT_VERSION} already there: {}", lib.display());
        return Ok(lib);
    }
    let spec = format!("onnxruntime=={ORT_VERSION}");
    let wheels = pip_download(&[spec.as_str()])?;
    let staging = dir.with_extension("partial");
    let _ = fs::remove_dir_all(&staging);
    fs::create_dir_all(staging.join("lib"))?;
    let member = format!("onnxruntime/capi/libonnxruntime.so.{ORT_VERSION}");
    let found = extract(&wheel(&wheels, &format!("onnxruntime-{ORT_VERSION}-"))?, &staging.join("lib"), &|name| {
        (name == member).then(|| format!("libonnxruntime.so.{ORT_VERSION}"))
    })?;
    if found != 1 {
        bail!("{member} not found in the onnxruntime wheel");
    }
    let _ = fs::remove_dir_all(&dir);
    fs::rename(&staging, &dir)?;
    eprintln!("ONNX Runtime {ORT_VERSION} ready: {}", lib.display());
    Ok(lib)
}

pub fn run() -> Result<()> {
    let lib = setup()?;
    println!("{}", lib.display());
    Ok(())
}
