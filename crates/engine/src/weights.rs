//! Reading model weights from GGUF or safetensors into the backends' [`Weights`].
//!
//! Every backend receives the same layout: matrices as `[out, in]` row-major, and the q/k
//! projections in the half-split rotary layout of Hugging Face checkpoints. GGUF files of
//! the llama family store q/k rows interleaved for llama.cpp's rotary kind; they are
//! un-permuted here, once, so that backends implement one rotary embedding.

use std::path::Path;
use std::str::FromStr;

use sieve_backend::quant::GgmlType;
pub use sieve_backend::weights::{HostWeight, LayerWeights, Weights};

use crate::config::{Architecture, ModelConfig};
use crate::error::{Error, Result};

/// How weight matrices are held once loaded. Norms and biases are always `f32`; scores,
/// softmax and selection are computed in `f32` whatever the weights are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Dtype {
    /// As the file stores them (GGUF blocks such as Q4_1 and Q8_0, f16, bf16; `f32` for
    /// formats sieve has no blocks for). The CPU kernels compute on the blocks, in `f32`,
    /// so the model's numbers are those of its `f32` decoding; other backends decode them
    /// at load.
    #[default]
    Native,
    /// Decoded to `f32`.
    F32,
    /// Converted to IEEE half precision.
    F16,
    /// Converted to bfloat16.
    BF16,
}

impl Dtype {
    /// The name used on command lines.
    pub fn name(self) -> &'static str {
        match self {
            Dtype::Native => "native",
            Dtype::F32 => "f32",
            Dtype::F16 => "f16",
            Dtype::BF16 => "bf16",
        }
    }
}

impl FromStr for Dtype {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        [Dtype::Native, Dtype::F32, Dtype::F16, Dtype::BF16]
            .into_iter()
            .find(|d| d.name() == s)
            .ok_or_else(|| Error::Invalid(format!("dtype `{s}` is not native, f32, f16 or bf16")))
    }
}

impl std::fmt::Display for Dtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A matrix in the form `dtype` asks for: packed blocks kept (`native`), decoded
/// (`f32`), or converted (`f16`, `bf16`). Vectors are always `f32`.
fn convert(w: HostWeight, dtype: Dtype) -> HostWeight {
    match dtype {
        Dtype::Native if w.shape.len() == 2 => w,
        Dtype::Native | Dtype::F32 => w.into_f32(),
        Dtype::F16 => w.converted(GgmlType::F16),
        Dtype::BF16 => w.converted(GgmlType::BF16),
    }
}

