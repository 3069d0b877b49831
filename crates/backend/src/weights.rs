//! Model weights in host memory, in the one layout every backend receives.
//!
//! Matrices are `[out, in]` row-major, and the q/k projections are in the half-split
//! rotary layout of Hugging Face checkpoints (the engine un-permutes GGUF files of the
//! llama family once, at load), so that backends implement one rotary embedding. A matrix
//! is either `f32` values or [`Packed`] blocks as its file stored them (GGUF formats,
//! f16, bf16); a backend without kernels for a format calls [`Weights::into_f32`].

use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::quant::{GgmlType, Packed, dequantize};

/// A tensor in host memory: `f32` values, or packed blocks.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct HostWeight {
    /// Row-major values; empty when the weight is [`HostWeight::packed`].
    pub data: Vec<f32>,
    /// Dimensions, outermost first.
    pub shape: Vec<usize>,
    /// The matrix as stored (`[rows, cols]` as rows of blocks), instead of `data`.
    pub packed: Option<Packed>,
}

impl HostWeight {
    /// An `f32` tensor.
    pub fn f32(data: Vec<f32>, shape: Vec<usize>) -> Self {
        Self { data, shape, packed: None }
    }

    /// A packed matrix of `shape` `[rows, cols]`.
    pub fn packed(dtype: GgmlType, bytes: Vec<u8>, shape: Vec<usize>) -> Self {
        Self { data: Vec::new(), shape, packed: Some(Packed::new(dtype, bytes)) }
    }

    /// Values per row (the last dimension).
    pub fn cols(&self) -> usize {
        self.shape.last().copied().unwrap_or(1)
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.packed.as_ref().map_or(self.data.len() * std::mem::size_of::<f32>(), |p| p.bytes.len())
    }

    /// Rows `rows` of a matrix (`[rows.len(), cols]`), in the same format.
    pub fn rows(&self, rows: std::ops::Range<usize>) -> Self {
        let cols = self.cols();
        let shape = vec![rows.len(), cols];
        match &self.packed {
            None => Self::f32(self.data[rows.start * cols..rows.end * cols].to_vec(), shape),
            Some(p) => {
                let rb = p.dtype.row_bytes(cols);
                Self::packed(p.dtype, p.bytes[rows.start * rb..rows.end * rb].to_vec(), shape)
            }
        }
    }

    /// The storage format's name (`F32` or a GGUF format).
    pub fn dtype_name(&self) -> &'static str {
        self.packed.as_ref().map_or("F32", |p| p.dtype.name())
    }

    /// The values as `f32` (decoded when packed).
    pub fn to_f32(&self) -> Vec<f32> {
        match &self.packed {
            None => self.data.clone(),
            Some(p) => {
                let mut out = vec![0f32; self.shape.iter().product()];
                dequantize(p.dtype, &p.bytes, &mut out);
                out
            }
        }
    }

    /// A matrix re-encoded as `to` (from its decoded values; kept as it is when it is in
    /// `to` already, decoded to `f32` when `to` has no encoder); vectors become `f32`.
    pub fn converted(self, to: GgmlType) -> Self {
        if self.shape.len() != 2 {
            return self.into_f32();
        }
        if self.packed.as_ref().is_some_and(|p| p.dtype == to) {
            return self;
        }
        match crate::quant::quantize(to, &self.to_f32()) {
            Some(bytes) => Self::packed(to, bytes, self.shape),
            None => self.into_f32(),
        }
    }

    /// The same tensor as `f32` values (decoded when packed).
    pub fn into_f32(self) -> Self {
        match self.packed {
            None => self,
            Some(_) => Self::f32(self.to_f32(), self.shape),
        }
    }
}

