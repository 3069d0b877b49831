//! Small synthetic models for tests: a valid configuration and deterministic random
//! weights, so that backends and the engine can be tested without a model file.

use sieve_core::rng::SplitMix64;

use crate::config::{Architecture, Llama3RopeScaling, ModelConfig};
use crate::weights::{HostWeight, LayerWeights, Weights};

/// A tiny Llama: 2 layers, hidden 32, 4 query heads over 2 KV heads of dim 8, MLP 48,
/// vocabulary 64, context 256.
pub fn tiny_config() -> ModelConfig {
    ModelConfig {
        arch: Architecture::Llama,
        n_layers: 2,
        n_heads: 4,
        n_kv_heads: 2,
        hidden: 32,
        ffn: 48,
        head_dim: 8,
        vocab: 64,
        rope_theta: 10_000.0,
        rope_scaling: None,
        rms_eps: 1e-5,
        context: 256,
        qkv_bias: false,
    }
}

/// [`tiny_config`] with q/k/v biases (Qwen2's block) and Llama-3 rotary scaling, to cover
/// the optional parts of the block.
pub fn tiny_config_with_options() -> ModelConfig {
    ModelConfig {
        arch: Architecture::Qwen2,
        qkv_bias: true,
        rope_scaling: Some(Llama3RopeScaling {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 64,
        }),
        ..tiny_config()
    }
}

fn matrix(rng: &mut SplitMix64, rows: usize, cols: usize) -> HostWeight {
    // Uniform in [-1, 1] scaled by 1/sqrt(fan-in) (times sqrt(3) for unit variance), so
    // that activations keep their size through the layers.
    let scale = (3.0 / cols as f32).sqrt();
    let data = (0..rows * cols).map(|_| (rng.next_f32() * 2.0 - 1.0) * scale).collect();
    HostWeight { data, shape: vec![rows, cols] }
}

fn vector(rng: &mut SplitMix64, n: usize, around: f32, spread: f32) -> HostWeight {
    let data = (0..n).map(|_| around + (rng.next_f32() * 2.0 - 1.0) * spread).collect();
    HostWeight { data, shape: vec![n] }
}

/// Deterministic random weights for `config`; the same seed gives the same weights.
/// The LM head is tied to the embedding unless `untied`.
pub fn weights(config: &ModelConfig, seed: u64, untied: bool) -> Weights {
    let c = config;
    let mut rng = SplitMix64::new(seed);
    let (q_out, kv_out) = (c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim);
    let embed = {
        let data = (0..c.vocab * c.hidden).map(|_| rng.next_f32() * 2.0 - 1.0).collect();
        HostWeight { data, shape: vec![c.vocab, c.hidden] }
    };
    let layers = (0..c.n_layers)
        .map(|_| LayerWeights {
            attn_norm: vector(&mut rng, c.hidden, 1.0, 0.2),
            q: matrix(&mut rng, q_out, c.hidden),
            k: matrix(&mut rng, kv_out, c.hidden),
            v: matrix(&mut rng, kv_out, c.hidden),
            qkv_bias: c.qkv_bias.then(|| {
                [
                    vector(&mut rng, q_out, 0.0, 0.5),
                    vector(&mut rng, kv_out, 0.0, 0.5),
                    vector(&mut rng, kv_out, 0.0, 0.5),
                ]
            }),
            o: matrix(&mut rng, c.hidden, q_out),
            ffn_norm: vector(&mut rng, c.hidden, 1.0, 0.2),
            gate: matrix(&mut rng, c.ffn, c.hidden),
            up: matrix(&mut rng, c.ffn, c.hidden),
            down: matrix(&mut rng, c.hidden, c.ffn),
        })
        .collect();
    let norm = vector(&mut rng, c.hidden, 1.0, 0.2);
    let lm_head = untied.then(|| matrix(&mut rng, c.vocab, c.hidden));
    Weights { embed, layers, norm, lm_head }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synthetic_models_are_valid_and_deterministic() {
        for config in [tiny_config(), tiny_config_with_options()] {
            config.validate().unwrap();
            let w = weights(&config, 7, true);
            w.check(&config).unwrap();
            assert_eq!(w.layers[1].down.data, weights(&config, 7, true).layers[1].down.data);
            assert_ne!(w.layers[1].down.data, weights(&config, 8, true).layers[1].down.data);
        }
    }
}
