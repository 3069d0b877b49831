//! A tiny synthetic GGUF model, for tests, fuzzing seeds and broken-file fixtures.
//!
//! [`TinyGguf::llama`] describes a complete one-layer llama (hidden 32, 2 heads, vocabulary
//! of 8, a byte-level BPE tokenizer and a chat template) in a few kilobytes. Tests change
//! its metadata or tensors, write it with candle's GGUF writer, and [`patch_tensor_info`]
//! edits a written header where candle's writer cannot go (absurd shapes, unknown types).
//! Its weights are arbitrary: it loads and runs, but says nothing useful.

use std::io::Cursor;
use std::path::Path;

pub use candle_core::quantized::GgmlDType;
pub use candle_core::quantized::gguf_file::Value;
use candle_core::quantized::{QTensor, gguf_file};
use candle_core::{Device, Tensor};

use crate::error::{Error, Result};

/// Metadata and tensors of a GGUF file, in the order they are written.
pub struct TinyGguf {
    /// Metadata entries.
    pub metadata: Vec<(String, Value)>,
    /// Tensors, dimensions outermost first.
    pub tensors: Vec<(String, QTensor)>,
}

fn candle(e: candle_core::Error) -> Error {
    Error::gguf(Path::new("<memory>"), e)
}

/// A tensor of `shape` with arbitrary but deterministic values, stored as `dtype`.
pub fn tensor(shape: &[usize], dtype: GgmlDType, seed: usize) -> Result<QTensor> {
    let n: usize = shape.iter().product();
    let data: Vec<f32> = (0..n).map(|i| (((i * 7 + seed * 13) % 23) as f32 - 11.0) / 40.0).collect();
    let t = Tensor::from_vec(data, shape, &Device::Cpu).map_err(candle)?;
    QTensor::quantize(&t, dtype).map_err(candle)
}

impl TinyGguf {
    /// A complete one-layer llama model.
    pub fn llama() -> Result<Self> {
        let s = |v: &str| Value::String(v.into());
        let strings = |v: &[&str]| Value::Array(v.iter().map(|x| s(x)).collect());
        let tokens = ["<|end|>", "a", "b", "c", "d", "\u{120}", "ab", "cd"];
        let metadata = vec![
            ("general.architecture", s("llama")),
            ("llama.block_count", Value::U32(1)),
            ("llama.context_length", Value::U32(64)),
            ("llama.embedding_length", Value::U32(32)),
            ("llama.feed_forward_length", Value::U32(32)),
            ("llama.attention.head_count", Value::U32(2)),
            ("llama.attention.head_count_kv", Value::U32(1)),
            ("llama.rope.freq_base", Value::F32(10_000.0)),
            ("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-5)),
            ("tokenizer.ggml.model", s("gpt2")),
            ("tokenizer.ggml.pre", s("default")),
            ("tokenizer.ggml.tokens", strings(&tokens)),
            ("tokenizer.ggml.token_type", Value::Array([3, 1, 1, 1, 1, 1, 1, 1].map(Value::I32).to_vec())),
            ("tokenizer.ggml.merges", strings(&["a b", "c d"])),
            ("tokenizer.ggml.bos_token_id", Value::U32(0)),
            ("tokenizer.ggml.eos_token_id", Value::U32(0)),
            ("tokenizer.chat_template", s("{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}")),
        ];
        let (q8, f32) = (GgmlDType::Q8_0, GgmlDType::F32);
        let specs: [(&str, &[usize], GgmlDType); 11] = [
            ("token_embd.weight", &[8, 32], q8),
            ("output_norm.weight", &[32], f32),
            ("blk.0.attn_norm.weight", &[32], f32),
            ("blk.0.attn_q.weight", &[32, 32], q8),
            ("blk.0.attn_k.weight", &[16, 32], q8),
            ("blk.0.attn_v.weight", &[16, 32], q8),
            ("blk.0.attn_output.weight", &[32, 32], q8),
            ("blk.0.ffn_norm.weight", &[32], f32),
            ("blk.0.ffn_gate.weight", &[32, 32], q8),
            ("blk.0.ffn_up.weight", &[32, 32], q8),
            ("blk.0.ffn_down.weight", &[32, 32], q8),
        ];
        let tensors = specs
            .iter()
            .enumerate()
            .map(|(i, (name, shape, dtype))| Ok((name.to_string(), tensor(shape, *dtype, i)?)))
            .collect::<Result<_>>()?;
        Ok(Self { metadata: metadata.into_iter().map(|(k, v)| (k.to_string(), v)).collect(), tensors })
    }

    /// Sets (or adds) a metadata entry.
    pub fn set(&mut self, key: &str, value: Value) -> &mut Self {
        match self.metadata.iter_mut().find(|(k, _)| k == key) {
            Some((_, v)) => *v = value,
            None => self.metadata.push((key.to_string(), value)),
        }
        self
    }

    /// Sets (or adds) a tensor.
    pub fn set_tensor(&mut self, name: &str, tensor: QTensor) -> &mut Self {
        match self.tensors.iter_mut().find(|(n, _)| n == name) {
            Some((_, t)) => *t = tensor,
            None => self.tensors.push((name.to_string(), tensor)),
        }
        self
    }

    /// The GGUF file (version 2, candle's writer).
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let metadata: Vec<(&str, &Value)> = self.metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let tensors: Vec<(&str, &QTensor)> = self.tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
        let mut out = Cursor::new(Vec::new());
        gguf_file::write(&mut out, &metadata, &tensors).map_err(candle)?;
        Ok(out.into_inner())
    }
}