/// The tensors of one decoder layer, of any type: [`HostWeight`]s as loaded
/// ([`LayerWeights`]), or a backend's own tensors after [`Block::try_map`].
#[derive(Debug, Clone)]
pub struct Block<T> {
    /// RMSNorm before attention `[hidden]`.
    pub attn_norm: T,
    /// Query projection `[heads * head_dim, hidden]`.
    pub q: T,
    /// Key projection `[kv_heads * head_dim, hidden]`.
    pub k: T,
    /// Value projection `[kv_heads * head_dim, hidden]`.
    pub v: T,
    /// Biases of q, k, v (Qwen2).
    pub qkv_bias: Option<[T; 3]>,
    /// RMSNorm gains of each head of q and of k `[head_dim]` (Gemma 3).
    pub qk_norm: Option<[T; 2]>,
    /// Output projection `[hidden, heads * head_dim]`.
    pub o: T,
    /// RMSNorm before the MLP `[hidden]`.
    pub ffn_norm: T,
    /// Gate projection `[ffn, hidden]`.
    pub gate: T,
    /// Up projection `[ffn, hidden]`.
    pub up: T,
    /// Down projection `[hidden, ffn]`.
    pub down: T,
    /// RMSNorm gains after attention and after the MLP `[hidden]` (Gemma 3).
    pub post_norms: Option<[T; 2]>,
}

/// The weights of one decoder layer in host memory.
pub type LayerWeights = Block<HostWeight>;

impl<T> Block<T> {
    /// Every tensor converted by `f` (a backend uploading its weights), in field order.
    pub fn try_map<U, E>(self, mut f: impl FnMut(T) -> std::result::Result<U, E>) -> std::result::Result<Block<U>, E> {
        Ok(Block {
            attn_norm: f(self.attn_norm)?,
            q: f(self.q)?,
            k: f(self.k)?,
            v: f(self.v)?,
            qkv_bias: match self.qkv_bias {
                Some([bq, bk, bv]) => Some([f(bq)?, f(bk)?, f(bv)?]),
                None => None,
            },
            qk_norm: match self.qk_norm {
                Some([a, b]) => Some([f(a)?, f(b)?]),
                None => None,
            },
            o: f(self.o)?,
            ffn_norm: f(self.ffn_norm)?,
            gate: f(self.gate)?,
            up: f(self.up)?,
            down: f(self.down)?,
            post_norms: match self.post_norms {
                Some([a, b]) => Some([f(a)?, f(b)?]),
                None => None,
            },
        })
    }

    /// References to every tensor, for [`Block::try_map`] without giving the block up.
    pub fn as_ref(&self) -> Block<&T> {
        Block {
            attn_norm: &self.attn_norm,
            q: &self.q,
            k: &self.k,
            v: &self.v,
            qkv_bias: self.qkv_bias.as_ref().map(|[a, b, c]| [a, b, c]),
            qk_norm: self.qk_norm.as_ref().map(|[a, b]| [a, b]),
            o: &self.o,
            ffn_norm: &self.ffn_norm,
            gate: &self.gate,
            up: &self.up,
            down: &self.down,
            post_norms: self.post_norms.as_ref().map(|[a, b]| [a, b]),
        }
    }

    /// Every tensor, in field order (biases and q/k norms after `v`, post norms last).
    pub fn tensors(&self) -> impl Iterator<Item = &T> {
        let head = [&self.attn_norm, &self.q, &self.k, &self.v];
        let tail = [&self.o, &self.ffn_norm, &self.gate, &self.up, &self.down];
        head.into_iter()
            .chain(self.qkv_bias.iter().flatten())
            .chain(self.qk_norm.iter().flatten())
            .chain(tail)
            .chain(self.post_norms.iter().flatten())
    }
}

/// All weights of a decoder.
#[derive(Debug, Clone, Default)]
pub struct Weights {
    /// Token embedding `[vocab, hidden]`.
    pub embed: HostWeight,
    /// Decoder layers.
    pub layers: Vec<LayerWeights>,
    /// Final RMSNorm `[hidden]`.
    pub norm: HostWeight,
    /// LM head `[vocab, hidden]`; `None` when tied to the embedding.
    pub lm_head: Option<HostWeight>,
}

