//! `sieve-engine`: everything between a model file and generated text, on any backend.
//!
//! - [`config`] and [`weights`]: Llama-family configuration and weights read from GGUF or
//!   safetensors into the backend contract's types; [`model`] loads them with the
//!   tokenizer and chat template, [`export`] writes a model back as a Hugging Face folder.
//! - [`tokenizer`] and [`template`]: text to ids and back; chat prompts.
//! - [`session`]: prefill and decode over per-layer KV caches, with the pruning policy; the
//!   one place where inputs are checked before a backend sees them.
//! - [`generate`] and [`sampling`]: the generation loop.
//! - [`stats`]: what a run computed and cached, and how long it took.
//! - [`testing`]: a tiny synthetic GGUF file for tests and fuzzing.
//!
//! The engine runs on any [`Backend`] (see `sieve-backend`); its own tests run on the
//! reference backend with synthetic weights, so they need no model file and no runtime.

pub mod config;
pub mod error;
pub mod export;
pub mod generate;
mod gguf;
pub mod model;
pub mod sampling;
pub mod session;
mod spm;
pub mod stats;
pub mod template;
pub mod testing;
pub mod tokenizer;
pub mod weights;

pub use error::{Error, Result};
pub use generate::{GenerateOptions, Generation, StopReason, generate};
pub use model::Model;
pub use sampling::SamplingParams;
pub use session::{Logits, PrefillOutput, Session};
pub use sieve_backend::{Backend, BackendDevice, BackendTensor, LayerCache, LayerOutput, ModelConfig, Probe};
pub use sieve_core::Policy;
pub use weights::Dtype;
