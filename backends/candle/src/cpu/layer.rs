//! One decoder layer on the CPU with sieve's own kernels: fused q/k/v and gate/up
//! projections, the attention of [`super::attention`], the KV cache written in place.

use std::sync::{Mutex, PoisonError};

use candle_core::{Device, Tensor};
use sieve_backend::{Activation, Block, HostWeight, LayerCache, ModelConfig, Probe};

use super::attention::{INLINE_WORK, ProbeOut, Shape, attention};
use super::exp::exp_shifted_sum;
use super::gemm::{View, matmul_into};
use super::matvec::{Out, matmul_t_at};
use super::pool::Pool;
use super::scratch::{Buf, zeroed};
use super::weights::{Fused, Matrix};
use crate::error::Result;
use crate::tensor::CandleTensor;

/// Rows up to which a projection runs as matrix × few vectors rather than a GEMM: the
/// weights are read once either way, and the vector kernel has no packing to pay for.
pub const SMALL_BATCH: usize = 4;

/// [`SMALL_BATCH`] for a decode step of several sequences (one row each), which covers a
/// server's batches: measured on the default model with 8 sequences, the vector kernel
/// decodes 229 tokens/s on the stored blocks where the GEMM on decoded rows did 52 (174
/// against 107 with f32 weights), and a sequence's logits are the same bitwise whether it
/// is stepped alone or in a batch (the kernel computes each row alone).
pub const DECODE_BATCH: usize = 16;

/// Entries a cache grows by beyond what a call needs, so that decode steps write in place
/// instead of reallocating the cache at every token.
pub const CACHE_HEADROOM: usize = 256;

/// A decoder layer's weights, fused for the kernels.
pub struct CpuLayer {
    attn_norm: Vec<f32>,
    ffn_norm: Vec<f32>,
    /// Gains of the per-head q and k norms (Gemma 3).
    qk_norm: Option<[Vec<f32>; 2]>,
    /// Gains of the norms after attention and after the MLP (Gemma 3).
    post_norms: Option<[Vec<f32>; 2]>,
    /// q, k and v side by side: `[q_out + 2 kv_out, hidden]`.
    qkv: Fused,
    qkv_bias: Option<Vec<f32>>,
    o: Matrix,
    /// gate and up side by side: `[2 ffn, hidden]`.
    gate_up: Fused,
    down: Matrix,
}

fn matrix(w: HostWeight) -> Matrix {
    Matrix::from_weight(w)
}

impl CpuLayer {
    /// Fuses one layer's host weights.
    pub fn new(w: Block<HostWeight>) -> Self {
        let qkv_bias = w.qkv_bias.map(|[bq, bk, bv]| [bq.to_f32(), bk.to_f32(), bv.to_f32()].concat());
        Self {
            attn_norm: w.attn_norm.to_f32(),
            ffn_norm: w.ffn_norm.to_f32(),
            qk_norm: w.qk_norm.map(|[q, k]| [q.to_f32(), k.to_f32()]),
            post_norms: w.post_norms.map(|[a, f]| [a.to_f32(), f.to_f32()]),
            qkv: Fused::new(vec![matrix(w.q), matrix(w.k), matrix(w.v)]),
            qkv_bias,
            o: matrix(w.o),
            gate_up: Fused::new(vec![matrix(w.gate), matrix(w.up)]),
            down: matrix(w.down),
        }
    }

    /// Bytes of weights held.
    pub fn bytes(&self) -> usize {
        let extras = self.qk_norm.iter().chain(&self.post_norms).flatten().map(Vec::len).sum::<usize>();
        4 * (self.attn_norm.len() + self.ffn_norm.len() + self.qkv_bias.as_ref().map_or(0, Vec::len) + extras)
            + self.qkv.bytes()
            + self.o.bytes()
            + self.gate_up.bytes()
            + self.down.bytes()
    }
}

/// Output columns per GEMM task: a multiple of the kernel's tile width, large enough that
/// packing the input rows once per task stays small against the product.
const GEMM_COLUMNS: usize = 192;

