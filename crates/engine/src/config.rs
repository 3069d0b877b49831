//! Reading a model's configuration from GGUF metadata or a Hugging Face `config.json`
//! into the backends' [`ModelConfig`].

use std::collections::HashMap;

use candle_core::quantized::gguf_file::Value;
use serde::Deserialize;
pub use sieve_backend::config::{Architecture, BlockStyle, Llama3RopeScaling, ModelConfig};

use crate::error::{Error, Result};

fn parse_architecture(name: &str) -> Result<Architecture> {
    Architecture::parse(name).ok_or_else(|| Error::UnsupportedArchitecture(name.to_string()))
}

/// Reads the configuration from GGUF metadata; `vocab` comes from the embedding.
pub fn from_gguf(meta: &HashMap<String, Value>, vocab: usize, source: &str) -> Result<ModelConfig> {
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
        style: BlockStyle::default(),
    };
    let config = match arch {
        Architecture::Gemma3 => gemma3_gguf(config, meta, &arch_name, source)?,
        _ => config,
    };
    config.validate().map_err(|e| Error::config(source, e.to_string()))?;
    Ok(config)
}

/// Every sixth layer of Gemma 3 attends globally, the others locally with rotary base
/// 10,000; GGUF files do not record either (llama.cpp fixes them for the architecture).
const GEMMA3_PATTERN: usize = 6;
const GEMMA3_LOCAL_THETA: f64 = 10_000.0;

/// Gemma 3's block on a configuration read from GGUF metadata: the sliding window from
/// `gemma3.attention.sliding_window`, logits scaled by `1/sqrt(head_dim)` (the
/// `query_pre_attn_scalar` of the sizes up to 12B). A rotary scaling sieve does not
/// implement is an error.
fn gemma3_gguf(
    config: ModelConfig,
    meta: &HashMap<String, Value>,
    arch_name: &str,
    source: &str,
) -> Result<ModelConfig> {
    let key = |k: &str| format!("{arch_name}.{k}");
    if let Some(Value::String(kind)) = meta.get(&key("rope.scaling.type"))
        && kind != "none"
    {
        return Err(Error::config(
            source,
            format!(
                "metadata `{}` = \"{kind}\" is not supported (sieve runs Gemma 3 without rotary scaling)",
                key("rope.scaling.type")
            ),
        ));
    }
    let window = get_u(meta, &key("attention.sliding_window"), source)?;
    let style = BlockStyle::gemma3(
        config.hidden,
        config.n_layers,
        config.head_dim as f64,
        window,
        GEMMA3_PATTERN,
        GEMMA3_LOCAL_THETA,
    );
    Ok(ModelConfig { style, ..config })
}

/// Reads a Hugging Face `config.json`.
pub fn from_hf_json(text: &str, source: &str) -> Result<ModelConfig> {
    // The error names the key (`num_hidden_layers: invalid type ...`).
    let raw: HfConfig = serde_path_to_error::deserialize(&mut serde_json::Deserializer::from_str(text))
        .map_err(|e| Error::config(source, e.to_string()))?;
    let arch = parse_architecture(&raw.model_type)?;
    if arch == Architecture::Gemma3 {
        return gemma3_hf(&raw, text, source);
    }
    let (rope_theta, rope_scaling) = rope(&raw, source)?;
    let unsupported = |key: &str, value: String, why: &str| {
        Err(Error::config(source, format!("{key} = {value} is not supported ({why})")))
    };
    if let Some(act) = raw.hidden_act.as_deref().filter(|a| *a != "silu") {
        return unsupported("hidden_act", format!("\"{act}\""), "sieve's Llama-family MLP is SiLU-gated");
    }
    if raw.mlp_bias == Some(true) {
        return unsupported("mlp_bias", "true".into(), "sieve's MLP has no biases");
    }
    // A sliding window makes attention local past its length; below it, attention is
    // the same as full attention, so the window bounds the context sieve accepts.
    let window = match arch {
        Architecture::Qwen2 if raw.use_sliding_window != Some(true) => None,
        _ => raw.sliding_window,
    };
    let context = raw.max_position_embeddings.unwrap_or(4096);
    let config = ModelConfig {
        arch,
        n_layers: raw.num_hidden_layers,
        n_heads: raw.num_attention_heads,
        n_kv_heads: raw.num_key_value_heads.unwrap_or(raw.num_attention_heads),
        hidden: raw.hidden_size,
        ffn: raw.intermediate_size,
        head_dim: raw.head_dim.unwrap_or(raw.hidden_size / raw.num_attention_heads.max(1)),
        vocab: raw.vocab_size,
        rope_theta,
        rope_scaling,
        rms_eps: raw.rms_norm_eps.unwrap_or(1e-5),
        context: window.map_or(context, |w| w.min(context)),
        qkv_bias: raw.attention_bias.unwrap_or(arch == Architecture::Qwen2),
        style: BlockStyle::default(),
    };
    config.validate().map_err(|e| Error::config(source, e.to_string()))?;
    Ok(config)
}