/// Names a weight source uses for each tensor.
pub(crate) trait TensorSource {
    /// Name of the file, for messages.
    fn source_name(&self) -> String;
    /// Reads a tensor as stored (packed when its format has blocks in
    /// [`sieve_backend::quant`], `f32` otherwise), or `None` when it is absent.
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
    /// Per-layer suffixes of Gemma 3's extra norms: q_norm, k_norm, post-attention, post-MLP.
    pub extras: [&'static str; 4],
    /// Added to every RMSNorm gain as read: Gemma's checkpoints store `gain - 1` (GGUF
    /// files have the 1 added already).
    pub norm_offset: f32,
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
    extras: ["attn_q_norm.weight", "attn_k_norm.weight", "post_attention_norm.weight", "post_ffw_norm.weight"],
    norm_offset: 0.0,
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
    extras: [
        "self_attn.q_norm.weight",
        "self_attn.k_norm.weight",
        "post_attention_layernorm.weight",
        "post_feedforward_layernorm.weight",
    ],
    norm_offset: 0.0,
};

/// Gemma 3 in Hugging Face's layout: its `post_attention_layernorm` follows attention (the
/// MLP's input norm is `pre_feedforward_layernorm`), and norm gains are stored minus 1.
pub(crate) const HF_GEMMA3_NAMES: Naming = {
    let mut names = Naming { norm_offset: 1.0, ..HF_NAMES };
    names.parts[5] = "pre_feedforward_layernorm.weight";
    names
};

/// Reads every weight of `config` from `src` in the form `dtype` asks for, checking
/// shapes. `unpermute_qk` undoes the interleaved rotary layout of llama-family GGUF files.
pub(crate) fn read_weights(
    src: &mut dyn TensorSource,
    names: &Naming,
    config: &ModelConfig,
    unpermute_qk: bool,
    dtype: Dtype,
) -> Result<Weights> {
    let c = config;
    let (q_out, kv_out) = (c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim);
    let mut get = |name: &str, shape: &[usize]| -> Result<HostWeight> {
        let w = src
            .read(name)?
            .ok_or_else(|| Error::MissingTensor { source_name: src.source_name(), name: name.into() })?;
        check_shape(&src.source_name(), name, &w, shape)?;
        Ok(convert(w, dtype))
    };
    let offset = |w: HostWeight| -> HostWeight {
        if names.norm_offset == 0.0 {
            return w;
        }
        let w = w.into_f32();
        HostWeight::f32(w.data.iter().map(|&g| g + names.norm_offset).collect(), w.shape)
    };
    let embed = get(names.embed, &[c.vocab, c.hidden])?;
    let norm = offset(get(names.norm, &[c.hidden])?);
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
        let extra = |p: usize| (names.layer)(i, names.extras[p]);
        let qk_norm = match c.style.qk_norm {
            true => Some([offset(get(&extra(0), &[c.head_dim])?), offset(get(&extra(1), &[c.head_dim])?)]),
            false => None,
        };
        let post_norms = match c.style.post_norms {
            true => Some([offset(get(&extra(2), &[c.hidden])?), offset(get(&extra(3), &[c.hidden])?)]),
            false => None,
        };
        layers.push(LayerWeights {
            attn_norm: offset(get(&n(0), &[c.hidden])?),
            q,
            k,
            v: get(&n(3), &[kv_out, c.hidden])?,
            qkv_bias,
            o: get(&n(4), &[c.hidden, q_out])?,
            ffn_norm: offset(get(&n(5), &[c.hidden])?),
            gate: get(&n(6), &[c.ffn, c.hidden])?,
            up: get(&n(7), &[c.ffn, c.hidden])?,
            down: get(&n(8), &[c.hidden, c.ffn])?,
            qk_norm,
            post_norms,
        });
    }
    let lm_head = match src.read(names.lm_head)? {
        Some(w) => {
            check_shape(&src.source_name(), names.lm_head, &w, &[c.vocab, c.hidden])?;
            Some(convert(w, dtype))
        }
        None => None,
    };
    Ok(Weights { embed, layers, norm, lm_head })
}

fn empty() -> HostWeight {
    HostWeight::f32(Vec::new(), vec![0])
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
/// to the half-split one (pairs `i, i + head_dim/2`), head by head; packed rows move as
/// whole rows of blocks.
pub fn unpermute_rows(w: HostWeight, heads: usize, head_dim: usize) -> HostWeight {
    fn permute<T: Copy + Default>(v: &[T], row: usize, heads: usize, head_dim: usize) -> Vec<T> {
        let half = head_dim / 2;
        let mut out = vec![T::default(); v.len()];
        for h in 0..heads {
            for i in 0..half {
                for j in 0..2 {
                    let src = (h * head_dim + 2 * i + j) * row;
                    let dst = (h * head_dim + j * half + i) * row;
                    out[dst..dst + row].copy_from_slice(&v[src..src + row]);
                }
            }
        }
        out
    }
    let cols = if w.shape.len() == 2 { w.shape[1] } else { 1 };
    match &w.packed {
        Some(p) => {
            let bytes = permute(&p.bytes, p.dtype.row_bytes(cols), heads, head_dim);
            HostWeight::packed(p.dtype, bytes, w.shape)
        }
        None => HostWeight::f32(permute(&w.data, cols, heads, head_dim), w.shape),
    }
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
        let w = HostWeight::f32(vec![0., 1., 2., 3.], vec![4, 1]);
        assert_eq!(unpermute_rows(w, 1, 4).data, vec![0., 2., 1., 3.]);
    }
}