/// `y = x · [W₁; W₂; ...]ᵀ` for `n` rows of `x`: the outputs of `parts` side by side.
/// Large products are split by output columns (weight rows) across the CPU pool, each task
/// decoding its own rows of a packed matrix, so that every parallel step of a layer runs on
/// one pool and a packed matrix is never held decoded whole.
/// `vector_rows` is the most rows that still run as matrix × few vectors.
pub fn project(parts: &[Matrix], x: &[f32], n: usize, vector_rows: usize) -> Buf {
    let total: usize = parts.iter().map(Matrix::rows).sum();
    let cols = parts[0].cols();
    let mut y = zeroed(n * total);
    let out = Out::new(&mut y);
    if n <= vector_rows {
        let mut offset = 0;
        for m in parts {
            matmul_t_at(m, x, out, total, offset);
            offset += m.rows();
        }
        return y;
    }
    // (part, first row, end row, column of the output)
    let mut tasks = Vec::new();
    let mut offset = 0;
    for (p, m) in parts.iter().enumerate() {
        for c0 in (0..m.rows()).step_by(GEMM_COLUMNS) {
            tasks.push((p, c0, (c0 + GEMM_COLUMNS).min(m.rows()), offset + c0));
        }
        offset += m.rows();
    }
    Pool::global().run(tasks.len(), &|t| {
        let (p, c0, c1, at) = tasks[t];
        let mut scratch = Vec::new();
        let w = parts[p].rows_f32(c0, c1 - c0, &mut scratch);
        let wt = View::transposed(w, cols, c1 - c0);
        // SAFETY: task `t` writes only columns `at..at + c1 - c0` of `y` (`n` rows of
        // `total`), which no other task writes; `y` outlives the pool's run.
        unsafe { matmul_into(View::rows(x, n, cols), wt, out.at(at), total, false) };
    });
    y
}

/// RMSNorm of each row of `x` (`[n, d]`) with gain `g`.
pub fn rms_norm(x: &[f32], g: &[f32], eps: f64) -> Buf {
    let mut y = zeroed(x.len());
    y.copy_from_slice(x);
    rms_norm_in_place(&mut y, g, eps);
    y
}

/// [`rms_norm`] written over its input.
fn rms_norm_in_place(x: &mut [f32], g: &[f32], eps: f64) {
    let d = g.len();
    for row in x.chunks_exact_mut(d) {
        let ss: f32 = super::simd::dot(row, row);
        let scale = (1.0 / (f64::from(ss) / d as f64 + eps).sqrt()) as f32;
        row.iter_mut().zip(g).for_each(|(v, &w)| *v = *v * scale * w);
    }
}

/// `act(gate) * up` for rows `[gate | up]` of `gu` (`[n, 2f]`), into `[n, f]`.
fn gated(gu: &[f32], f: usize, activation: Activation) -> Buf {
    let n = gu.len() / (2 * f);
    let mut act = zeroed(n * f);
    for (row, out) in gu.chunks_exact(2 * f).zip(act.chunks_exact_mut(f)) {
        let (gate, up) = row.split_at(f);
        if activation != Activation::Silu {
            for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
                *o = activation.apply(g) * u;
            }
            continue;
        }
        // SiLU with the vectorised exponential: exp(-g) first, then g / (1 + exp(-g)).
        for (o, &g) in out.iter_mut().zip(gate) {
            *o = -g;
        }
        exp_shifted_sum(out, 0.0);
        for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
            *o = g / (1.0 + *o) * u;
        }
    }
    act
}

/// Rotates heads in place: half-split pairs `(i, i + hd/2)`, angles of `positions`.
fn rope(
    x: &mut [f32],
    stride: usize,
    offset: usize,
    heads: usize,
    hd: usize,
    positions: &[usize],
    tables: (&[f32], &[f32]),
) {
    let half = hd / 2;
    for (r, &p) in positions.iter().enumerate() {
        let (cos, sin) = (&tables.0[p * half..(p + 1) * half], &tables.1[p * half..(p + 1) * half]);
        for h in 0..heads {
            let head = &mut x[r * stride + offset + h * hd..r * stride + offset + (h + 1) * hd];
            let (a, b) = head.split_at_mut(half);
            for i in 0..half {
                let (x1, x2) = (a[i], b[i]);
                a[i] = x1 * cos[i] - x2 * sin[i];
                b[i] = x2 * cos[i] + x1 * sin[i];
            }
        }
    }
}

