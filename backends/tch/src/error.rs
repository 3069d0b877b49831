//! The one error type of `sieve-tch`.

/// Errors of the libtorch backend.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A libtorch operation failed.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),

    /// A CUDA device libtorch does not see.
    #[error("libtorch sees no CUDA device {0}")]
    NoCuda(usize),

    /// The weights or configuration do not fit together.
    #[error(transparent)]
    Contract(#[from] sieve_backend::Error),

    /// A tensor-trait operation failed.
    #[error(transparent)]
    Core(#[from] sieve_core::Error),
}

/// Result with this crate's error.
pub type Result<T> = std::result::Result<T, Error>;
