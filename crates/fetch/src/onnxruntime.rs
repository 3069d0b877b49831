//! The ONNX Runtime shared library that the `ort` backend loads at run time, from the
//! `onnxruntime` wheel on PyPI.

use std::fs;
use std::path::PathBuf;

use crate::error::{Error, Result};
use crate::pypi;

/// The ONNX Runtime release sieve is built and tested against.
pub const VERSION: &str = "1.31.1";

/// Where [`install`] puts the library: `<cache>/onnxruntime-<version>/lib`.
pub fn install_dir() -> PathBuf {
    crate::cache_dir().join(format!("onnxruntime-{VERSION}"))
}

/// The library to load: `$SIEVE_ORT_LIB`, else `$ORT_DYLIB_PATH`, else the installed copy.
pub fn library_path() -> PathBuf {
    for var in ["SIEVE_ORT_LIB", "ORT_DYLIB_PATH"] {
        if let Some(p) = std::env::var_os(var).filter(|p| !p.is_empty()) {
            return PathBuf::from(p);
        }
    }
    install_dir().join("lib").join(format!("libonnxruntime.so.{VERSION}"))
}

/// The command that installs the library, for messages.
pub const INSTALL_COMMAND: &str = "cargo xtask setup-ort";

/// Installs the library from its wheel unless it is there; returns its path. `log`
/// receives progress lines.
pub fn install(log: &mut dyn FnMut(&str)) -> Result<PathBuf> {
    let dir = install_dir();
    let lib = dir.join("lib").join(format!("libonnxruntime.so.{VERSION}"));
    if lib.is_file() {
        log(&format!("ONNX Runtime {VERSION} already there: {}", lib.display()));
        return Ok(lib);
    }
    let wheels = pypi::download(&[&format!("onnxruntime=={VERSION}")])?;
    let staging = dir.with_extension("partial");
    let _ = fs::remove_dir_all(&staging);
    let member = format!("onnxruntime/capi/libonnxruntime.so.{VERSION}");
    let wheel = pypi::find_wheel(&wheels, &format!("onnxruntime-{VERSION}-"))?;
    let found = pypi::extract(&wheel, &staging.join("lib"), &|name| {
        (name == member).then(|| format!("libonnxruntime.so.{VERSION}"))
    })?;
    if found != 1 {
        return Err(Error::Wheel { path: wheel, detail: format!("no member {member}") });
    }
    let _ = fs::remove_dir_all(&dir);
    fs::rename(&staging, &dir).map_err(|e| Error::io(&dir, e))?;
    log(&format!("ONNX Runtime {VERSION} ready: {}", lib.display()));
    Ok(lib)
}
