//! `sieve-engine`: everything between a model file and generated text.
//!
//! - [`config`] and [`weights`]: Llama-family configuration and `f32` weights from GGUF or
//!   safetensors; [`model`] loads them with the tokenizer and chat template.
//! - [`tokenizer`] and [`template`]: text to ids and back; chat prompts.
//! - [`backend`]: the trait a runtime implements, one transformer block at a time.
//! - [`session`]: prefill and decode over a per-layer KV cache, with the pruning policy.
//! - [`generate`] and [`sampling`]: the generation loop.
//! - [`stats`]: what a run computed and cached, and how long it took.
//! - [`fetch`]: the default model in the cache.
//! - [`testing`]: a tiny synthetic GGUF model for tests and fuzzing.

pub mod backend;
pub mod config;
pub mod error;
pub mod eval;
pub mod export;
pub mod fetch;
pub mod generate;
mod gguf;
pub mod model;
pub mod passkey;
pub mod sampling;
pub mod session;
pub mod stats;
pub mod template;
pub mod testing;
pub mod tokenizer;
pub mod weights;

pub use backend::{Backend, LayerCache, LayerOutput, Probe};
pub use error::{Error, Result};
pub use generate::{GenerateOptions, Generation, StopReason, generate};
pub use model::Model;
pub use sampling::SamplingParams;
pub use session::{Logits, Session};
pub use sieve_core::Policy;
