//! `sieve-runtime`: the backends compiled into this build, behind one type.
//!
//! [`Runtime`] holds one loaded backend — candle, tch or ort, whichever Cargo features
//! compiled in — and is itself a [`sieve_backend::Backend`] whose tensors
//! ([`RuntimeTensor`]) dispatch to that backend's. So the CLI, the parity suite and the
//! benchmarks choose a backend at run time ([`BackendKind`], parsed from `--backend`) and
//! then run sessions, evaluations and comparisons generically, without wiring each
//! backend by hand. Every dispatch is an exhaustive `match` over the compiled-in variants:
//! adding a backend fails to compile until it is wired here.

mod backend;
mod error;
mod kind;
mod tensor;

pub use backend::Runtime;
pub use error::{Error, Result};
pub use kind::BackendKind;
pub use tensor::{RuntimeDevice, RuntimeTensor};
