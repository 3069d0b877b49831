//! Reading model weights from GGUF or safetensors into the backends' [`Weights`].
//!
//! Every backend receives the same layout: matrices as `[out, in]` row-major, and the q/k
//! projections in the half-split rotary layout of Hugging Face checkpoints. GGUF files of
//! the llama family store q/k rows interleaved for llama.cpp's rotary kind; they are
//! un-permuted here, once, so that backends implement one rotary embedding.

use std::path::Path;

pub use sieve_backend::weights::{HostWeight, LayerWeights, Weights};

use crate::config::{Architecture, ModelConfig};
use crate::error::{Error, Result};

/// Names a weight source uses for each tensor.
pub(crate) trait TensorSource {
    /// Name of the file, for messages.
    fn source_name(&self) -> String;
    /// Reads a tensor as `f32`, or `None` when it is absent.
    fn read(&mut self, name: &str) -> Result<Option<HostWeight>>;
}

/// Tensor names of one checkpoint format.
pub(crate) struct Naming {
    pub embed: &'static str,
    pub norm: &'static str,
    pub lm_head: &'static str,
    pub layer: fn(usize, &str) -> String,
    /// Per-layer suffixes: attn_norm, q, k, v, o, ffn_norm, gate, up, down, q_bias, k_bias, v_bias.
    pub parts: [&'static str; 12],
}

pub(crate) const GGUF_NAMES: Naming = Naming {
    embed: "token_embd.weight",
    norm: "output_norm.weight",
    lm_head: "output.weight",
    layer: |i, p| format!("blk.{i}.{p}"),
    parts: [
        "attn_norm.weight",
        "attn_q.weight",
        "attn_k.weight",
        "attn_v.weight",
        "attn_output.weight",
        "ffn_norm.weight",
        "ffn_gate.weight",
        "ffn_up.weight",
        "ffn_down.weight",
        "attn_q.bias",
        "attn_k.bias",
        "attn_v.bias",
    ],
};

pub(crate) const HF_NAMES: Naming = Naming {
    embed: "model.embed_tokens.weight",
    norm: "model.norm.weight",
    lm_head: "lm_head.weight",
    layer: |i, p| format!("model.layers.{i}.{p}"),
    parts: [
        "input_layernorm.weight",
        "self_attn.q_proj.weight",
        "self_attn.k_proj.weight",
        "self_attn.v_proj.weight",
        "self_attn.o_proj.weight",
        "post_attention_layernorm.weight",
        "mlp.gate_proj.weight",
        "mlp.up_proj.weight",
        "mlp.down_proj.weight",
        "self_attn.q_proj.bias",
        "self_attn.k_proj.bias",
        "self_attn.v_proj.bias",
    ],
};

/// Reads every weight of `config` from `src`, checking shapes. `unpermute_qk` undoes the
/// interleaved rotary layout of llama-family GGUF files.
pub(crate) fn read_weights(
    src: &mut dyn TensorSource,
    names: &Naming,
    config: &ModelConfig,
    unpermute_qk: bool,
) -> Result<Weights> {
    let c = config;
    let (q_out, kv_out) = (c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim);
    let mut get = |name: &str, shape: &[usize]| -> Result<HostWeight> {
        let w = src
            .read(name)?
            .ok_or_else(|| Error::MissingTensor { source_name: src.source_name(), name: name.into() })?;
        check_shape(&src.source_name(), name, &w, shape)?;
        Ok(w)
    };
    let embed = get(names.embed, &[c.vocab, c.hidden])?;
    let norm = get(names.norm, &[c.hidden])?;
    let mut layers = Vec::with_capacity(c.n_layers);
    for i in 0..c.n_layers {
        let n = |p: usize| (names.layer)(i, names.parts[p]);
        let mut q = get(&n(1), &[q_out, c.hidden])?;
        let mut k = get(&n(2), &[kv_out, c.hidden])?;
        if unpermute_qk {
            q = unpermute_rows(q, c.n_heads, c.head_dim);
            k = unpermute_rows(k, c.n_kv_heads, c.head_dim);
        }
        let qkv_bias = if c.qkv_bias {
            let mut b = [get(&n(9), &[q_out])?, get(&n(10), &[kv_out])?, get(&n(11), &[kv_out])?];
            if unpermute_qk {
                let [bq, bk, _] = &mut b;
                *bq = unpermute_rows(std::mem::replace(bq, empty()), c.n_heads, c.head_dim);
                *bk = unpermute_rows(std::mem::replace(bk, empty()), c.n_kv_heads, c.head_dim);
            }
            Some(b)
        } else {
            None
        };
        layers.push(LayerWeights {
            attn_norm: get(&n(0), &[c.hidden])?,
            q,
            k,
            v: get(&n(3), &[kv_out, c.hidden])?,
            qkv_bias,
            o: get(&n(4), &[c.hidden, q_out])?,
            ffn_norm: get(&n(5), &[c.hidden])?,
            gate: get(&n(6), &[c.ffn, c.hidden])?,
            up: get(&n(7), &[c.ffn, c.hidden])?,
            down: get(&n(8), &[c.hidden, c.ffn])?,
        });
    }
    let lm_head = match src.read(names.lm_head)? {
        Some(w) => {
            check_shape(&src.source_name(), names.lm_head, &w, &[c.vocab, c.hidden])?;
            Some(w)
        }
        None => None,
    };
    Ok(Weights { embed, layers, norm, lm_head })
}

fn empty() -> HostWeight {
    HostWeight { data: Vec::new(), shape: vec![0] }
}

fn check_shape(source: &str, name: &str, w: &HostWeight, expected: &[usize]) -> Result<()> {
    if w.shape != expected {
        return Err(Error::TensorShape {
            source_name: source.into(),
            name: name.into(),
            expected: expected.to_vec(),
            actual: w.shape.clone(),
        });
    }
    Ok(())
}

/// Rows of a q/k projection (or bias) from the interleaved rotary layout (pairs `2i, 2i+1`)
/// to the half-split one (pairs `i, i + head_dim/2`), head by head.
pub fn unpermute_rows(w: HostWeight, heads: usize, head_dim: usize) -> HostWeight {
    let cols = if w.shape.len() == 2 { w.shape[1] } else { 1 };
    let half = head_dim / 2;
    let mut data = vec![0.0f32; w.data.len()];
    for h in 0..heads {
        for i in 0..half {
            for j in 0..2 {
                let src = (h * head_dim + 2 * i + j) * cols;
                let dst = (h * head_dim + j * half + i) * cols;
                data[dst..dst + cols].copy_from_slice(&w.data[src..src + cols]);
            }
        }
    }
    HostWeight { data, shape: w.shape }
}

/// Whether a checkpoint of this architecture in GGUF stores q/k interleaved.
pub(crate) fn gguf_interleaved(arch: Architecture) -> bool {
    matches!(arch, Architecture::Llama | Architecture::Mistral)
}

/// Size in bytes of a file, for bounds checks.
pub(crate) fn file_len(path: &Path) -> Result<u64> {
    Ok(std::fs::metadata(path).map_err(|e| Error::io(path, e))?.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpermute_moves_pairs_to_halves() {
        // one head of dim 4, one column: interleaved rows [a0, b0, a1, b1] -> [a0, a1, b0, b1]
        let w = HostWeight { data: vec![0., 1., 2., 3.], shape: vec![4, 1] };
        assert_eq!(unpermute_rows(w, 1, 4).data, vec![0., 2., 1., 3.]);
    }
}