impl Weights {
    /// Bytes of all weights.
    pub fn bytes(&self) -> usize {
        let layer = |l: &LayerWeights| l.tensors().map(HostWeight::bytes).sum::<usize>();
        self.embed.bytes()
            + self.norm.bytes()
            + self.lm_head.as_ref().map_or(0, HostWeight::bytes)
            + self.layers.iter().map(layer).sum::<usize>()
    }

    /// Every tensor as `f32` values: what a backend without kernels for packed formats
    /// runs on.
    pub fn into_f32(self) -> Self {
        Weights {
            embed: self.embed.into_f32(),
            layers: self
                .layers
                .into_iter()
                .map(|l| l.try_map(|w| Ok::<_, std::convert::Infallible>(w.into_f32())).unwrap_or_else(|e| match e {}))
                .collect(),
            norm: self.norm.into_f32(),
            lm_head: self.lm_head.map(HostWeight::into_f32),
        }
    }

    /// Whether any tensor is packed.
    pub fn is_packed(&self) -> bool {
        self.tensors().any(|w| w.packed.is_some())
    }

    /// `self` as `f32` values, borrowed when nothing is packed, decoded into `slot`
    /// otherwise (for a backend that reads the weights once while building itself).
    pub fn as_f32<'a>(&'a self, slot: &'a mut Option<Weights>) -> &'a Weights {
        if self.is_packed() { slot.insert(self.clone().into_f32()) } else { self }
    }

