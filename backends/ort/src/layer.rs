//! The ONNX graphs of the decoder: the embedding lookup, one graph per decoder layer (its
//! weights as initializers), and the final norm with the LM head.
//!
//! One graph per layer, rather than one graph with the weights as inputs, lets ONNX Runtime
//! treat the weights as constants: it pre-packs them for its GEMM kernels once, when the
//! session is created, instead of reading unpacked inputs on every call. Each weight lives
//! in exactly one session, so memory is the same either way.

use std::borrow::Cow;

use sieve_backend::{Activation, HostWeight, LayerWeights, ModelConfig, Weights};

use crate::graph::{Attr, Dim, FLOAT, Graph, INT64};
use crate::nbits;

/// Names of a decoder-layer graph's inputs, in the order the backend passes them.
pub const LAYER_INPUTS: [&str; 9] =
    ["hidden", "positions", "cos", "sin", "past_positions", "past_keys", "past_values", "probe_start", "key_bias"];
/// Names of a decoder-layer graph's outputs.
pub const LAYER_OUTPUTS: [&str; 6] = ["hidden_out", "keys", "values", "attention", "attention_sums", "queries"];

/// `w`'s values: its own, or decoded to `f32` when packed.
fn values(w: &HostWeight) -> Cow<'_, [f32]> {
    if w.packed.is_some() { Cow::Owned(w.to_f32()) } else { Cow::Borrowed(&w.data) }
}

/// `w` (`[out, in]`, as stored) transposed to `[in, out]` for `MatMul(x, w)`.
fn transposed(w: &HostWeight) -> (Vec<usize>, Vec<f32>) {
    let (rows, cols) = (w.shape[0], w.shape[1]);
    let data = values(w);
    let mut out = vec![0f32; rows * cols];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = data[r * cols + c];
        }
    }
    (vec![cols, rows], out)
}

/// The input's sums per block of [`nbits::BLOCK`] values (`[n, blocks]`), made once per
/// input value and graph: what Q4_1's block offsets multiply.
#[derive(Default)]
struct BlockSums(std::collections::HashMap<String, String>);

impl BlockSums {
    fn of(&mut self, g: &mut Graph, x: &str, blocks: usize) -> String {
        if let Some(s) = self.0.get(x) {
            return s.clone();
        }
        let shape = g.ints(&[-1, blocks as i64, nbits::BLOCK as i64]);
        let r = g.node("Reshape", &[x, &shape], &[]);
        let axis = g.ints(&[2]);
        let s = g.node("ReduceSum", &[&r, &axis], &[("keepdims", Attr::Int(0))]);
        self.0.insert(x.to_string(), s.clone());
        s
    }
}

/// `x · wᵀ` with `w` kept in its blocks (see [`nbits`]).
fn matmul_nbits(g: &mut Graph, sums: &mut BlockSums, x: &str, name: &str, q: nbits::NBits) -> String {
    let (rows, cols, blocks) = (q.rows, q.cols, q.blocks());
    let mut y: Option<String> = None;
    for (i, p) in q.parts.into_iter().enumerate() {
        let b = g.bytes(&format!("{name}.q{i}"), &[rows, blocks, nbits::BLOCK_BYTES], p.data);
        let scales = g.weight(&format!("{name}.scales{i}"), &[rows * blocks], &p.scales);
        let mut inputs = vec![x.to_string(), b, scales];
        if let Some(z) = p.zero_points {
            inputs.push(g.bytes(&format!("{name}.zero_points{i}"), &[z.len()], z));
        }
        let inputs: Vec<&str> = inputs.iter().map(String::as_str).collect();
        let attrs = [
            ("K", Attr::Int(cols as i64)),
            ("N", Attr::Int(rows as i64)),
            ("bits", Attr::Int(4)),
            ("block_size", Attr::Int(nbits::BLOCK as i64)),
            ("accuracy_level", Attr::Int(nbits::ACCURACY_LEVEL)),
        ];
        let product = g.contrib("MatMulNBits", &inputs, &attrs);
        y = Some(match y {
            Some(sum) => g.node("Add", &[&sum, &product], &[]),
            None => product,
        });
    }
    let y = y.expect("every conversion has a product");
    match q.mins {
        Some(mins) => {
            let s = sums.of(g, x, blocks);
            let m = g.weight(&format!("{name}.mins"), &[blocks, rows], &mins);
            let offsets = g.node("MatMul", &[&s, &m], &[]);
            g.node("Add", &[&y, &offsets], &[])
        }
        None => y,
    }
}

