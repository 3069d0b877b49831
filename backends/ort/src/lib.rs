//! `sieve-ort`: the ONNX Runtime backend of sieve, through `ort`.
//!
//! The decoder is written as ONNX graphs in Rust from the loaded weights (one graph per
//! layer, see [`layer`]) and run by ONNX Runtime, which [`load`] opens at run time from the
//! library path the caller gives (see [`runtime`]). [`OrtTensor`] implements
//! the core's tensor trait with one-operator graphs, so that scoring runs on ONNX Runtime
//! too, and [`OrtBackend`] the backend contract. The layer graphs return the
//! attention probabilities the scorers need as extra outputs, so pruning decisions follow
//! the same core rules as on the other backends.

mod backend;
mod embed;
mod error;
mod graph;
pub mod layer;
pub mod nbits;
mod onnx;
mod ops;
pub mod runtime;
mod tensor;

pub use backend::{OrtBackend, export_onnx};
pub use error::{Error, Result};
pub use runtime::{ORT_VERSION, OrtDevice, load};
pub use tensor::OrtTensor;