    /// The storage formats of the weights, each with its tensor count (e.g. `Q4_1 x210`).
    pub fn formats(&self) -> Vec<(&'static str, usize)> {
        let mut counts: Vec<(&'static str, usize)> = Vec::new();
        for w in self.tensors() {
            match counts.iter_mut().find(|(n, _)| *n == w.dtype_name()) {
                Some((_, c)) => *c += 1,
                None => counts.push((w.dtype_name(), 1)),
            }
        }
        counts
    }

    /// The format every matrix (every 2-D tensor) is packed in, when they all share one;
    /// `None` when some matrix is `f32` or the formats differ.
    pub fn matrix_format(&self) -> Option<GgmlType> {
        let mut matrices = self.tensors().filter(|w| w.shape.len() == 2);
        let first = matrices.next()?.packed.as_ref()?.dtype;
        matrices.all(|w| w.packed.as_ref().is_some_and(|p| p.dtype == first)).then_some(first)
    }

    /// Every matrix converted to `to` (vectors stay `f32`); for tests and tools that build
    /// weights in memory.
    pub fn with_matrices_in(self, to: GgmlType) -> Self {
        let convert = |w: HostWeight| w.converted(to);
        Weights {
            embed: convert(self.embed),
            layers: self
                .layers
                .into_iter()
                .map(|l| l.try_map(|w| Ok::<_, std::convert::Infallible>(convert(w))).unwrap_or_else(|e| match e {}))
                .collect(),
            norm: self.norm.into_f32(),
            lm_head: self.lm_head.map(convert),
        }
    }

    /// Every tensor: the embedding, the final norm, an untied LM head, then each layer's.
    pub fn tensors(&self) -> impl Iterator<Item = &HostWeight> {
        [&self.embed, &self.norm]
            .into_iter()
            .chain(self.lm_head.iter())
            .chain(self.layers.iter().flat_map(|l| l.tensors()))
    }

    /// The LM head matrix (the embedding when tied).
    pub fn lm_head(&self) -> &HostWeight {
        self.lm_head.as_ref().unwrap_or(&self.embed)
    }
}

impl Weights {
    /// Checks every shape against `config` (backends may then index without checks).
    pub fn check(&self, config: &ModelConfig) -> Result<()> {
        let c = config;
        let (q_out, kv_out) = (c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim);
        let check = |name: &str, w: &HostWeight, shape: &[usize]| -> Result<()> {
            let n: usize = shape.iter().product();
            let stored = match &w.packed {
                None => w.data.len() == n,
                Some(p) => {
                    let cols = w.cols();
                    shape.len() == 2
                        && w.data.is_empty()
                        && cols.is_multiple_of(p.dtype.block_len())
                        && p.bytes.len() == shape[0] * p.dtype.row_bytes(cols)
                }
            };
            if w.shape != shape || !stored {
                return Err(Error::WeightShape {
                    name: name.into(),
                    expected: shape.to_vec(),
                    actual: w.shape.clone(),
                });
            }
            Ok(())
        };
        check("embed", &self.embed, &[c.vocab, c.hidden])?;
        check("norm", &self.norm, &[c.hidden])?;
        if let Some(h) = &self.lm_head {
            check("lm_head", h, &[c.vocab, c.hidden])?;
        }
        if self.layers.len() != c.n_layers {
            return Err(Error::Config(format!("{} layers of weights for {} layers", self.layers.len(), c.n_layers)));
        }
        for (i, l) in self.layers.iter().enumerate() {
            let name = |p: &str| format!("layers.{i}.{p}");
            check(&name("attn_norm"), &l.attn_norm, &[c.hidden])?;
            check(&name("q"), &l.q, &[q_out, c.hidden])?;
            check(&name("k"), &l.k, &[kv_out, c.hidden])?;
            check(&name("v"), &l.v, &[kv_out, c.hidden])?;
            check(&name("o"), &l.o, &[c.hidden, q_out])?;
            check(&name("ffn_norm"), &l.ffn_norm, &[c.hidden])?;
            check(&name("gate"), &l.gate, &[c.ffn, c.hidden])?;
            check(&name("up"), &l.up, &[c.ffn, c.hidden])?;
            check(&name("down"), &l.down, &[c.hidden, c.ffn])?;
            let presence = |what: &str, present: bool, wanted: bool| -> Result<()> {
                if present == wanted {
                    return Ok(());
                }
                Err(Error::Config(format!(
                    "layer {i}: {what} {} but the model's block {} them",
                    if present { "present" } else { "missing" },
                    if wanted { "has" } else { "has no" }
                )))
            };
            presence("q/k norms", l.qk_norm.is_some(), c.style.qk_norm)?;
            presence("post-attention and post-MLP norms", l.post_norms.is_some(), c.style.post_norms)?;
            if let Some([qn, kn]) = &l.qk_norm {
                check(&name("q_norm"), qn, &[c.head_dim])?;
                check(&name("k_norm"), kn, &[c.head_dim])?;
            }
            if let Some([pa, pf]) = &l.post_norms {
                check(&name("post_attn_norm"), pa, &[c.hidden])?;
                check(&name("post_ffn_norm"), pf, &[c.hidden])?;
            }
            match (&l.qkv_bias, c.qkv_bias) {
                (Some([bq, bk, bv]), true) => {
                    check(&name("q_bias"), bq, &[q_out])?;
                    check(&name("k_bias"), bk, &[kv_out])?;
                    check(&name("v_bias"), bv, &[kv_out])?;
                }
                (None, false) => {}
                (_, wanted) => {
                    return Err(Error::Config(format!(
                        "layer {i}: q/k/v biases {} but the configuration says qkv_bias = {wanted}",
                        if wanted { "missing" } else { "present" }
                    )));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_of_a_matrix_hold_the_same_values_in_the_same_format() {
        let (rows, cols) = (6, 64);
        let values: Vec<f32> = (0..rows * cols).map(|i| ((i * 37) % 101) as f32 / 50.0 - 1.0).collect();
        let plain = HostWeight::f32(values, vec![rows, cols]);
        for w in [plain.clone(), plain.clone().converted(GgmlType::Q8_0), plain.converted(GgmlType::Q4_1)] {
            let whole = w.to_f32();
            let part = w.rows(2..5);
            assert_eq!(part.shape, vec![3, cols]);
            assert_eq!(part.dtype_name(), w.dtype_name());
            assert_eq!(part.to_f32(), whole[2 * cols..5 * cols]);
        }
    }
}
