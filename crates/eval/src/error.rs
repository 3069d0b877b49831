//! The one error type of `sieve-eval`.

/// Errors of an evaluation: a bad setting, too little text, or the engine failing.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A setting out of range or inconsistent (named as in the options struct).
    #[error("{0}")]
    Invalid(String),

    /// The text is too short for what was asked.
    #[error("the text holds only {available} tokens, fewer than the {needed} needed")]
    TooShort { available: usize, needed: usize },

    /// Drawing a plot failed.
    #[error("drawing the plot `{title}`: {detail}")]
    Plot { title: String, detail: String },

    /// The engine (model, session, backend) failed; `what` says during which step.
    #[error("{what}: {source}")]
    Engine {
        what: String,
        #[source]
        source: Box<sieve_engine::Error>,
    },
}

impl From<sieve_engine::Error> for Error {
    fn from(source: sieve_engine::Error) -> Self {
        Error::Engine { what: "engine".into(), source: Box::new(source) }
    }
}

impl From<sieve_core::Error> for Error {
    fn from(source: sieve_core::Error) -> Self {
        Error::Engine { what: "pruning core".into(), source: Box::new(source.into()) }
    }
}

/// Adds what was being done to an engine error.
pub trait Context<T> {
    /// The error with `what` in front.
    fn during(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T> Context<T> for std::result::Result<T, sieve_engine::Error> {
    fn during(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| Error::Engine { what: what(), source: Box::new(source) })
    }
}

/// Result with this crate's error.
pub type Result<T> = std::result::Result<T, Error>;
