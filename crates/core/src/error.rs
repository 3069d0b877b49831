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

    /// A policy file that is not valid TOML, or has unknown keys or wrong types. `line` and
    /// `column` (1-based, 0 when unknown) locate the error and `text` is that line. The
    /// parser's error is kept, but not as a source: its own message repeats the input over
    /// several lines, while this one is a single line.
    #[error("policy file{}: {}", location(*line, *column, text), error.message().trim().replace('\n', " "))]
    Toml { line: usize, column: usize, text: String, error: Box<toml::de::Error> },

    /// A tensor implementation disagrees with the reference (the conformance suite).
    #[error("conformance: {what}: {detail}")]
    Mismatch { what: String, detail: String },

    /// A policy file that could not be read.
    #[error("{}: {source}", path.display())]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A policy name that names nothing usable.
    #[error("policy `{spec}`: {detail}")]
    UnknownPolicy { spec: String, detail: String },

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

    /// A TOML error in `text`, located by line and column.
    pub(crate) fn toml(error: toml::de::Error, text: &str) -> Self {
        let Some(span) = error.span() else {
            return Error::Toml { line: 0, column: 0, text: String::new(), error: Box::new(error) };
        };
        let end = (0..=span.start.min(text.len())).rev().find(|&i| text.is_char_boundary(i)).unwrap_or(0);
        let line_start = text[..end].rfind('\n').map_or(0, |i| i + 1);
        let line_text = text[line_start..].lines().next().unwrap_or_default().trim();
        let shown: String = line_text.chars().take(80).collect();
        Error::Toml {
            line: text[..end].matches('\n').count() + 1,
            column: text[line_start..end].chars().count() + 1,
            text: if shown.len() < line_text.len() { format!("{shown}...") } else { shown },
            error: Box::new(error),
        }
    }

    pub(crate) fn out_of_range(key: impl Into<String>, value: impl fmt::Display, allowed: impl Into<String>) -> Self {
        Error::OutOfRange { key: key.into(), value: value.to_string(), allowed: allowed.into() }
    }
}

fn location(line: usize, column: usize, text: &str) -> String {
    if line == 0 { String::new() } else { format!(", line {line}, column {column} (`{text}`)") }
}

/// Result with the core's error.
pub type Result<T> = std::result::Result<T, Error>;
