//! Writing a loaded model as a Hugging Face directory (`config.json`, `tokenizer.json`,
//! `tokenizer_config.json`, `model.safetensors` in f32), e.g. to hand a GGUF model to
//! tools that read safetensors, and to test the safetensors loader on real weights.

use std::path::Path;

use safetensors::tensor::TensorView;

use crate::config::Architecture;
use crate::error::{Error, Result};
use crate::model::Model;
use crate::weights::{HF_NAMES, HostWeight};

fn bytes_of(w: &HostWeight) -> Vec<u8> {
    w.to_f32().iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Writes `model` into `dir` (created if needed) in the Hugging Face layout.
pub fn write_hf_dir(model: &Model, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let c = &model.config;
    let model_type = match c.arch {
        Architecture::Llama => "llama",
        Architecture::Mistral => "mistral",
        Architecture::Qwen2 => "qwen2",
        Architecture::Gemma3 => {
            return Err(Error::Invalid("sieve cannot write a Gemma 3 model as a Hugging Face directory".into()));
        }
    };
    let config = serde_json::json!({
        "model_type": model_type,
        "hidden_size": c.hidden,
        "intermediate_size": c.ffn,
        "num_hidden_layers": c.n_layers,
        "num_attention_heads": c.n_heads,
        "num_key_value_heads": c.n_kv_heads,
        "head_dim": c.head_dim,
        "vocab_size": c.vocab,
        "rope_theta": c.rope_theta,
        "rms_norm_eps": c.rms_eps,
        "max_position_embeddings": c.context,
        "attention_bias": c.qkv_bias,
        "tie_word_embeddings": model.weights.lm_head.is_none(),
    });
    let write = |name: &str, text: String| {
        let path = dir.join(name);
        std::fs::write(&path, text).map_err(|e| Error::io(&path, e))
    };
    write("config.json", serde_json::to_string_pretty(&config).unwrap_or_default())?;
    let t = &model.tokenizer;
    let token = |id: Option<u32>| id.and_then(|i| t.token(i));
    let mut tok_config = serde_json::json!({
        "bos_token": token(t.bos),
        "eos_token": token(t.eos.first().copied()),
        "add_bos_token": t.add_bos,
    });
    if let Some(src) = &model.chat_template_source {
        tok_config["chat_template"] = serde_json::Value::String(src.clone());
    }
    write("tokenizer_config.json", serde_json::to_string_pretty(&tok_config).unwrap_or_default())?;
    t.save(&dir.join("tokenizer.json"))?;

    let w = &model.weights;
    let mut named: Vec<(String, &HostWeight)> =
        vec![(HF_NAMES.embed.into(), &w.embed), (HF_NAMES.norm.into(), &w.norm)];
    if let Some(head) = &w.lm_head {
        named.push((HF_NAMES.lm_head.into(), head));
    }
    for (i, l) in w.layers.iter().enumerate() {
        let parts = [&l.attn_norm, &l.q, &l.k, &l.v, &l.o, &l.ffn_norm, &l.gate, &l.up, &l.down];
        for (p, weight) in parts.into_iter().enumerate() {
            named.push(((HF_NAMES.layer)(i, HF_NAMES.parts[p]), weight));
        }
        if let Some(biases) = &l.qkv_bias {
            for (p, b) in biases.iter().enumerate() {
                named.push(((HF_NAMES.layer)(i, HF_NAMES.parts[9 + p]), b));
            }
        }
    }
    let buffers: Vec<(String, Vec<usize>, Vec<u8>)> =
        named.into_iter().map(|(n, w)| (n, w.shape.clone(), bytes_of(w))).collect();
    let path = dir.join("model.safetensors");
    let st = |source| Error::Safetensors { path: path.clone(), source };
    let views = buffers
        .iter()
        .map(|(n, shape, data)| {
            Ok((n.clone(), TensorView::new(safetensors::Dtype::F32, shape.clone(), data).map_err(st)?))
        })
        .collect::<Result<Vec<_>>>()?;
    safetensors::serialize_to_file(views, None, &path).map_err(st)
}
