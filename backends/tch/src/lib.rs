//! `sieve-tch`: the libtorch backend of sieve, through `tch`.
//!
//! [`TchTensor`] implements the core's tensor trait on libtorch tensors and [`TchBackend`]
//! the backend contract ([`sieve_backend::Backend`]), one decoder block at a time, in
//! `f32`, on the CPU or on a CUDA device when libtorch has one. Build with
//! `cargo xtask setup-libtorch`, which assembles libtorch from PyPI wheels and tells the
//! build where it is.

mod backend;
mod error;
mod tensor;

pub use backend::{TchBackend, cuda_available, device};
pub use error::{Error, Result};
pub use tch::Device;
pub use tensor::TchTensor;