/// The cache's storage with room for `extra` more entries, growing it (live entries
/// copied, [`CACHE_HEADROOM`] to spare) when it has not.
fn reserve(cache: &mut LayerCache<CandleTensor>, extra: usize, kv: usize, hd: usize) -> Result<(Tensor, Tensor)> {
    let len = cache.len();
    if let Some((k, v)) = cache.storage()
        && cache.capacity() >= len + extra
    {
        return Ok((k.0.clone(), v.0.clone()));
    }
    let cap = len + extra + CACHE_HEADROOM;
    let k = Tensor::zeros((kv, cap, hd), candle_core::DType::F32, &Device::Cpu)?;
    let v = Tensor::zeros((kv, cap, hd), candle_core::DType::F32, &Device::Cpu)?;
    if let (Some(old_k), Some(old_v)) = (cache.keys()?, cache.values()?) {
        k.slice_set(&old_k.0.contiguous()?, 1, 0)?;
        v.slice_set(&old_v.0.contiguous()?, 1, 0)?;
    }
    cache.set_storage(CandleTensor(k.clone()), CandleTensor(v.clone()));
    Ok((k, v))
}

/// Runs `f` on the values of a contiguous CPU `f32` tensor, without copying them.
pub fn with_slice<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    let (storage, layout) = t.storage_and_layout();
    let candle_core::Storage::Cpu(cpu) = &*storage else {
        return Err(candle_core::Error::Msg("the CPU kernels got a tensor that is not on the CPU".into()).into());
    };
    let data = cpu.as_slice::<f32>()?;
    let (a, b) = layout
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg("the CPU kernels got a non-contiguous tensor".into()))?;
    Ok(f(&data[a..b]))
}

/// `[n, kv, hd]` rows (at column `offset` of rows `stride` wide) as `[kv, n, hd]`.
fn by_head(x: &[f32], stride: usize, offset: usize, n: usize, kv: usize, hd: usize) -> Vec<f32> {
    let mut out = vec![0f32; n * kv * hd];
    for h in 0..kv {
        for r in 0..n {
            let src = r * stride + offset + h * hd;
            out[(h * n + r) * hd..(h * n + r + 1) * hd].copy_from_slice(&x[src..src + hd]);
        }
    }
    out
}

/// What a layer returns: hidden states `[n, hidden]` and the probes asked for.
pub struct Forward {
    pub hidden: Vec<f32>,
    pub attention: Option<(Vec<f32>, usize)>,
    pub sums: Option<Vec<f32>>,
    /// `[heads, n, head_dim]` before the rotary embedding.
    pub queries: Option<Vec<f32>>,
}

/// One sequence of a batched layer call: its rows' positions, its cache, its probe.
pub struct Seq<'a> {
    pub positions: &'a [usize],
    pub cache: &'a mut LayerCache<CandleTensor>,
    pub probe: Probe,
}

/// A sequence's probes, before its hidden rows are known.
struct Probes {
    attention: Option<(Vec<f32>, usize)>,
    sums: Option<Vec<f32>>,
    queries: Option<Vec<f32>>,
}

