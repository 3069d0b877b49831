//! The one error type of `sieve-core`.

use std::fmt;

/// Errors raised by the pruning core and by tensor backends running its operations.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A tensor operation got a shape it cannot work with.
    #[error("{op}: shape mismatch: {detail}")]
    Shape { op: &'static str, detail: String },

    /// A dimension index past the tensor's rank.
    #[error("{op}: dimension {dim} out of range for a tensor of rank {rank}")]
    Dim { op: &'static str, dim: usize, rank: usize },

    /// An index past the end of a dimension.
    #[error("{op}: index {index} out of range for dimension of size {size}")]
    Index { op: &'static str, index: usize, size: usize },

    /// A score that is NaN or infinite reached selection.
    #[error("non-finite score {value} at token {index}")]
    NonFiniteScore { index: usize, value: f32 },

    /// A scorer was given an observation without the data it needs.
    #[error("scorer `{scorer}` needs {what}, which the observation does not carry")]
    MissingInput { scorer: &'static str, what: &'static str },

    /// A value outside its allowed range; `key` names the setting as written in a policy file.
    #[error("`{key}` = {value} is out of range: {allowed}")]
    OutOfRange { key: String, value: String, allowed: String },

    /// A policy that is well-formed but inconsistent.
    #[error("invalid policy: {0}")]
    InvalidPolicy(String),

    /// A policy file that is not valid TOML, or has unknown keys or wrong types.
    #[error("policy file: {0}")]
    Toml(#[from] toml::de::Error),

    /// A policy that could not be written as TOML.
    #[error("policy serialisation: {0}")]
    TomlWrite(#[from] toml::ser::Error),

    /// An error from a tensor runtime, kept with its source.
    #[error("{op}: backend error: {source}")]
    Backend {
        op: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl Error {
    /// Wraps a runtime's error with the name of the operation that failed.
    pub fn backend<E>(op: &'static str, source: E) -> Self
    where
        E: std::error::Error + Send + Sync + 'static,
    {
        Error::Backend { op, source: Box::new(source) }
    }

    pub(crate) fn out_of_range(key: impl Into<String>, value: impl fmt::Display, allowed: impl Into<String>) -> Self {
        Error::OutOfRange { key: key.into(), value: value.to_string(), allowed: allowed.into() }
    }
}

/// Result with the core's error.
pub type Result<T> = std::result::Result<T, Error>;
