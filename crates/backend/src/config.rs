//! The shape of a Llama-family decoder: what every backend needs to know about a model.
//!
//! The engine reads it from GGUF metadata or a `config.json`; backends only consume it.

use crate::error::{Error, Result};

/// The decoder families sieve runs. They share one block: RMSNorm, rotary attention with
/// grouped KV heads, a gated MLP; Qwen2 adds biases to the q, k and v projections, and
/// Gemma 3 the extras of [`BlockStyle`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    /// Llama 2/3, SmolLM/SmolLM2 (GGUF arch `llama`).
    Llama,
    /// Mistral 7B (sliding window unused below its 4k window).
    Mistral,
    /// Qwen2 / Qwen2.5 (q/k/v biases).
    Qwen2,
    /// Gemma 3 (GGUF arch `gemma3`): see [`BlockStyle::gemma3`].
    Gemma3,
}

impl Architecture {
    /// From a GGUF `general.architecture` or an HF `model_type`.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "llama" | "smollm" => Some(Self::Llama),
            "mistral" => Some(Self::Mistral),
            "qwen2" => Some(Self::Qwen2),
            "gemma3" | "gemma3_text" => Some(Self::Gemma3),
            _ => None,
        }
    }

    /// The names [`Architecture::parse`] accepts.
    pub const NAMES: &'static str = "gemma3, gemma3_text, llama, mistral, qwen2, smollm";
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

/// The MLP's gate activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Activation {
    /// `silu(gate) * up` (SwiGLU: Llama, Mistral, Qwen2).
    #[default]
    Silu,
    /// `gelu_tanh(gate) * up` (GeGLU with the tanh approximation: Gemma).
    GeluTanh,
}

impl Activation {
    /// The activation of one value.
    pub fn apply(self, x: f32) -> f32 {
        match self {
            Activation::Silu => x / (1.0 + (-x).exp()),
            Activation::GeluTanh => {
                let x = f64::from(x);
                let inner = (2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x * x * x);
                (0.5 * x * (1.0 + inner.tanh())) as f32
            }
        }
    }
}

/// Local attention: some layers see only the last `size` positions (a key at position `k`
/// is visible to a query at `q` when `q - size < k <= q`), with their own rotary base.
#[derive(Debug, Clone, PartialEq)]
pub struct SlidingWindow {
    /// Positions a local layer sees, the query's own included.
    pub size: usize,
    /// Whether each layer is local (`true`) or global.
    pub local: Vec<bool>,
    /// The rotary base of the local layers (global layers use [`ModelConfig::rope_theta`]
    /// and its scaling).
    pub rope_theta: f64,
}

/// How the block differs from the plain Llama block. [`BlockStyle::default`] is Llama's.
#[derive(Debug, Clone, PartialEq)]
pub struct BlockStyle {
    /// RMSNorm over each head of q and of k (gain `[head_dim]`) before the rotary embedding.
    pub qk_norm: bool,
    /// RMSNorm of the attention output and of the MLP output before each residual add.
    pub post_norms: bool,
    /// The MLP's gate activation.
    pub activation: Activation,
    /// Factor on the token embeddings (`sqrt(hidden)` for Gemma, 1 otherwise).
    pub embed_scale: f32,
    /// Factor on the attention logits `q . k` (`1 / sqrt(head_dim)` unless set).
    pub query_scale: Option<f64>,
    /// Local attention layers, if any.
    pub sliding_window: Option<SlidingWindow>,
}

impl Default for BlockStyle {
    fn default() -> Self {
        Self {
            qk_norm: false,
            post_norms: false,
            activation: Activation::Silu,
            embed_scale: 1.0,
            query_scale: None,
            sliding_window: None,
        }
    }
}

