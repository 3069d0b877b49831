//! The one error type of `sieve-runtime`: each backend's own error, kept as it is.

use crate::kind::BackendKind;

/// Errors of choosing and running a backend.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A backend this build does not contain.
    #[error("backend `{kind}` is not compiled into this build ({hint})")]
    NotCompiled { kind: BackendKind, hint: &'static str },

    /// The candle backend failed.
    #[cfg(feature = "candle")]
    #[error(transparent)]
    Candle(#[from] sieve_candle::Error),

    /// The libtorch backend failed.
    #[cfg(feature = "tch")]
    #[error(transparent)]
    Tch(#[from] sieve_tch::Error),

    /// The ONNX Runtime backend failed.
    #[cfg(feature = "ort")]
    #[error(transparent)]
    Ort(#[from] sieve_ort::Error),

    /// A tensor-trait operation failed (also: tensors of two backends mixed in one call).
    #[error(transparent)]
    Core(#[from] sieve_core::Error),
}

/// Result with this crate's error.
pub type Result<T> = std::result::Result<T, Error>;
