//! The shape of a Llama-family decoder: what every backend needs to know about a model.
//!
//! The engine reads it from GGUF metadata or a `config.json`; backends only consume it.

use crate::error::{Error, Result};

/// The decoder families sieve runs. They share one block: RMSNorm, rotary attention with
/// grouped KV heads, a SwiGLU MLP; Qwen2 adds biases to the q, k and v projections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    /// Llama 2/3, SmolLM/SmolLM2 (GGUF arch `llama`).
    Llama,
    /// Mistral 7B (sliding window unused below its 4k window).
    Mistral,
    /// Qwen2 / Qwen2.5 (q/k/v biases).
    Qwen2,
}

impl Architecture {
    /// From a GGUF `general.architecture` or an HF `model_type`.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "llama" | "smollm" => Some(Self::Llama),
            "mistral" => Some(Self::Mistral),
            "qwen2" => Some(Self::Qwen2),
            _ => None,
        }
    }

    /// The names [`Architecture::parse`] accepts.
    pub const NAMES: &'static str = "llama, mistral, qwen2, smollm";
}

/// Llama-3 style frequency-dependent RoPE scaling.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Llama3RopeScaling {
    /// Overall factor.
    pub factor: f64,
    /// Wavelengths longer than `original / low_freq_factor` are scaled fully.
    pub low_freq_factor: f64,
    /// Wavelengths shorter than `original / high_freq_factor` are kept.
    pub high_freq_factor: f64,
    /// Context of the original training.
    pub original_max_position_embeddings: usize,
}

/// Everything a backend needs to know about a model's shape.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    /// Family.
    pub arch: Architecture,
    /// Decoder layers.
    pub n_layers: usize,
    /// Query heads.
    pub n_heads: usize,
    /// Key/value heads (GQA when fewer than `n_heads`).
    pub n_kv_heads: usize,
    /// Width of the residual stream.
    pub hidden: usize,
    /// Width of the MLP.
    pub ffn: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// Vocabulary size.
    pub vocab: usize,
    /// RoPE base.
    pub rope_theta: f64,
    /// Llama-3 RoPE scaling, if any.
    pub rope_scaling: Option<Llama3RopeScaling>,
    /// RMSNorm epsilon.
    pub rms_eps: f64,
    /// Longest sequence the model was trained for.
    pub context: usize,
    /// Whether q, k, v projections have biases.
    pub qkv_bias: bool,
}

impl ModelConfig {
    /// Checks that the numbers describe a model the backends can build.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(m));
        let limits = [
            ("layers", self.n_layers, 1024),
            ("heads", self.n_heads, 1024),
            ("kv heads", self.n_kv_heads, 1024),
            ("hidden size", self.hidden, 1 << 17),
            ("ffn size", self.ffn, 1 << 19),
            ("head dim", self.head_dim, 1024),
            ("vocabulary", self.vocab, 1 << 22),
            ("context", self.context, 1 << 24),
        ];
        for (what, v, max) in limits {
            if v == 0 || v > max {
                return bad(format!("{what} = {v} is outside 1..={max}"));
            }
        }
        if !self.n_heads.is_multiple_of(self.n_kv_heads) {
            return bad(format!("{} heads are not a multiple of {} kv heads", self.n_heads, self.n_kv_heads));
        }
        // Backends tabulate the rotary embedding for every position of the context.
        if self.context * self.head_dim > 1 << 28 {
            return bad(format!(
                "context {} x head dim {} is too large for the rotary tables (at most 2^28)",
                self.context, self.head_dim
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return bad(format!("head dim {} is odd; rotary embeddings need pairs", self.head_dim));
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 0.0 && self.rms_eps.is_finite() && self.rms_eps > 0.0) {
            return bad(format!("rope theta {} and rms eps {} must be positive", self.rope_theta, self.rms_eps));
        }
        Ok(())
    }

    /// Query heads per KV head.
    pub fn group(&self) -> usize {
        self.n_heads / self.n_kv_heads
    }

    /// Bytes of one cached token in one layer (keys and values, f32).
    pub fn kv_bytes_per_token_layer(&self) -> usize {
        2 * self.n_kv_heads * self.head_dim * std::mem::size_of::<f32>()
    }

    /// The rotary tables of every position of the context: `cos` and `sin` of
    /// `position * inv_freq`, computed in f64, each `[context, head_dim / 2]` row-major.
    pub fn rope_tables(&self) -> (Vec<f32>, Vec<f32>) {
        let inv_freq = self.rope_inv_freq();
        let n = self.context * inv_freq.len();
        let (mut cos, mut sin) = (Vec::with_capacity(n), Vec::with_capacity(n));
        for p in 0..self.context {
            for &f in &inv_freq {
                let angle = p as f64 * f;
                cos.push(angle.cos() as f32);
                sin.push(angle.sin() as f32);
            }
        }
        (cos, sin)
    }

    /// The inverse frequencies of the rotary embedding, one per pair of a head's dims.
    pub fn rope_inv_freq(&self) -> Vec<f64> {
        let half = self.head_dim / 2;
        let base: Vec<f64> =
            (0..half).map(|i| 1.0 / self.rope_theta.powf(2.0 * i as f64 / self.head_dim as f64)).collect();
        let Some(s) = self.rope_scaling else {
            return base;
        };
        let old = s.original_max_position_embeddings as f64;
        let (low_wavelen, high_wavelen) = (old / s.low_freq_factor, old / s.high_freq_factor);
        base.into_iter()
            .map(|f| {
                let wavelen = 2.0 * std::f64::consts::PI / f;
                if wavelen < high_wavelen {
                    f
                } else if wavelen > low_wavelen {
                    f / s.factor
                } else {
                    let smooth = (old / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
                    (1.0 - smooth) * f / s.factor + smooth * f
                }
            })
            .collect()
    }
}