impl CpuLayer {
    /// The layer on `x` (`[n, hidden]`) at `positions`, appending to `cache` in place.
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        c: &ModelConfig,
        index: usize,
        x_in: &[f32],
        positions: &[usize],
        cache: &mut LayerCache<CandleTensor>,
        probe: Probe,
        tables: (&[f32], &[f32]),
    ) -> Result<Forward> {
        let mut seqs = [Seq { positions, cache, probe }];
        let mut out = self.forward_batch(c, index, x_in, &mut seqs, tables)?;
        Ok(out.remove(0))
    }

    /// The layer on the rows of several sequences at once (`x` holds each sequence's rows
    /// in turn): every projection reads its weights once for all the rows, and each
    /// sequence attends over its own cache.
    pub fn forward_batch(
        &self,
        c: &ModelConfig,
        index: usize,
        x_in: &[f32],
        seqs: &mut [Seq<'_>],
        tables: (&[f32], &[f32]),
    ) -> Result<Vec<Forward>> {
        let positions: Vec<usize> = seqs.iter().flat_map(|s| s.positions.iter().copied()).collect();
        let n = positions.len();
        let (hd, nh, nkv) = (c.head_dim, c.n_heads, c.n_kv_heads);
        let (q_out, kv_out) = (nh * hd, nkv * hd);
        let width = q_out + 2 * kv_out;
        // A decode step: one new row per sequence, after any revived rows (which fall
        // among the cached positions).
        let decode = seqs
            .iter()
            .all(|s| s.positions.len() == 1 || s.cache.positions().last().is_some_and(|&last| s.positions[0] < last));
        let vector_rows = if decode { DECODE_BATCH } else { SMALL_BATCH };

        let h = rms_norm(x_in, &self.attn_norm, c.rms_eps);
        let mut qkv = project(self.qkv.parts(), &h, n, vector_rows);
        drop(h);
        if let Some(b) = &self.qkv_bias {
            for row in qkv.chunks_exact_mut(width) {
                row.iter_mut().zip(b).for_each(|(v, b)| *v += b);
            }
        }
        if let Some([qn, kn]) = &self.qk_norm {
            for row in qkv.chunks_exact_mut(width) {
                let (q, rest) = row.split_at_mut(q_out);
                for (x, g) in
                    q.chunks_exact_mut(hd).map(|x| (x, qn)).chain(rest[..kv_out].chunks_exact_mut(hd).map(|x| (x, kn)))
                {
                    rms_norm_in_place(x, g, c.rms_eps);
                }
            }
        }
        let mut probes = Vec::with_capacity(seqs.len());
        let mut row0 = 0;
        for s in seqs.iter() {
            let rows = &qkv[row0 * width..(row0 + s.positions.len()) * width];
            let queries = s.probe.queries.then(|| by_head(rows, width, 0, s.positions.len(), nh, hd));
            probes.push(Probes { attention: None, sums: None, queries });
            row0 += s.positions.len();
        }
        rope(&mut qkv, width, 0, nh, hd, &positions, tables);
        rope(&mut qkv, width, q_out, nkv, hd, &positions, tables);

        // Queries [n, nh, hd], scaled.
        let scale = c.query_scale() as f32;
        let mut q = zeroed(n * q_out);
        for (row, out) in qkv.chunks_exact(width).zip(q.chunks_exact_mut(q_out)) {
            for (o, &v) in out.iter_mut().zip(&row[..q_out]) {
                *o = v * scale;
            }
        }
        let mut attn = zeroed(n * q_out);
        let window = c.window(index).unwrap_or(usize::MAX);
        // Each sequence's attention over its own cache. When each is too small to be split
        // across the pool (decode steps on short caches), the sequences run side by side
        // instead; otherwise one after the other, each split by heads and query blocks.
        let small = |s: &Seq<'_>| {
            let rows = s.positions.len();
            rows * (s.cache.len() + rows) * nh * hd < INLINE_WORK
        };
        let side_by_side = seqs.len() > 1 && seqs.iter().all(small);
        let mut jobs = Vec::with_capacity(seqs.len());
        let (mut rest, mut row0) = (&mut attn[..], 0);
        for (s, p) in seqs.iter_mut().zip(&mut probes) {
            let rows = s.positions.len();
            let (out, tail) = std::mem::take(&mut rest).split_at_mut(rows * q_out);
            rest = tail;
            jobs.push(Mutex::new((s, p, out, row0)));
            row0 += rows;
        }
        let results: Vec<Mutex<Result<()>>> = jobs.iter().map(|_| Mutex::new(Ok(()))).collect();
        let task = |i: usize| {
            let mut job = jobs[i].lock().unwrap_or_else(PoisonError::into_inner);
            let (s, p, out, r0) = &mut *job;
            let rows = *r0..*r0 + s.positions.len();
            let done = self.attend(
                c,
                window,
                &qkv[rows.start * width..rows.end * width],
                &q[rows.start * q_out..rows.end * q_out],
                s,
                p,
                out,
            );
            *results[i].lock().unwrap_or_else(PoisonError::into_inner) = done;
        };
        if side_by_side {
            Pool::global().run(jobs.len(), &task);
        } else {
            (0..jobs.len()).for_each(task);
        }
        drop(jobs);
        for r in results {
            r.into_inner().unwrap_or_else(PoisonError::into_inner)?;
        }
        drop(q);
        drop(qkv);

        let mut x = project(std::slice::from_ref(&self.o), &attn, n, vector_rows);
        drop(attn);
        if let Some([post_attn, _]) = &self.post_norms {
            x = rms_norm(&x, post_attn, c.rms_eps);
        }
        x.iter_mut().zip(x_in).for_each(|(a, b)| *a += b);
        let h = rms_norm(&x, &self.ffn_norm, c.rms_eps);
        let gu = project(self.gate_up.parts(), &h, n, vector_rows);
        drop(h);
        let act = gated(&gu, c.ffn, c.style.activation);
        drop(gu);
        let mut mlp = project(std::slice::from_ref(&self.down), &act, n, vector_rows);
        if let Some([_, post_ffn]) = &self.post_norms {
            mlp = rms_norm(&mlp, post_ffn, c.rms_eps);
        }
        x.iter_mut().zip(mlp.iter()).for_each(|(a, b)| *a += b);
        let mut rows = x.chunks_exact(c.hidden);
        Ok(seqs
            .iter()
            .zip(probes)
            .map(|(s, p)| Forward {
                hidden: rows.by_ref().take(s.positions.len()).flatten().copied().collect(),
                attention: p.attention,
                sums: p.sums,
                queries: p.queries,
            })
            .collect())
    }

    /// One sequence's part of the attention: its new keys and values (`qkv`, rotated)
    /// written into its cache after the live rows, its scaled queries `q` attending over
    /// the cache into `out`, its probes filled.
    #[allow(clippy::too_many_arguments)]
    fn attend(
        &self,
        c: &ModelConfig,
        window: usize,
        qkv: &[f32],
        q: &[f32],
        s: &mut Seq<'_>,
        p: &mut Probes,
        out: &mut [f32],
    ) -> Result<()> {
        let (hd, nh, nkv) = (c.head_dim, c.n_heads, c.n_kv_heads);
        let (q_out, kv_out) = (nh * hd, nkv * hd);
        let width = q_out + 2 * kv_out;
        let n = s.positions.len();
        let cache = &mut *s.cache;
        let (keys, values) = reserve(cache, n, nkv, hd)?;
        let len = cache.len();
        let new_k = Tensor::from_vec(by_head(qkv, width, q_out, n, nkv, hd), (nkv, n, hd), &Device::Cpu)?;
        let new_v = Tensor::from_vec(by_head(qkv, width, q_out + kv_out, n, nkv, hd), (nkv, n, hd), &Device::Cpu)?;
        keys.slice_set(&new_k, 1, len)?;
        values.slice_set(&new_v, 1, len)?;
        cache.push_positions(s.positions);
        // Revived rows fall among the cached positions: the rows from the first that moves
        // are rewritten in position order, in place.
        if let Some((from, order)) = cache.order_positions()? {
            let ids = Tensor::new(order.iter().map(|&i| i as u32).collect::<Vec<_>>(), &Device::Cpu)?;
            for t in [&keys, &values] {
                t.slice_set(&t.index_select(&ids, 1)?, 1, from)?;
            }
        }

        let m = cache.len();
        let probe_rows = s.probe.last_queries.min(n);
        let mut probs = (probe_rows > 0).then(|| vec![0f32; nh * probe_rows * m]);
        let mut sums = s.probe.column_sums.then(|| vec![0f32; nh * m]);
        let padding = cache.padding().unwrap_or(&[]);
        let shape = Shape { heads: nh, kv_heads: nkv, head_dim: hd, capacity: keys.dim(1)?, window, padding };
        with_slice(&keys, |k| {
            with_slice(&values, |v| {
                let probe = ProbeOut { rows: probe_rows, probs: probs.as_deref_mut(), sums: sums.as_deref_mut() };
                attention(q, s.positions, k, v, cache.positions(), shape, out, probe);
            })
        })??;
        p.attention = probs.map(|p| (p, probe_rows));
        p.sums = sums;
        Ok(())
    }
}