/// `x · wᵀ (+ bias)`: on the blocks when `w` is packed in a format [`nbits`] converts
/// exactly, else on `f32` values.
fn linear(
    g: &mut Graph,
    sums: &mut BlockSums,
    x: &str,
    name: &str,
    w: &HostWeight,
    bias: Option<&HostWeight>,
) -> String {
    let y = match nbits::from_packed(w) {
        Some(q) => matmul_nbits(g, sums, x, name, q),
        None => {
            let (shape, data) = transposed(w);
            let w = g.weight(name, &shape, &data);
            g.node("MatMul", &[x, &w], &[])
        }
    };
    match bias {
        Some(b) => {
            let b = g.weight(&format!("{name}.bias"), &b.shape, &b.data);
            g.node("Add", &[&y, &b], &[])
        }
        None => y,
    }
}

fn rms_norm(g: &mut Graph, x: &str, name: &str, w: &HostWeight, eps: f64) -> String {
    let w = g.weight(name, &w.shape, &w.data);
    g.node("RMSNormalization", &[x, &w], &[("axis", Attr::Int(-1)), ("epsilon", Attr::Float(eps as f32))])
}

/// Half-split rotary embedding of `x` `[heads, n, head_dim]` with `cos`/`sin` `[n, head_dim/2]`.
fn rope(g: &mut Graph, x: &str, cos: &str, sin: &str, head_dim: usize) -> String {
    let half = (head_dim / 2) as i64;
    let (zero, mid, end, axis) = (g.ints(&[0]), g.ints(&[half]), g.ints(&[head_dim as i64]), g.ints(&[2]));
    let x1 = g.node("Slice", &[x, &zero, &mid, &axis], &[]);
    let x2 = g.node("Slice", &[x, &mid, &end, &axis], &[]);
    let (x1c, x2s) = (g.node("Mul", &[&x1, cos], &[]), g.node("Mul", &[&x2, sin], &[]));
    let a = g.node("Sub", &[&x1c, &x2s], &[]);
    let (x2c, x1s) = (g.node("Mul", &[&x2, cos], &[]), g.node("Mul", &[&x1, sin], &[]));
    let b = g.node("Add", &[&x2c, &x1s], &[]);
    g.node("Concat", &[&a, &b], &[("axis", Attr::Int(2))])
}

/// `x` `[n, heads * head_dim]` as `[heads, n, head_dim]`.
fn split_heads(g: &mut Graph, x: &str, heads: usize, head_dim: usize) -> String {
    let shape = g.ints(&[-1, heads as i64, head_dim as i64]);
    let r = g.node("Reshape", &[x, &shape], &[]);
    g.node("Transpose", &[&r], &[("perm", Attr::Ints(vec![1, 0, 2]))])
}