/// Rewrites the header entry of tensor `name` in a GGUF v2/v3 file: its dimensions
/// (outermost first, as many as it has) and/or its ggml type id. Returns whether the entry
/// was found, with as many dimensions as given, and patched.
pub fn patch_tensor_info(bytes: &mut [u8], name: &str, dims: Option<&[u64]>, type_id: Option<u32>) -> bool {
    let mut needle = (name.len() as u64).to_le_bytes().to_vec();
    needle.extend_from_slice(name.as_bytes());
    // Tensor entries follow the metadata: the last match is the entry, not a string value.
    let Some(at) = bytes.windows(needle.len()).rposition(|w| w == needle) else {
        return false;
    };
    let rank_at = at + needle.len();
    let Some(rank) = bytes.get(rank_at..rank_at + 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    else {
        return false;
    };
    let (dims_at, type_at) = (rank_at + 4, rank_at + 4 + 8 * rank);
    if dims.is_some_and(|d| d.len() != rank) || bytes.len() < type_at + 4 {
        return false;
    }
    for (i, d) in dims.unwrap_or_default().iter().rev().enumerate() {
        bytes[dims_at + 8 * i..dims_at + 8 * i + 8].copy_from_slice(&d.to_le_bytes());
    }
    if let Some(t) = type_id {
        bytes[type_at..type_at + 4].copy_from_slice(&t.to_le_bytes());
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tiny_model_loads_and_patches_apply() {
        let bytes = TinyGguf::llama().unwrap().to_bytes().unwrap();
        let m = crate::model::load_gguf_bytes(&bytes).unwrap();
        assert_eq!((m.config.n_layers, m.config.hidden, m.config.head_dim, m.config.vocab), (1, 32, 16, 8));
        assert_eq!(m.tokenizer.encode("abcd").unwrap(), vec![6, 7]);
        assert!(m.chat_template.is_some());
        let mut patched = bytes.clone();
        assert!(patch_tensor_info(&mut patched, "blk.0.attn_k.weight", Some(&[8, 64]), None));
        let err = crate::model::load_gguf_bytes(&patched).unwrap_err().to_string();
        assert!(err.contains("tensor `blk.0.attn_k.weight` has shape [8, 64], expected [16, 32]"), "{err}");
    }
}
