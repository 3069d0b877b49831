//! Finding and loading the ONNX Runtime library, once per process, and creating sessions.
//!
//! sieve links no ONNX Runtime at build time (`ort`'s `load-dynamic`): the shared library is
//! loaded on first use from, in order, `$SIEVE_ORT_LIB`, `$ORT_DYLIB_PATH`, or the copy that
//! `cargo xtask setup-ort` extracts from the `onnxruntime` wheel into the cache. A missing
//! library is an [`Error`] naming the path and the command that installs it; nothing in
//! this crate calls into `ort` before [`environment`] has loaded it.

use std::path::PathBuf;
use std::sync::OnceLock;

use ort::environment::Environment;
use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use sieve_engine::{Error, Result};

/// The ONNX Runtime release sieve is built and tested against (its PyPI wheel).
pub const ORT_VERSION: &str = "1.31.1";

/// Where `cargo xtask setup-ort` puts the library: `<sieve cache>/onnxruntime-<version>/lib`.
pub fn install_dir() -> PathBuf {
    sieve_engine::fetch::cache_dir().join(format!("onnxruntime-{ORT_VERSION}"))
}

/// The library file sieve loads (see the module docs for the order of the places tried).
pub fn library_path() -> PathBuf {
    for var in ["SIEVE_ORT_LIB", "ORT_DYLIB_PATH"] {
        if let Some(p) = std::env::var_os(var).filter(|p| !p.is_empty()) {
            return PathBuf::from(p);
        }
    }
    install_dir().join("lib").join(format!("libonnxruntime.so.{ORT_VERSION}"))
}

/// An ONNX Runtime failure, as text (`ort`'s errors are not `Sync`).
#[derive(Debug, Clone)]
pub struct Failure(pub String);

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Failure {}

pub(crate) fn ort_err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::backend("ort", Failure(format!("{what}: {e}")))
}

fn load() -> std::result::Result<Environment, String> {
    let path = library_path();
    if !path.is_file() {
        return Err(format!(
            "the ONNX Runtime library is not installed: {} does not exist; run `cargo xtask setup-ort` \
             (or point SIEVE_ORT_LIB at a libonnxruntime.so {ORT_VERSION})",
            path.display()
        ));
    }
    let builder =
        ort::init_from(&path).map_err(|e| format!("could not load ONNX Runtime from {}: {e}", path.display()))?;
    builder.with_name("sieve").build().map_err(|e| format!("could not start ONNX Runtime: {e}"))
}

/// The process's ONNX Runtime environment, loading the library on first use.
pub fn environment() -> Result<&'static Environment> {
    static ENV: OnceLock<std::result::Result<Environment, String>> = OnceLock::new();
    ENV.get_or_init(load).as_ref().map_err(|e| Error::backend("ort", Failure(e.clone())))
}

/// Whether the ONNX Runtime library can be loaded (it is loaded if so).
pub fn available() -> bool {
    environment().is_ok()
}

/// Where a session runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum OrtDevice {
    /// ONNX Runtime's CPU execution provider.
    #[default]
    Cpu,
    /// The CUDA execution provider on this device (needs the `onnxruntime-gpu` library).
    Cuda(usize),
}

/// Intra-op threads: the machine's cores (`SIEVE_THREADS` overrides).
fn threads() -> usize {
    std::env::var("SIEVE_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// A session for the serialized model `bytes` on `device`.
pub fn session(bytes: &[u8], device: OrtDevice, what: &str) -> Result<Session> {
    let env = environment()?;
    let e = |err: ort::Error| ort_err(what, err);
    let mut builder = Session::builder(env)
        .map_err(e)?
        .with_optimization_level(GraphOptimizationLevel::All)
        .map_err(|err| ort_err(what, err))?
        .with_intra_threads(threads())
        .map_err(|err| ort_err(what, err))?
        // Busy-waiting threads steal the cores that the next op needs on a small machine.
        .with_intra_op_spinning(false)
        .map_err(|err| ort_err(what, err))?;
    if let OrtDevice::Cuda(n) = device {
        let cuda = ort::ep::CUDA::default().with_device_id(n as i32).build().error_on_failure();
        builder = builder.with_execution_providers([cuda]).map_err(|err| {
            ort_err(
                what,
                format!("the CUDA execution provider is not available ({err}); it needs the onnxruntime-gpu library"),
            )
        })?;
    }
    builder.commit_from_memory(bytes).map_err(|err| ort_err(what, err))
}
