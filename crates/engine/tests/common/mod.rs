//! The synthetic model the session tests share: 24 layers on the reference backend, no
//! model file, no runtime library.

use std::sync::OnceLock;

use sieve_backend::reference::HostBackend;
use sieve_backend::{ModelConfig, synthetic};
use sieve_core::rng::SplitMix64;

pub const LAYERS: usize = 24;

pub fn config() -> ModelConfig {
    ModelConfig { n_layers: LAYERS, context: 1024, ..synthetic::tiny_config() }
}

pub fn backend() -> &'static HostBackend {
    static BACKEND: OnceLock<HostBackend> = OnceLock::new();
    BACKEND.get_or_init(|| HostBackend::new(&config(), synthetic::weights(&config(), 11, false)).unwrap())
}

/// `n` pseudo-random token ids from `seed`.
pub fn tokens_from(seed: u64, n: usize) -> Vec<u32> {
    let mut rng = SplitMix64::new(seed);
    (0..n).map(|_| (rng.next_u64() % 64) as u32).collect()
}