/// The graph of decoder layer `index`.
///
/// Inputs: `hidden` `[n, hidden]`; `positions` (int64 `[n]`, original token positions);
/// `cos`/`sin` `[n, head_dim/2]` of those positions; `past_positions` (int64 `[m]`) with
/// `past_keys`/`past_values` `[kv_heads, m, head_dim]`, the layer's cache (m may be 0); and
/// `probe_start` (int64 `[1]`), the first query row whose attention is returned; and
/// `key_bias` `[heads, 1, m + n]`, added to the mask (-inf on a head's padding rows when the
/// heads keep different numbers of entries), or `[1, 1, 1]` zero.
///
/// Outputs: `hidden_out` `[n, hidden]`; `keys`/`values` `[kv_heads, m + n, head_dim]`, the
/// cache with this call's tokens appended (keys after RoPE); `attention`
/// `[heads, n - probe_start, m + n]`, the attention probabilities of the last queries; and
/// `attention_sums` `[heads, 1, m + n]`, the probabilities summed over all queries; and
/// `queries` `[heads, n, head_dim]`, the queries before the rotary embedding. A query
/// at position p sees the keys at positions ≤ p (the positions may have gaps after pruning).
pub fn decoder_layer(c: &ModelConfig, index: usize, w: &LayerWeights) -> Graph {
    let (nh, nkv, hd) = (c.n_heads, c.n_kv_heads, c.head_dim);
    let p = |name: &str| format!("layers.{index}.{name}");
    let mut g = Graph::new(&format!("sieve decoder layer {index}"));
    let (n, m, half) = (Dim::Named("n"), Dim::Named("m"), Dim::Fixed(hd / 2));
    let hidden = g.input("hidden", FLOAT, Some(&[n.clone(), Dim::Fixed(c.hidden)]));
    let positions = g.input("positions", INT64, Some(std::slice::from_ref(&n)));
    let cos = g.input("cos", FLOAT, Some(&[n.clone(), half.clone()]));
    let sin = g.input("sin", FLOAT, Some(&[n.clone(), half]));
    let past_positions = g.input("past_positions", INT64, Some(std::slice::from_ref(&m)));
    let cache_dims = [Dim::Fixed(nkv), m, Dim::Fixed(hd)];
    let past_keys = g.input("past_keys", FLOAT, Some(&cache_dims));
    let past_values = g.input("past_values", FLOAT, Some(&cache_dims));
    let probe_start = g.input("probe_start", INT64, Some(&[Dim::Fixed(1)]));
    let key_bias = g.input("key_bias", FLOAT, Some(&[Dim::Named("b"), Dim::Fixed(1), Dim::Named("mb")]));

    // Attention.
    let mut sums = BlockSums::default();
    let h = rms_norm(&mut g, &hidden, &p("attn_norm"), &w.attn_norm, c.rms_eps);
    let bias = w.qkv_bias.as_ref();
    let q = linear(&mut g, &mut sums, &h, &p("q"), &w.q, bias.map(|b| &b[0]));
    let k = linear(&mut g, &mut sums, &h, &p("k"), &w.k, bias.map(|b| &b[1]));
    let v = linear(&mut g, &mut sums, &h, &p("v"), &w.v, bias.map(|b| &b[2]));
    let mut q = split_heads(&mut g, &q, nh, hd);
    let mut k = split_heads(&mut g, &k, nkv, hd);
    if let Some([qn, kn]) = &w.qk_norm {
        q = rms_norm(&mut g, &q, &p("q_norm"), qn, c.rms_eps);
        k = rms_norm(&mut g, &k, &p("k_norm"), kn, c.rms_eps);
    }
    let queries = g.named("queries", "Identity", &[&q], &[]);
    let q = rope(&mut g, &q, &cos, &sin, hd);
    let k = rope(&mut g, &k, &cos, &sin, hd);
    let v = split_heads(&mut g, &v, nkv, hd);
    let keys = g.named("keys", "Concat", &[&past_keys, &k], &[("axis", Attr::Int(1))]);
    let values = g.named("values", "Concat", &[&past_values, &v], &[("axis", Attr::Int(1))]);

    // The causal mask over original positions: [n, m + n], 0 where visible, -inf elsewhere.
    let key_positions = g.node("Concat", &[&past_positions, &positions], &[("axis", Attr::Int(0))]);
    let (axis0, axis1) = (g.ints(&[0]), g.ints(&[1]));
    let row = g.node("Unsqueeze", &[&key_positions, &axis0], &[]);
    let col = g.node("Unsqueeze", &[&positions, &axis1], &[]);
    let mut visible = g.node("LessOrEqual", &[&row, &col], &[]);
    if let Some(window) = c.window(index) {
        // A local layer: keys after `position - window` only.
        let age = g.node("Sub", &[&col, &row], &[]);
        let limit = g.ints(&[window as i64]);
        let recent = g.node("Less", &[&age, &limit], &[]);
        visible = g.node("And", &[&visible, &recent], &[]);
    }
    let (zero, neg_inf) = (g.scalar(0.0), g.scalar(f32::NEG_INFINITY));
    let mask = g.node("Where", &[&visible, &zero, &neg_inf], &[]);
    let mask = g.node("Add", &[&mask, &key_bias], &[]);

    // Grouped-query attention: query heads kv-major, [kv_heads, group * n, head_dim].
    let scale = g.scalar(c.query_scale() as f32);
    let q = g.node("Mul", &[&q, &scale], &[]);
    let grouped = g.ints(&[nkv as i64, -1, hd as i64]);
    let q = g.node("Reshape", &[&q, &grouped], &[]);
    let kt = g.node("Transpose", &[&keys], &[("perm", Attr::Ints(vec![0, 2, 1]))]);
    let scores = g.node("MatMul", &[&q, &kt], &[]);
    let per_head = g.ints(&[nh as i64, -1, 0]);
    let scores = g.node("Reshape", &[&scores, &per_head], &[]);
    let scores = g.node("Add", &[&scores, &mask], &[]);
    let probs = g.node("Softmax", &[&scores], &[("axis", Attr::Int(-1))]);
    let grouped_probs = g.ints(&[nkv as i64, -1, 0]);
    let pg = g.node("Reshape", &[&probs, &grouped_probs], &[]);
    let ctx = g.node("MatMul", &[&pg, &values], &[]);
    let heads = g.ints(&[nh as i64, -1, hd as i64]);
    let ctx = g.node("Reshape", &[&ctx, &heads], &[]);
    let ctx = g.node("Transpose", &[&ctx], &[("perm", Attr::Ints(vec![1, 0, 2]))]);
    let flat = g.ints(&[-1, (nh * hd) as i64]);
    let ctx = g.node("Reshape", &[&ctx, &flat], &[]);
    let mut o = linear(&mut g, &mut sums, &ctx, &p("o"), &w.o, None);
    if let Some([post_attn, _]) = &w.post_norms {
        o = rms_norm(&mut g, &o, &p("post_attn_norm"), post_attn, c.rms_eps);
    }
    let x = g.node("Add", &[&hidden, &o], &[]);

    // What the scorers read.
    let (end, axis) = (g.ints(&[i64::MAX]), g.ints(&[1]));
    let attention = g.named("attention", "Slice", &[&probs, &probe_start, &end, &axis], &[]);
    let attention_sums = g.named("attention_sums", "ReduceSum", &[&probs, &axis], &[("keepdims", Attr::Int(1))]);

    // Gated MLP.
    let h = rms_norm(&mut g, &x, &p("ffn_norm"), &w.ffn_norm, c.rms_eps);
    let gate = linear(&mut g, &mut sums, &h, &p("gate"), &w.gate, None);
    let gate = match c.style.activation {
        Activation::Silu => {
            let sig = g.node("Sigmoid", &[&gate], &[]);
            g.node("Mul", &[&gate, &sig], &[])
        }
        Activation::GeluTanh => g.node("Gelu", &[&gate], &[("approximate", Attr::Str("tanh".into()))]),
    };
    let up = linear(&mut g, &mut sums, &h, &p("up"), &w.up, None);
    let act = g.node("Mul", &[&gate, &up], &[]);
    let mut down = linear(&mut g, &mut sums, &act, &p("down"), &w.down, None);
    if let Some([_, post_ffn]) = &w.post_norms {
        down = rms_norm(&mut g, &down, &p("post_ffn_norm"), post_ffn, c.rms_eps);
    }
    let out = g.named("hidden_out", "Add", &[&x, &down], &[]);

    for name in [&out, &keys, &values, &attention, &attention_sums, &queries] {
        g.output(name, FLOAT);
    }
    g
}

