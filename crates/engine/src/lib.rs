//! `sieve-engine`: everything between a model file and generated text.
//!
//! - [`config`] and [`weights`]: Llama-family configuration and `f32` weights from GGUF or
//!   safetensors; [`model`] loads them with the tokenizer and chat template.
//! - [`tokenizer`] and [`template`]: text to ids and back; chat prompts.
//! - [`fetch`]: the default model in the cache.

pub mod config;
pub mod error;
pub mod fetch;
pub mod model;
pub mod template;
pub mod tokenizer;
pub mod weights;

pub use error::{Error, Result};
pub use model::Model;