/// Gemma 3 from a `config.json` (`model_type` `gemma3_text`), as transformers 4.5x and 5
/// write it: the layer kinds from `layer_types` (or every `sliding_window_pattern`-th layer
/// global), the rotary bases from `rope_parameters` per layer kind (or `rope_theta` and
/// `rope_local_base_freq`). Soft-capping, a rotary scaling or an activation sieve does not
/// implement is an error naming the key.
fn gemma3_hf(raw: &HfConfig, text: &str, source: &str) -> Result<ModelConfig> {
    let json: serde_json::Value = serde_json::from_str(text).map_err(|e| Error::config(source, e.to_string()))?;
    let bad = |key: &str, v: &serde_json::Value, why: &str| Error::config(source, format!("{key} = {v} {why}"));
    let number = |key: &str, default: f64| -> Result<f64> {
        match json.get(key) {
            None | Some(serde_json::Value::Null) => Ok(default),
            Some(v) => v.as_f64().ok_or_else(|| bad(key, v, "is not a number")),
        }
    };
    let act_key = if json.get("hidden_activation").is_some() { "hidden_activation" } else { "hidden_act" };
    match json.get(act_key) {
        None | Some(serde_json::Value::Null) => {}
        Some(v) if v.as_str() == Some("gelu_pytorch_tanh") => {}
        Some(v) => return Err(bad(act_key, v, "is not supported (sieve's Gemma MLP is GELU-tanh gated)")),
    }
    if let Some(v) = json.get("use_bidirectional_attention").filter(|v| v.as_bool() == Some(true)) {
        return Err(bad("use_bidirectional_attention", v, "is not supported (sieve's decoder is causal)"));
    }
    for key in ["final_logit_softcapping", "attn_logit_softcapping"] {
        if let Some(v) = json.get(key).filter(|v| !v.is_null()) {
            return Err(bad(key, v, "is not supported (Gemma 3 has no soft-capping)"));
        }
    }
    let window = match json.get("sliding_window") {
        Some(v) => v
            .as_u64()
            .and_then(|w| usize::try_from(w).ok())
            .ok_or_else(|| bad("sliding_window", v, "is not a count"))?,
        None => return Err(Error::config(source, "missing `sliding_window`")),
    };
    let local: Vec<bool> = match json.get("layer_types").filter(|v| !v.is_null()) {
        Some(serde_json::Value::Array(types)) => types
            .iter()
            .map(|t| match t.as_str() {
                Some("sliding_attention") => Ok(true),
                Some("full_attention") => Ok(false),
                _ => Err(bad("layer_types", t, "is not \"sliding_attention\" or \"full_attention\"")),
            })
            .collect::<Result<_>>()?,
        Some(v) => return Err(bad("layer_types", v, "is not a list")),
        None => {
            let pattern = number("sliding_window_pattern", GEMMA3_PATTERN as f64)? as usize;
            (0..raw.num_hidden_layers).map(|i| pattern == 0 || (i + 1) % pattern != 0).collect()
        }
    };
    if local.len() != raw.num_hidden_layers {
        return Err(Error::config(
            source,
            format!("layer_types has {} entries for {} layers", local.len(), raw.num_hidden_layers),
        ));
    }
    let default_rope = |kind: &str, p: &serde_json::Value| -> Result<()> {
        match p.get("rope_type").and_then(|t| t.as_str()) {
            None | Some("default") => Ok(()),
            Some(other) => Err(Error::config(
                source,
                format!("{kind}.rope_type = \"{other}\" is not supported (sieve runs Gemma 3 without rotary scaling)"),
            )),
        }
    };
    let (theta, local_theta) = match json.get("rope_parameters").filter(|v| !v.is_null()) {
        Some(p) if p.get("full_attention").is_some() => {
            let theta_of = |kind: &str, default: f64| -> Result<f64> {
                let Some(q) = p.get(kind) else { return Ok(default) };
                default_rope(&format!("rope_parameters.{kind}"), q)?;
                Ok(q.get("rope_theta").and_then(|t| t.as_f64()).unwrap_or(default))
            };
            (theta_of("full_attention", 1e6)?, theta_of("sliding_attention", GEMMA3_LOCAL_THETA)?)
        }
        Some(p) => {
            default_rope("rope_parameters", p)?;
            let theta = p.get("rope_theta").and_then(|t| t.as_f64()).unwrap_or(number("rope_theta", 1e6)?);
            (theta, number("rope_local_base_freq", GEMMA3_LOCAL_THETA)?)
        }
        None => {
            if let Some(s) = json.get("rope_scaling").filter(|v| !v.is_null()) {
                default_rope("rope_scaling", s)?;
            }
            (number("rope_theta", 1e6)?, number("rope_local_base_freq", GEMMA3_LOCAL_THETA)?)
        }
    };
    let head_dim = raw.head_dim.unwrap_or(256);
    let mut style = BlockStyle::gemma3(
        raw.hidden_size,
        raw.num_hidden_layers,
        number("query_pre_attn_scalar", head_dim as f64)?,
        window,
        GEMMA3_PATTERN,
        local_theta,
    );
    if let Some(w) = &mut style.sliding_window {
        w.local = local;
    }
    let config = ModelConfig {
        arch: Architecture::Gemma3,
        n_layers: raw.num_hidden_layers,
        n_heads: raw.num_attention_heads,
        n_kv_heads: raw.num_key_value_heads.unwrap_or(raw.num_attention_heads),
        hidden: raw.hidden_size,
        ffn: raw.intermediate_size,
        head_dim,
        vocab: raw.vocab_size,
        rope_theta: theta,
        rope_scaling: None,
        rms_eps: raw.rms_norm_eps.unwrap_or(1e-6),
        context: raw.max_position_embeddings.unwrap_or(32_768),
        qkv_bias: raw.attention_bias.unwrap_or(false),
        style,
    };
    config.validate().map_err(|e| Error::config(source, e.to_string()))?;
    Ok(config)
}