/// The embedding lookup: int64 `ids` `[n]` to `[n, hidden]`, times the model's
/// embedding scale (a packed table decoded: the backend looks packed rows up itself).
pub fn embedding(c: &ModelConfig, w: &Weights) -> Graph {
    let mut g = Graph::new("sieve embedding");
    let ids = g.input("ids", INT64, Some(&[Dim::Named("n")]));
    let table = g.weight("embed", &w.embed.shape, &values(&w.embed));
    let out = if c.style.embed_scale == 1.0 {
        g.named("hidden", "Gather", &[&table, &ids], &[("axis", Attr::Int(0))])
    } else {
        let rows = g.node("Gather", &[&table, &ids], &[("axis", Attr::Int(0))]);
        let scale = g.scalar(c.style.embed_scale);
        g.named("hidden", "Mul", &[&rows, &scale], &[])
    };
    g.output(&out, FLOAT);
    g
}

/// The final norm (`norm`) and rows `head` of the LM head: `hidden` `[n, hidden]` to
/// `logits` `[n, head rows]`.
pub fn lm_head(c: &ModelConfig, norm: &HostWeight, head: &HostWeight) -> Graph {
    let mut g = Graph::new("sieve lm head");
    let x = g.input("hidden", FLOAT, Some(&[Dim::Named("n"), Dim::Fixed(c.hidden)]));
    let h = rms_norm(&mut g, &x, "norm", norm, c.rms_eps);
    let logits = match nbits::from_packed(head) {
        Some(q) => matmul_nbits(&mut g, &mut BlockSums::default(), &h, "lm_head", q),
        None => {
            let table = g.weight("lm_head", &head.shape, &values(head));
            g.node("Gemm", &[&h, &table], &[("transB", Attr::Int(1))])
        }
    };
    let out = g.named("logits", "Identity", &[&logits], &[]);
    g.output(&out, FLOAT);
    g
}

