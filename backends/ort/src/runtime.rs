//! Loading the ONNX Runtime library, once per process, and creating sessions.
//!
//! sieve links no ONNX Runtime at build time (`ort`'s `load-dynamic`): [`load`] opens the
//! shared library whose path the caller gives (the CLI takes it from `sieve-fetch`, which
//! installs it from the `onnxruntime` wheel). A missing library is an [`Error`] naming the
//! path and the install command; nothing in this crate calls into `ort` before the library
//! is loaded.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ort::environment::Environment;
use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use sieve_backend::DeviceSpec;

use crate::error::{Error, Result};

/// The ONNX Runtime release sieve is built and tested against (its PyPI wheel).
pub const ORT_VERSION: &str = "1.31.1";

/// The command that installs the library, for messages.
const INSTALL: &str = "cargo xtask setup-ort";

static ENV: OnceLock<std::result::Result<Environment, (PathBuf, String)>> = OnceLock::new();

fn open(path: &Path) -> std::result::Result<Environment, (PathBuf, String)> {
    let fail = |m: String| (path.to_path_buf(), m);
    let builder = ort::init_from(path).map_err(|e| fail(e.to_string()))?;
    // One thread pool for every session, whose threads may spin between operators: a
    // decode step runs ~70 small operators per layer graph, and waking a sleeping pool at
    // each cost more than the operators (1.15x decode on the default model). One pool per
    // session could not spin: ~32 spinning pools made decoding 15x slower.
    let pool = ort::environment::GlobalThreadPoolOptions::default()
        .with_intra_threads(threads())
        .and_then(|p| p.with_spin_control(true))
        .map_err(|e| fail(e.to_string()))?;
    builder
        .with_name("sieve")
        .with_global_thread_pool(pool)
        .build()
        .map_err(|e| fail(format!("could not start it: {e}")))
}

/// Loads the library at `path` unless one is loaded already (the first successful or
/// failed load stays for the life of the process).
pub fn load(path: &Path) -> Result<&'static Environment> {
    if ENV.get().is_none() && !path.is_file() {
        return Err(Error::LibraryMissing { path: path.to_path_buf(), install: INSTALL, version: ORT_VERSION });
    }
    let env = ENV.get_or_init(|| open(path));
    env.as_ref().map_err(|(path, message)| Error::Load { path: path.clone(), message: message.clone() })
}

/// The loaded environment.
pub fn environment() -> Result<&'static Environment> {
    match ENV.get() {
        Some(Ok(env)) => Ok(env),
        Some(Err((path, message))) => Err(Error::Load { path: path.clone(), message: message.clone() }),
        None => Err(Error::NotLoaded),
    }
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

impl From<DeviceSpec> for OrtDevice {
    fn from(spec: DeviceSpec) -> Self {
        match spec {
            DeviceSpec::Cpu => OrtDevice::Cpu,
            DeviceSpec::Cuda(n) => OrtDevice::Cuda(n),
        }
    }
}

/// Intra-op threads of the shared pool: the machine's cores (`SIEVE_THREADS` overrides).
pub(crate) fn threads() -> usize {
    std::env::var("SIEVE_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// A session for the serialized model `bytes` on `device`; `what` names it in errors.
pub fn session(bytes: &[u8], device: OrtDevice, what: &str) -> Result<Session> {
    let env = environment()?;
    // Sessions run on the environment's one thread pool (see `open`), not their own.
    let mut builder = Session::builder(env)
        .map_err(Error::ort(what))?
        .with_optimization_level(GraphOptimizationLevel::All)
        .map_err(|e| Error::ort(what)(e.into()))?;
    // ONNX Runtime's own profiler, one JSON file per session (`PREFIX_layer_07.onnx_*.json`).
    if let Ok(prefix) = std::env::var("SIEVE_ORT_PROFILE") {
        builder = builder.with_profiling(format!("{prefix}_{what}")).map_err(|e| Error::ort(what)(e.into()))?;
    }
    if device == OrtDevice::Cpu {
        // No arena per session: each of the ~32 sessions would keep the largest
        // intermediates it ever held (a 2,500-token prefill left 15 GB resident).
        builder = builder
            .with_execution_providers([ort::ep::CPU::default().with_arena_allocator(false).build()])
            .map_err(|e| Error::ort(what)(e.into()))?
            .with_memory_pattern(false)
            .map_err(|e| Error::ort(what)(e.into()))?;
    }
    if let OrtDevice::Cuda(n) = device {
        let cuda = ort::ep::CUDA::default().with_device_id(n as i32).build().error_on_failure();
        builder = builder
            .with_execution_providers([cuda])
            .map_err(|e| Error::Cuda { what: what.to_string(), source: e.into() })?;
    }
    builder.commit_from_memory(bytes).map_err(Error::ort(what))
}