impl BlockStyle {
    /// Gemma 3's block: q/k norms, norms after attention and MLP, GeGLU, embeddings scaled
    /// by `sqrt(hidden)`, logits scaled by `query_pre_attn_scalar^-1/2`, and every `pattern`-th layer global
    /// among local layers of `window` positions with rotary base `local_theta`.
    pub fn gemma3(
        hidden: usize,
        n_layers: usize,
        query_pre_attn_scalar: f64,
        window: usize,
        pattern: usize,
        local_theta: f64,
    ) -> Self {
        let local = (0..n_layers).map(|i| pattern == 0 || (i + 1) % pattern != 0).collect();
        Self {
            qk_norm: true,
            post_norms: true,
            activation: Activation::GeluTanh,
            embed_scale: (hidden as f32).sqrt(),
            query_scale: Some(1.0 / query_pre_attn_scalar.sqrt()),
            sliding_window: Some(SlidingWindow { size: window, local, rope_theta: local_theta }),
        }
    }
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
    /// What the block adds to Llama's.
    pub style: BlockStyle,
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
        if let Some(w) = &self.style.sliding_window {
            if w.size == 0 || w.local.len() != self.n_layers {
                return bad(format!(
                    "sliding window of {} positions over {} layer kinds for {} layers",
                    w.size,
                    w.local.len(),
                    self.n_layers
                ));
            }
            if !(w.rope_theta.is_finite() && w.rope_theta > 0.0) {
                return bad(format!("local rope theta {} must be positive", w.rope_theta));
            }
        }
        let scale_ok = self.style.query_scale.is_none_or(|s| s.is_finite() && s > 0.0);
        if !(scale_ok && self.style.embed_scale.is_finite() && self.style.embed_scale > 0.0) {
            return bad(format!(
                "query scale {:?} and embedding scale {} must be positive",
                self.style.query_scale, self.style.embed_scale
            ));
        }
        Ok(())
    }

    /// The attention window of layer `layer`: `Some(size)` for a local layer.
    pub fn window(&self, layer: usize) -> Option<usize> {
        let w = self.style.sliding_window.as_ref()?;
        w.local.get(layer).copied().unwrap_or(false).then_some(w.size)
    }

    /// The factor on the attention logits `q . k`.
    pub fn query_scale(&self) -> f64 {
        self.style.query_scale.unwrap_or(1.0 / (self.head_dim as f64).sqrt())
    }

    /// The rotary frequencies of layer `layer` (a local layer's base, unscaled).
    pub fn layer_rope_inv_freq(&self, layer: usize) -> Vec<f64> {
        match (&self.style.sliding_window, self.window(layer)) {
            (Some(w), Some(_)) => {
                ModelConfig { rope_theta: w.rope_theta, rope_scaling: None, ..self.clone() }.rope_inv_freq()
            }
            _ => self.rope_inv_freq(),
        }
    }

    /// Which of [`ModelConfig::rope_table_sets`] layer `layer` uses.
    pub fn rope_set(&self, layer: usize) -> usize {
        usize::from(self.window(layer).is_some())
    }

    /// The rotary tables of every distinct base ([`ModelConfig::rope_tables`] for the
    /// global layers first, then those of the local layers' base if there are local
    /// layers), as [`ModelConfig::rope_set`] indexes them.
    pub fn rope_table_sets(&self) -> Vec<(Vec<f32>, Vec<f32>)> {
        self.rope_inv_freq_sets().iter().map(|f| rope_rows(f, 0..self.context)).collect()
    }

    /// The inverse frequencies of every distinct rotary base, in the order of
    /// [`ModelConfig::rope_table_sets`].
    pub fn rope_inv_freq_sets(&self) -> Vec<Vec<f64>> {
        let mut sets = vec![self.rope_inv_freq()];
        if let Some(w) = &self.style.sliding_window {
            let local = ModelConfig {
                rope_theta: w.rope_theta,
                rope_scaling: None,
                style: BlockStyle::default(),
                ..self.clone()
            };
            sets.push(local.rope_inv_freq());
        }
        sets
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
        rope_rows(&self.rope_inv_freq(), 0..self.context)
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

/// `cos` and `sin` of `position * inv_freq` (computed in f64) for each position of
/// `positions`, `[positions, inv_freq.len()]` row-major: rows of the rotary tables.
pub fn rope_rows(inv_freq: &[f64], positions: std::ops::Range<usize>) -> (Vec<f32>, Vec<f32>) {
    let n = positions.len() * inv_freq.len();
    let (mut cos, mut sin) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for p in positions {
        for &f in inv_freq {
            let angle = p as f64 * f;
            cos.push(angle.cos() as f32);
            sin.push(angle.sin() as f32);
        }
    }
    (cos, sin)
}