#[cfg(test)]
mod tests {
    use sieve_backend::quant::GgmlType;
    use sieve_backend::synthetic;

    use super::*;
    use crate::onnx::UINT8;

    #[test]
    fn packed_matrices_stay_in_their_blocks() {
        let config = synthetic::packed_config();
        let f32_weights = synthetic::weights(&config, 1, false);
        let plain = decoder_layer(&config, 0, &f32_weights.layers[0]);
        assert_eq!((plain.count("MatMulNBits"), plain.initializer_bytes(UINT8)), (0, 0));
        let matrices: usize =
            f32_weights.layers[0].tensors().filter(|t| t.shape.len() == 2).map(|t| t.data.len()).sum();
        for (dtype, products) in [(GgmlType::Q4_0, 7), (GgmlType::Q4_1, 7), (GgmlType::Q8_0, 14)] {
            let w = f32_weights.clone().with_matrices_in(dtype);
            let g = decoder_layer(&config, 0, &w.layers[0]);
            assert_eq!(g.count("MatMulNBits"), products, "{dtype:?}");
            // Half a byte per value and product, and packed zero points (one nibble per
            // block); the f32 left is norms, scales and offsets.
            let (values, bytes) = (products / 7 * matrices / 2, g.initializer_bytes(UINT8));
            assert!((values..=values + values / 16).contains(&bytes), "{dtype:?}: {bytes} bytes for {values}");
            let f32_bytes = g.initializer_bytes(FLOAT);
            assert!(f32_bytes < 4 * matrices / 10, "{dtype:?}: {f32_bytes} f32 bytes against {} as f32", 4 * matrices);
        }
        // Q4_1's block sums: one per distinct input (attention input, context, MLP input,
        // MLP product), beside the attention sums' ReduceSum.
        let w = f32_weights.with_matrices_in(GgmlType::Q4_1);
        assert_eq!(decoder_layer(&config, 0, &w.layers[0]).count("ReduceSum"), 4 + 1);
    }
}
