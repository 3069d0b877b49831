//! The server's one error type, answered as an OpenAI-style error body.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// What can go wrong with a request or with the server.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// A malformed request, or a field with a value the server cannot honour; `param`
    /// names the field (as a JSON path).
    #[error("{message}")]
    Invalid { message: String, param: Option<String> },

    /// The request names a model this server does not serve.
    #[error("the model `{0}` does not exist on this server")]
    UnknownModel(String),

    /// The request queue is full.
    #[error("the server is busy ({0} requests are waiting); retry later")]
    Busy(usize),

    /// No such route.
    #[error("no route {0}")]
    NotFound(String),

    /// The server is shutting down.
    #[error("the server is shutting down")]
    ShuttingDown,

    /// The engine failed while computing the request.
    #[error("the engine failed: {0}")]
    Engine(String),

    /// The server could not start (model, backend, address).
    #[error("{0}")]
    Startup(String),
}

/// The server's result type.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// An invalid value of `param`.
    pub fn invalid(param: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Invalid { message: message.into(), param: Some(param.into()) }
    }

    /// The HTTP status of the error.
    pub fn status(&self) -> StatusCode {
        match self {
            Error::Invalid { .. } => StatusCode::BAD_REQUEST,
            Error::UnknownModel(_) | Error::NotFound(_) => StatusCode::NOT_FOUND,
            Error::Busy(_) => StatusCode::TOO_MANY_REQUESTS,
            Error::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
            Error::Engine(_) | Error::Startup(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The OpenAI error type (`invalid_request_error`, ...).
    fn kind(&self) -> &'static str {
        match self {
            Error::Invalid { .. } | Error::UnknownModel(_) | Error::NotFound(_) => "invalid_request_error",
            Error::Busy(_) => "rate_limit_error",
            Error::ShuttingDown | Error::Engine(_) | Error::Startup(_) => "server_error",
        }
    }

    /// The error as the body OpenAI clients parse.
    pub fn body(&self) -> serde_json::Value {
        let (param, code) = match self {
            Error::Invalid { param, .. } => (param.clone(), None),
            Error::UnknownModel(_) => (Some("model".to_string()), Some("model_not_found")),
            Error::Busy(_) => (None, Some("queue_full")),
            _ => (None, None),
        };
        json!({"error": {"message": self.to_string(), "type": self.kind(), "param": param, "code": code}})
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        (self.status(), Json(self.body())).into_response()
    }
}

impl From<sieve_engine::Error> for Error {
    fn from(e: sieve_engine::Error) -> Self {
        Error::Engine(e.to_string())
    }
}
