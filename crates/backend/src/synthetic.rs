//! Small synthetic models for tests: a valid configuration and deterministic random
//! weights, so that backends and the engine can be tested without a model file.

use sieve_core::rng::SplitMix64;

use crate::config::{Architecture, Llama3RopeScaling, ModelConfig};
use crate::quant::{GgmlType, f32_to_f16, quantize};
use crate::weights::{Block, HostWeight, LayerWeights, Weights};

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
        style: Default::default(),
    }
}

/// The shapes of the default model, SmolLM2-135M: 30 layers, hidden 576, 9 query heads
/// over 3 KV heads of dim 64, MLP 1536, vocabulary 49152, context 8192, rotary base 100000.
/// With [`weights`] it stands in for the model where its file is not there (a GPU machine
/// without the network, in the device check).
pub fn smollm2_135m_config() -> ModelConfig {
    ModelConfig {
        n_layers: 30,
        n_heads: 9,
        n_kv_heads: 3,
        hidden: 576,
        ffn: 1536,
        head_dim: 64,
        vocab: 49152,
        rope_theta: 100_000.0,
        // As its files store it: an f32.
        rms_eps: f64::from(1e-5f32),
        context: 8192,
        ..tiny_config()
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

/// [`tiny_config`] with Gemma 3's block: q/k norms, post norms, GeGLU, scaled embeddings
/// and logits, and a sliding window of 6 positions on the first layer (the second global),
/// with its own rotary base.
pub fn tiny_gemma_config() -> ModelConfig {
    let mut style = crate::config::BlockStyle::gemma3(32, 2, 12.0, 6, 2, 100.0);
    style.embed_scale = 0.75;
    ModelConfig { arch: Architecture::Gemma3, rms_eps: 1e-6, style, ..tiny_config() }
}

fn matrix(rng: &mut SplitMix64, rows: usize, cols: usize) -> HostWeight {
    // Uniform in [-1, 1] scaled by 1/sqrt(fan-in) (times sqrt(3) for unit variance), so
    // that activations keep their size through the layers.
    let scale = (3.0 / cols as f32).sqrt();
    let data = (0..rows * cols).map(|_| (rng.next_f32() * 2.0 - 1.0) * scale).collect();
    HostWeight::f32(data, vec![rows, cols])
}

fn vector(rng: &mut SplitMix64, n: usize, around: f32, spread: f32) -> HostWeight {
    let data = (0..n).map(|_| around + (rng.next_f32() * 2.0 - 1.0) * spread).collect();
    HostWeight::f32(data, vec![n])
}

/// Deterministic random weights for `config`; the same seed gives the same weights.
/// The LM head is tied to the embedding unless `untied`.
pub fn weights(config: &ModelConfig, seed: u64, untied: bool) -> Weights {
    let c = config;
    let mut rng = SplitMix64::new(seed);
    let (q_out, kv_out) = (c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim);
    let embed = {
        let data = (0..c.vocab * c.hidden).map(|_| rng.next_f32() * 2.0 - 1.0).collect();
        HostWeight::f32(data, vec![c.vocab, c.hidden])
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
            qk_norm: c
                .style
                .qk_norm
                .then(|| [vector(&mut rng, c.head_dim, 1.0, 0.2), vector(&mut rng, c.head_dim, 1.0, 0.2)]),
            post_norms: c
                .style
                .post_norms
                .then(|| [vector(&mut rng, c.hidden, 1.0, 0.2), vector(&mut rng, c.hidden, 1.0, 0.2)]),
        })
        .collect();
    let norm = vector(&mut rng, c.hidden, 1.0, 0.2);
    let lm_head = untied.then(|| matrix(&mut rng, c.vocab, c.hidden));
    Weights { embed, layers, norm, lm_head }
}

/// A model wide enough for every packed format (rows of 256 values, the K formats' block):
/// 2 layers, hidden 256, 4 query heads over 2 KV heads of dim 64, MLP 512, vocabulary 64.
pub fn packed_config() -> ModelConfig {
    ModelConfig { hidden: 256, head_dim: 64, ffn: 512, ..tiny_config() }
}

/// Blocks of `dtype` for `rows` rows of `cols` values: quantized from `values` where this
/// crate can quantize the format, otherwise random blocks with small scales (every byte
/// pattern of the other formats decodes to a finite value once the scales are set).
fn blocks(dtype: GgmlType, values: &[f32], rows: usize, cols: usize, rng: &mut SplitMix64) -> Vec<u8> {
    if let Some(bytes) = quantize(dtype, values) {
        return bytes;
    }
    let (len, size) = (dtype.block_len(), dtype.block_bytes());
    let mut bytes: Vec<u8> = (0..rows * cols / len * size).map(|_| rng.next_u64() as u8).collect();
    let scale = |rng: &mut SplitMix64, max: f32| f32_to_f16((rng.next_f32() * 0.5 + 0.5) * max).to_le_bytes();
    for block in bytes.chunks_exact_mut(size) {
        match dtype {
            // d (and dmin) first: 4-bit values up to 15 times 63-step group scales.
            GgmlType::Q4K | GgmlType::Q5K => {
                block[0..2].copy_from_slice(&scale(rng, 0.0005));
                block[2..4].copy_from_slice(&scale(rng, 0.0005));
            }
            GgmlType::Q6K => block[208..210].copy_from_slice(&scale(rng, 0.0003)),
            GgmlType::Q5_0 => block[0..2].copy_from_slice(&scale(rng, 0.01)),
            GgmlType::Q5_1 => {
                block[0..2].copy_from_slice(&scale(rng, 0.01));
                block[2..4].copy_from_slice(&scale(rng, 0.1));
            }
            _ => {}
        }
    }
    bytes
}

/// [`weights`] for `config` (rows of a multiple of 256 values, e.g. [`packed_config`])
/// with every matrix packed, cycling through every [`GgmlType`] across the layers'
/// matrices, the embedding and an untied LM head: a backend runs them all on one model.
pub fn packed_weights(config: &ModelConfig, seed: u64) -> Weights {
    packed_weights_in(config, seed, &GgmlType::ALL)
}

/// [`packed_weights`] with the matrices in `formats` only, taken in turn.
pub fn packed_weights_in(config: &ModelConfig, seed: u64, formats: &[GgmlType]) -> Weights {
    let w = weights(config, seed, true);
    let mut rng = SplitMix64::new(seed ^ 0x9e37_79b9);
    let mut next = 0usize;
    let mut pack = |m: HostWeight, rng: &mut SplitMix64| {
        let dtype = formats[next % formats.len()];
        next += 1;
        let (rows, cols) = (m.shape[0], m.shape[1]);
        HostWeight::packed(dtype, blocks(dtype, &m.data, rows, cols, rng), m.shape)
    };
    let layers = w
        .layers
        .into_iter()
        .map(|l| Block {
            q: pack(l.q, &mut rng),
            k: pack(l.k, &mut rng),
            v: pack(l.v, &mut rng),
            o: pack(l.o, &mut rng),
            gate: pack(l.gate, &mut rng),
            up: pack(l.up, &mut rng),
            down: pack(l.down, &mut rng),
            ..l
        })
        .collect();
    Weights { embed: pack(w.embed, &mut rng), layers, norm: w.norm, lm_head: w.lm_head.map(|h| pack(h, &mut rng)) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packed_models_are_valid_and_finite() {
        let config = packed_config();
        let w = packed_weights(&config, 3);
        w.check(&config).unwrap();
        assert!(w.is_packed());
        assert_eq!(w.formats().len(), GgmlType::ALL.len() + 1, "{:?}", w.formats());
        let f = w.into_f32();
        assert!(
            f.layers.iter().flat_map(|l| l.tensors()).all(|t| t.data.iter().all(|v| v.is_finite() && v.abs() < 10.0))
        );
    }

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
