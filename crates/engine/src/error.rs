//! The one error type of `sieve-engine`.

use std::path::{Path, PathBuf};

/// Errors from loading models, tokenizing, running backends and generating.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A GGUF file that candle could not read.
    #[error("{}: not a readable GGUF file: {source}", path.display())]
    Gguf {
        path: PathBuf,
        #[source]
        source: candle_core::Error,
    },

    /// A file that is not a GGUF file, or whose GGUF header is truncated or inconsistent
    /// (found by sieve's own checks, before candle reads it).
    #[error("{}: invalid GGUF file: {detail}", path.display())]
    InvalidGguf { path: PathBuf, detail: String },

    /// A safetensors file that could not be read.
    #[error("{}: {source}", path.display())]
    Safetensors {
        path: PathBuf,
        #[source]
        source: safetensors::SafeTensorError,
    },

    /// A model configuration that is missing a value or has a wrong one.
    #[error("{source_name}: {message}")]
    Config { source_name: String, message: String },

    /// An architecture sieve does not implement.
    #[error("unsupported architecture `{0}` (supported: {names})", names = sieve_backend::Architecture::NAMES)]
    UnsupportedArchitecture(String),

    /// A weight the architecture needs is absent.
    #[error("{source_name}: missing tensor `{name}`")]
    MissingTensor { source_name: String, name: String },

    /// A weight with the wrong shape.
    #[error("{source_name}: tensor `{name}` has shape {actual:?}, expected {expected:?}")]
    TensorShape { source_name: String, name: String, expected: Vec<usize>, actual: Vec<usize> },

    /// A weight stored in a type sieve cannot convert.
    #[error("{source_name}: tensor `{name}` has unsupported type {dtype}")]
    TensorType { source_name: String, name: String, dtype: String },

    /// The tokenizer could not be built or failed.
    #[error("tokenizer: {0}")]
    Tokenizer(#[source] Box<dyn std::error::Error + Send + Sync>),

    /// The chat template failed to parse or render.
    #[error("chat template: {0}")]
    Template(#[from] minijinja::Error),

    /// A prompt with no tokens.
    #[error("the prompt is empty")]
    EmptyPrompt,

    /// A prompt (plus what is already cached) longer than the model's context.
    #[error("the prompt needs {needed} positions but the model's context is {context} tokens")]
    ContextOverflow { needed: usize, context: usize },

    /// The model produced NaN or infinite logits; `position` is the index in the
    /// vocabulary of the first one.
    #[error(
        "the model produced a non-finite logit ({value}) for token id {position}; its weights may hold NaN or infinite values"
    )]
    NonFiniteLogits { position: usize, value: f32 },

    /// An invalid request (sampling settings, an unknown backend, ...).
    #[error("{0}")]
    Invalid(String),

    /// A token id that does not index the model's vocabulary.
    #[error("token id {id} is outside the vocabulary of {vocab}")]
    TokenId { id: u32, vocab: usize },

    /// A model without a chat template was asked to render a chat.
    #[error("{} has no chat template", path.display())]
    NoChatTemplate { path: PathBuf },

    /// The pruning core rejected something.
    #[error(transparent)]
    Core(#[from] sieve_core::Error),

    /// A backend failed; its own error is the source.
    #[error(transparent)]
    Backend(#[from] sieve_backend::BackendFailure),
}

impl Error {
    /// An I/O error on `path`.
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        Error::Io { path: path.to_path_buf(), source }
    }

    /// A configuration problem in `source_name`.
    pub fn config(source_name: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Config { source_name: source_name.into(), message: message.into() }
    }

    /// A GGUF error from candle, without the backtrace candle attaches when
    /// `RUST_BACKTRACE` is set (it would turn a one-line message into a page).
    pub fn gguf(path: &Path, source: candle_core::Error) -> Self {
        Error::Gguf { path: path.to_path_buf(), source: without_backtrace(source) }
    }

    /// An invalid GGUF file.
    pub fn invalid_gguf(path: &Path, detail: impl Into<String>) -> Self {
        Error::InvalidGguf { path: path.to_path_buf(), detail: detail.into() }
    }

    /// A backend's error.
    pub fn backend<E: std::error::Error + Send + Sync + 'static>(backend: &'static str, source: E) -> Self {
        Error::Backend(sieve_backend::BackendFailure::new(backend, source))
    }
}

/// `e` without the backtraces candle captures when `RUST_BACKTRACE` is set: candle prints
/// them as part of the error's message.
fn without_backtrace(e: candle_core::Error) -> candle_core::Error {
    match e {
        candle_core::Error::WithBacktrace { inner, .. } => without_backtrace(*inner),
        candle_core::Error::Context { inner, context } => {
            candle_core::Error::Context { inner: Box::new(without_backtrace(*inner)), context }
        }
        candle_core::Error::WithPath { inner, path } => {
            candle_core::Error::WithPath { inner: Box::new(without_backtrace(*inner)), path }
        }
        other => other,
    }
}

/// Result with the engine's error.
pub type Result<T> = std::result::Result<T, Error>;
