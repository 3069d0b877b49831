//! `sieve-backend`: what a runtime implements to run sieve, and nothing else.
//!
//! A backend crate (candle, tch, ort) depends on this crate and on `sieve-core` only:
//!
//! - [`Backend`]: a Llama-family decoder one transformer block at a time, with the
//!   attention [`Probe`]s the pruning scorers read, over a per-layer [`LayerCache`];
//! - [`ModelConfig`] and [`Weights`]: the shape of the network and its weights in host
//!   memory, in one layout (matrices `[out, in]`, rotary pairs half-split);
//! - [`DeviceSpec`]: the device a user names (`cpu`, `cuda:N`), which each backend turns
//!   into its own device type with `From`;
//! - [`reference::HostBackend`]: a plain, slow, obviously correct backend on the core's host
//!   tensors, which the engine's tests run on and every backend is compared with;
//! - [`conformance`]: that comparison, written once and instantiated in each backend crate
//!   with [`backend_conformance!`], one test per case.

pub mod backend;
pub mod cache;
pub mod config;
pub mod conformance;
pub mod device;
pub mod error;
pub mod mask;
pub mod quant;
pub mod reference;
pub mod synthetic;
pub mod weights;

pub use backend::{Backend, BackendDevice, BackendTensor, LayerCall, LayerOutput, Probe, check_batch};
pub use cache::LayerCache;
pub use config::{Activation, Architecture, BlockStyle, Llama3RopeScaling, ModelConfig, SlidingWindow, rope_rows};
pub use device::DeviceSpec;
pub use error::{BackendFailure, Error, Result};
pub use quant::{GgmlType, Packed};
pub use weights::{Block, HostWeight, LayerWeights, Weights};

/// The pruning core, re-exported for the conformance macros.
pub use sieve_core;
