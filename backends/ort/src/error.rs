//! The one error type of `sieve-ort`.

use std::path::PathBuf;

/// Errors of the ONNX Runtime backend.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An ONNX Runtime call failed; `what` names the graph or operation.
    #[error("ONNX Runtime, {what}: {source}")]
    Ort {
        what: String,
        #[source]
        source: ort::Error,
    },

    /// The library is not where it was looked for.
    #[error(
        "the ONNX Runtime library is not installed: {} does not exist; run `{install}` (or point SIEVE_ORT_LIB at a libonnxruntime.so {version})",
        path.display()
    )]
    LibraryMissing { path: PathBuf, install: &'static str, version: &'static str },

    /// The library exists but could not be loaded or started (the first attempt's message;
    /// the library is loaded once per process).
    #[error("could not load ONNX Runtime from {}: {message}", path.display())]
    Load { path: PathBuf, message: String },

    /// An operation needed ONNX Runtime before [`crate::load`] loaded it.
    #[error("ONNX Runtime is not loaded (call sieve_ort::load with the library's path first)")]
    NotLoaded,

    /// The CUDA execution provider could not be registered.
    #[error("{what}: the CUDA execution provider is not available ({source}); it needs the onnxruntime-gpu library")]
    Cuda {
        what: String,
        #[source]
        source: ort::Error,
    },

    /// A graph did not produce an output it declares.
    #[error("{what}: no output `{output}`")]
    MissingOutput { what: String, output: String },

    /// The weights or configuration do not fit together.
    #[error(transparent)]
    Contract(#[from] sieve_backend::Error),

    /// The model file could not be read where the backend reads its embedding rows.
    #[error("reading embedding rows from {}: {source} (the model file must stay as it was while sieve runs)", path.display())]
    ModelFile {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A tensor-trait operation failed.
    #[error(transparent)]
    Core(#[from] sieve_core::Error),
}

impl Error {
    /// An ONNX Runtime error during `what`.
    pub(crate) fn ort(what: impl Into<String>) -> impl FnOnce(ort::Error) -> Error {
        let what = what.into();
        move |source| Error::Ort { what, source }
    }
}

/// Result with this crate's error.
pub type Result<T> = std::result::Result<T, Error>;
