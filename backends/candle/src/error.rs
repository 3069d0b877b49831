//! The one error type of `sieve-candle`.

/// Errors of the candle backend.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A candle operation failed.
    #[error("candle: {0}")]
    Candle(#[source] candle_core::Error),

    /// A CUDA device was asked for in a build without the `cuda` feature.
    #[error("candle was built without CUDA; rebuild sieve with the `cuda` feature on a machine with nvcc")]
    NoCuda,

    /// A `cuda` build found no usable CUDA device at that ordinal.
    #[error("no CUDA device {ordinal} here: {detail}")]
    NoDevice { ordinal: usize, detail: String },

    /// The weights or configuration do not fit together.
    #[error(transparent)]
    Contract(#[from] sieve_backend::Error),

    /// A tensor-trait operation failed.
    #[error(transparent)]
    Core(#[from] sieve_core::Error),
}

impl From<candle_core::Error> for Error {
    fn from(e: candle_core::Error) -> Self {
        Error::Candle(without_backtrace(e))
    }
}

/// `e` without the backtrace candle attaches when `RUST_BACKTRACE` is set (candle prints it
/// as part of the message, which would turn a one-line error into a page).
pub(crate) fn without_backtrace(mut e: candle_core::Error) -> candle_core::Error {
    while let candle_core::Error::WithBacktrace { inner, .. } = e {
        e = *inner;
    }
    e
}

/// Result with this crate's error.
pub type Result<T> = std::result::Result<T, Error>;
