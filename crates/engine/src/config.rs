//! Model configuration of Llama-family decoders, from GGUF metadata or a `config.json`.

use std::collections::HashMap;

use candle_core::quantized::gguf_file::Value;
use serde::Deserialize;

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
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "llama" | "smollm" => Ok(Self::Llama),
            "mistral" => Ok(Self::Mistral),
            "qwen2" => Ok(Self::Qwen2),
            other => Err(Error::UnsupportedArchitecture(other.to_string())),
        }
    }
}

/// Llama-3 style frequency-dependent RoPE scaling.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
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
    /// Checks that the numbers describe a buildable model; `source` names the file.
    pub fn validate(&self, source: &str) -> Result<()> {
        let bad = |m: String| Err(Error::config(source, m));
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
        if self.n_heads % self.n_kv_heads != 0 {
            return bad(format!("{} heads are not a multiple of {} kv heads", self.n_heads, self.n_kv_heads));
        }
        // Backends tabulate the rotary embedding for every position of the context.
        if self.context * self.head_dim > 1 << 28 {
            return bad(format!(
                "context {} x head dim {} is too large for the rotary tables (at most 2^28)",
                self.context, self.head_dim
            ));
        }
        if self.head_dim % 2 != 0 {
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

    /// Reads the configuration from GGUF metadata; `vocab` comes from the embedding.
    pub fn from_gguf(meta: &HashMap<String, Value>, vocab: usize, source: &str) -> Result<Self> {
        let (arch_name, arch) = gguf_architecture(meta, source)?;
        let key = |k: &str| format!("{arch_name}.{k}");
        let n_heads = get_u(meta, &key("attention.head_count"), source)?;
        let hidden = get_u(meta, &key("embedding_length"), source)?;
        let head_dim = match meta.get(&key("attention.key_length")) {
            Some(v) => to_usize(v, &key("attention.key_length"), source)?,
            None => hidden.checked_div(n_heads).unwrap_or(0),
        };
        let config = ModelConfig {
            arch,
            n_layers: get_u(meta, &key("block_count"), source)?,
            n_heads,
            n_kv_heads: match meta.get(&key("attention.head_count_kv")) {
                Some(v) => to_usize(v, &key("attention.head_count_kv"), source)?,
                None => n_heads,
            },
            hidden,
            ffn: get_u(meta, &key("feed_forward_length"), source)?,
            head_dim,
            vocab,
            rope_theta: get_f(meta, &key("rope.freq_base"), source).unwrap_or(10_000.0),
            rope_scaling: None,
            rms_eps: get_f(meta, &key("attention.layer_norm_rms_epsilon"), source).unwrap_or(1e-5),
            context: get_u(meta, &key("context_length"), source).unwrap_or(4096),
            qkv_bias: arch == Architecture::Qwen2,
        };
        config.validate(source)?;
        Ok(config)
    }

    /// Reads a Hugging Face `config.json`.
    pub fn from_hf_json(text: &str, source: &str) -> Result<Self> {
        let raw: HfConfig = serde_json::from_str(text).map_err(|e| Error::config(source, e.to_string()))?;
        let arch = Architecture::parse(&raw.model_type)?;
        let rope_scaling = match raw.rope_scaling {
            None => None,
            Some(v) if v.get("rope_type").or(v.get("type")).and_then(|t| t.as_str()) == Some("llama3") => {
                Some(serde_json::from_value(v).map_err(|e| Error::config(source, format!("rope_scaling: {e}")))?)
            }
            Some(v) => {
                return Err(Error::config(source, format!("unsupported rope_scaling {v}")));
            }
        };
        let config = ModelConfig {
            arch,
            n_layers: raw.num_hidden_layers,
            n_heads: raw.num_attention_heads,
            n_kv_heads: raw.num_key_value_heads.unwrap_or(raw.num_attention_heads),
            hidden: raw.hidden_size,
            ffn: raw.intermediate_size,
            head_dim: raw.head_dim.unwrap_or(raw.hidden_size / raw.num_attention_heads.max(1)),
            vocab: raw.vocab_size,
            rope_theta: raw.rope_theta.unwrap_or(10_000.0),
            rope_scaling,
            rms_eps: raw.rms_norm_eps.unwrap_or(1e-5),
            context: raw.max_position_embeddings.unwrap_or(4096),
            qkv_bias: raw.attention_bias.unwrap_or(arch == Architecture::Qwen2),
        };
        config.validate(source)?;
        Ok(config)
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

#[derive(Deserialize)]
struct HfConfig {
    model_type: String,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    vocab_size: usize,
    rope_theta: Option<f64>,
    rope_scaling: Option<serde_json::Value>,
    rms_norm_eps: Option<f64>,
    max_position_embeddings: Option<usize>,
    attention_bias: Option<bool>,
}

/// The name in `general.architecture` and the family it denotes.
pub(crate) fn gguf_architecture(meta: &HashMap<String, Value>, source: &str) -> Result<(String, Architecture)> {
    let name = get_str(meta, "general.architecture", source)?;
    let arch = Architecture::parse(&name)?;
    Ok((name, arch))
}

fn missing(key: &str, source: &str) -> Error {
    Error::config(source, format!("missing metadata `{key}`"))
}

fn to_usize(v: &Value, key: &str, source: &str) -> Result<usize> {
    let n = match v {
        Value::U8(x) => *x as u64,
        Value::U16(x) => *x as u64,
        Value::U32(x) => *x as u64,
        Value::U64(x) => *x,
        Value::I8(x) if *x >= 0 => *x as u64,
        Value::I16(x) if *x >= 0 => *x as u64,
        Value::I32(x) if *x >= 0 => *x as u64,
        Value::I64(x) if *x >= 0 => *x as u64,
        other => {
            return Err(Error::config(source, format!("metadata `{key}` = {other:?} is not a count")));
        }
    };
    usize::try_from(n).map_err(|_| Error::config(source, format!("metadata `{key}` = {n} is too large")))
}

fn get_u(meta: &HashMap<String, Value>, key: &str, source: &str) -> Result<usize> {
    to_usize(meta.get(key).ok_or_else(|| missing(key, source))?, key, source)
}

fn get_f(meta: &HashMap<String, Value>, key: &str, source: &str) -> Result<f64> {
    match meta.get(key).ok_or_else(|| missing(key, source))? {
        Value::F32(x) => Ok(*x as f64),
        Value::F64(x) => Ok(*x),
        other => Err(Error::config(source, format!("metadata `{key}` = {other:?} is not a number"))),
    }
}

fn get_str(meta: &HashMap<String, Value>, key: &str, source: &str) -> Result<String> {
    match meta.get(key).ok_or_else(|| missing(key, source))? {
        Value::String(s) => Ok(s.clone()),
        other => Err(Error::config(source, format!("metadata `{key}` = {other:?} is not a string"))),
    }
}
