//! The one error type of `sieve-backend`.

/// Errors of the contract's own code: configuration checks, the reference backend and the
/// conformance suite. Each backend crate has its own error type (see
/// [`crate::Backend::Error`]).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A model configuration no backend can build.
    #[error("{0}")]
    Config(String),

    /// Weights that do not match the configuration.
    #[error("weight `{name}` has shape {actual:?}, expected {expected:?}")]
    WeightShape { name: String, expected: Vec<usize>, actual: Vec<usize> },

    /// An input outside what the engine guarantees (see [`crate::Backend`]).
    #[error("{0}")]
    Input(String),

    /// A device string that is not `cpu`, `cuda` or `cuda:N`.
    #[error("device `{0}` is not `cpu`, `cuda` or `cuda:N`")]
    Device(String),

    /// A backend disagrees with the reference (conformance suite).
    #[error("conformance: {case}: {detail}")]
    Mismatch { case: String, detail: String },

    /// A tensor operation of the core failed.
    #[error(transparent)]
    Core(#[from] sieve_core::Error),

    /// The backend under test failed (conformance suite).
    #[error(transparent)]
    Backend(#[from] BackendFailure),
}

/// A backend's own error, kept as the source, with the backend's name: how the engine and
/// the conformance suite report whatever [`crate::Backend::Error`] a backend returns.
#[derive(Debug, thiserror::Error)]
#[error("backend {backend}: {source}")]
pub struct BackendFailure {
    /// The backend's [`crate::Backend::name`].
    pub backend: &'static str,
    /// Its error.
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

impl BackendFailure {
    /// `source`, a failure of the backend named `backend`.
    pub fn new<E: std::error::Error + Send + Sync + 'static>(backend: &'static str, source: E) -> Self {
        Self { backend, source: Box::new(source) }
    }
}

/// Result with this crate's error.
pub type Result<T> = std::result::Result<T, Error>;