/// The rotary base and scaling of a `config.json`: transformers 5 writes them in
/// `rope_parameters` (`rope_theta`, `rope_type`, the scaling's factors), older versions as
/// top-level `rope_theta` and `rope_scaling`. A `rope_type` sieve does not implement is an
/// error naming the key, never a silent fallback; without any, the base is 10,000 (the
/// Llama family's default).
fn rope(raw: &HfConfig, source: &str) -> Result<(f64, Option<Llama3RopeScaling>)> {
    let (params, where_) = match (&raw.rope_parameters, &raw.rope_scaling) {
        (Some(p), _) => (Some(p), "rope_parameters"),
        (None, Some(s)) => (Some(s), "rope_scaling"),
        (None, None) => (None, ""),
    };
    let theta_in_params = params.and_then(|p| p.get("rope_theta")).and_then(|t| t.as_f64());
    if let (Some(a), Some(b)) = (theta_in_params, raw.rope_theta)
        && a != b
    {
        return Err(Error::config(source, format!("rope_parameters.rope_theta = {a} disagrees with rope_theta = {b}")));
    }
    let theta = theta_in_params.or(raw.rope_theta).unwrap_or(10_000.0);
    let Some(p) = params.filter(|p| !p.is_null()) else {
        return Ok((theta, None));
    };
    let kind = p.get("rope_type").or(p.get("type")).and_then(|t| t.as_str()).unwrap_or("default");
    match kind {
        "default" => Ok((theta, None)),
        "llama3" => {
            let s: HfLlama3Scaling =
                serde_json::from_value(p.clone()).map_err(|e| Error::config(source, format!("{where_}: {e}")))?;
            let scaling = Llama3RopeScaling {
                factor: s.factor,
                low_freq_factor: s.low_freq_factor,
                high_freq_factor: s.high_freq_factor,
                original_max_position_embeddings: s.original_max_position_embeddings,
            };
            Ok((theta, Some(scaling)))
        }
        other => Err(Error::config(
            source,
            format!("{where_}.rope_type = \"{other}\" is not supported (sieve implements \"default\" and \"llama3\")"),
        )),
    }
}

/// Llama-3 rotary scaling as `config.json` writes it.
#[derive(Deserialize)]
struct HfLlama3Scaling {
    factor: f64,
    low_freq_factor: f64,
    high_freq_factor: f64,
    original_max_position_embeddings: usize,
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
    rope_parameters: Option<serde_json::Value>,
    rms_norm_eps: Option<f64>,
    max_position_embeddings: Option<usize>,
    attention_bias: Option<bool>,
    hidden_act: Option<String>,
    mlp_bias: Option<bool>,
    sliding_window: Option<usize>,
    use_sliding_window: Option<bool>,
}

/// The name in `general.architecture` and the family it denotes.
pub(crate) fn gguf_architecture(meta: &HashMap<String, Value>, source: &str) -> Result<(String, Architecture)> {
    let name = get_str(meta, "general.architecture", source)?;
    let arch = parse_architecture(&name)?;
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
