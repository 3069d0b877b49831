//! Causal attention over a layer's cache, by original positions, on host slices.
//!
//! Work is split into tasks of one KV head and a block of query rows: the `g` query heads
//! of the group and the block's rows form one matrix `A` (`g × rows` by `head_dim`), so one
//! product `S = A · Kᵀ` reads each key once for all of them. A block reads only the keys its
//! last row may see, so most of the masked half of a long prefill is never computed. The
//! rows of `S` then go through a masked softmax (vectorised exponential), the probes the
//! scorers asked for are copied out, and `O = S · V` is scattered back.

use std::sync::Mutex;

use super::exp::exp_shifted_sum;
use super::gemm::{View, matmul};
use super::matvec::Out;
use super::pool::Pool;
use super::scratch::zeroed;
use super::simd::{row_dots, weighted_sum, weighted_sums};

/// Query rows per task.
const QUERY_BLOCK: usize = 64;

/// Up to this many rows of `A` (query heads of a group times query rows: a decode step),
/// `S = A · Kᵀ` and `O = S · V` run as dot products and a weighted sum of value rows held
/// in registers: for so few rows the GEMM's packing (a copy of every key and value it
/// reads) costs more than the products, however long the cache. Such a task takes one
/// query head, so that a group's heads spread over the threads (three KV heads on two
/// threads would leave one idle for a third of the step); they read the same keys, which
/// the first of them brings into the shared cache.
const DIRECT_ROWS: usize = 8;

/// Below this many multiply-adds, a sequence's attention is small: a batched decode step
/// runs such sequences side by side, one pool task each.
pub const INLINE_WORK: usize = 1 << 18;

/// Below this many multiply-adds in all, a call's tasks run on the calling thread without
/// waking the pool (a decode step on a cache of a dozen entries). Up to the previous stop
/// this was [`INLINE_WORK`], which left the second thread idle during the attention of
/// every decode step on a cache of up to about 450 entries: 13% of the samples of a
/// 400-token generation.
const SPLIT_WORK: usize = 1 << 13;

/// Keys per task of a decode row's attention (one KV head's chunk, all its query heads).
const ROW_CHUNK: usize = 512;

/// Keys per block of a decode row's task: a block of keys or values (16 KiB at 64 keys of
/// 64 `f32`) is read once and serves each query head of the group from L1.
const ROW_BLOCK: usize = 64;

/// The shapes of one attention call.
#[derive(Debug, Clone, Copy)]
pub struct Shape<'a> {
    /// Query heads.
    pub heads: usize,
    /// Key/value heads (each serves `heads / kv_heads` query heads).
    pub kv_heads: usize,
    /// Width of a head.
    pub head_dim: usize,
    /// Rows per head in the cache storage (its capacity; the live rows come first).
    pub capacity: usize,
    /// A local layer's window: a query at `p` sees keys after `p - window` (`usize::MAX`
    /// for a global layer).
    pub window: usize,
    /// Each KV head's leading cache rows that hold no entry (empty: none), never read.
    pub padding: &'a [usize],
}

/// What the scorers asked to see of the probabilities.
pub struct ProbeOut<'a> {
    /// The last `rows` query rows' probabilities `[heads, rows, keys]`, zero where masked.
    pub rows: usize,
    pub probs: Option<&'a mut [f32]>,
    /// The probabilities summed over every query row `[heads, keys]`.
    pub sums: Option<&'a mut [f32]>,
}

/// One task's results: its output rows and its share of the probes.
struct Part {
    kv: usize,
    /// The group's query heads this task computed (`0..g`, or one of them).
    heads: std::ops::Range<usize>,
    start: usize,
    rows: usize,
    /// `[heads, rows, head_dim]`.
    out: super::scratch::Buf,
    /// `[heads, probe rows in this block, keys]`, with the first such row's index.
    probs: Vec<f32>,
    probe_from: usize,
    /// `[heads, keys]`.
    sums: Vec<f32>,
}

/// Attention of `q` (`[n, heads, head_dim]`, already rotated and scaled) at positions
/// `q_pos` over the cached `keys`/`values` (`[kv_heads, capacity, head_dim]`, the first
/// `k_pos.len()` rows live) at positions `k_pos`, into `out` (`[n, heads, head_dim]`).
#[allow(clippy::too_many_arguments)]
pub fn attention(
    q: &[f32],
    q_pos: &[usize],
    keys: &[f32],
    values: &[f32],
    k_pos: &[usize],
    s: Shape<'_>,
    out: &mut [f32],
    probe: ProbeOut<'_>,
) {
    let (n, m, hd) = (q_pos.len(), k_pos.len(), s.head_dim);
    let g = s.heads / s.kv_heads;
    assert!(q.len() == n * s.heads * hd && out.len() == q.len(), "attention: q and out must be [n, heads, head_dim]");
    assert!(keys.len() >= s.kv_heads * s.capacity * hd && values.len() == keys.len() && m <= s.capacity);
    if n == 1 {
        one_row(q, q_pos[0], keys, values, k_pos, s, out, probe);
        return;
    }
    let probe_rows = probe.rows.min(n);
    let first_probe = n - probe_rows;
    let want_sums = probe.sums.is_some();
    let blocks = n.div_ceil(QUERY_BLOCK);
    // A block of `QUERY_BLOCK` rows or fewer: direct when all its heads' rows are few.
    let direct = g * n.min(QUERY_BLOCK) <= DIRECT_ROWS;
    // Query heads of the group per task: one when direct, else all of them.
    let per_task = if direct { 1 } else { g };
    let mut tasks = Vec::with_capacity(s.kv_heads * blocks * (g / per_task));
    for kv in 0..s.kv_heads {
        for b in 0..blocks {
            tasks.extend((0..g).step_by(per_task).map(|h| (kv, b, h..h + per_task)));
        }
    }
    let slots: Vec<Mutex<Option<Part>>> = tasks.iter().map(|_| Mutex::new(None)).collect();
    let task = |i: usize| {
        let (kv, b, heads) = tasks[i].clone();
        // The task's first query head, and how many it computes.
        let (first_head, g) = (kv * g + heads.start, heads.len());
        let part = {
            let start = b * QUERY_BLOCK;
            let rows = QUERY_BLOCK.min(n - start);
            let visible = k_pos.partition_point(|&p| p <= q_pos[start + rows - 1]);
            // Keys before `k0` are outside every row's window: never read.
            let k0 = k_pos[..visible].partition_point(|&p| p.saturating_add(s.window) <= q_pos[start]);
            let (k_pos, visible) = (&k_pos[k0..], visible - k0);
            // A: the group's heads over the block's rows, [g * rows, hd], head-major.
            let mut a = zeroed(g * rows * hd);
            for (gi, h) in (first_head..first_head + g).enumerate() {
                for t in start..start + rows {
                    let dst = (gi * rows + t - start) * hd;
                    a[dst..dst + hd].copy_from_slice(&q[(t * s.heads + h) * hd..(t * s.heads + h + 1) * hd]);
                }
            }
            let base = (kv * s.capacity + k0) * hd;
            let k = View::transposed(&keys[base..base + visible.max(1) * hd], hd, visible);
            let mut scores = zeroed(g * rows * visible);
            if direct {
                for (qi, srow) in a.chunks_exact(hd).zip(scores.chunks_exact_mut(visible.max(1))) {
                    row_dots(&keys[base..base + visible * hd], qi, &mut srow[..visible]);
                }
            } else {
                matmul(View::rows(&a, g * rows, hd), k, &mut scores, visible, false);
            }
            let probe_from = first_probe.max(start);
            let probe_here = (start + rows).saturating_sub(probe_from);
            let mut probs = vec![0f32; g * probe_here * m];
            let mut sums = if want_sums { vec![0f32; g * m] } else { Vec::new() };
            for gi in 0..g {
                for (r, t) in (start..start + rows).enumerate() {
                    let row = &mut scores[(gi * rows + r) * visible..(gi * rows + r + 1) * visible];
                    let seen = k_pos[..visible].partition_point(|&p| p <= q_pos[t]);
                    let lo = k_pos[..seen].partition_point(|&p| p.saturating_add(s.window) <= q_pos[t]);
                    // The head's padding rows, if any, are masked like keys outside a window.
                    let lo = lo.max(s.padding.get(kv).map_or(0, |&p| p.saturating_sub(k0)).min(seen));
                    let (head, masked) = row.split_at_mut(seen);
                    masked.fill(0.0);
                    let (early, live) = head.split_at_mut(lo);
                    early.fill(0.0);
                    let max = live.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let total = exp_shifted_sum(live, max);
                    let inv = 1.0 / total;
                    live.iter_mut().for_each(|p| *p *= inv);
                    if want_sums {
                        let at = gi * m + k0 + lo;
                        for (acc, &p) in sums[at..at + live.len()].iter_mut().zip(live.iter()) {
                            *acc += p;
                        }
                    }
                    if t >= probe_from {
                        let pr = t - probe_from;
                        let at = (gi * probe_here + pr) * m + k0 + lo;
                        probs[at..at + live.len()].copy_from_slice(live);
                    }
                }
            }
            let mut o = zeroed(g * rows * hd);
            if direct {
                for (orow, srow) in o.chunks_exact_mut(hd).zip(scores.chunks_exact(visible.max(1))) {
                    weighted_sum(&srow[..visible], &values[base..base + visible * hd], orow);
                }
            } else {
                let v = View::rows(&values[base..base + visible.max(1) * hd], visible, hd);
                matmul(View::rows(&scores, g * rows, visible), v, &mut o, hd, false);
            }
            Part { kv, heads, start, rows, out: o, probs, probe_from, sums }
        };
        *slots[i].lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(part);
    };
    if n * m * s.heads * hd < SPLIT_WORK {
        (0..tasks.len()).for_each(task);
    } else {
        Pool::global().run(tasks.len(), &task);
    }
    let parts = slots.into_iter().filter_map(|s| s.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner));
    let ProbeOut { probs: mut probe_probs, sums: mut probe_sums, .. } = probe;
    if let Some(sums) = probe_sums.as_deref_mut() {
        sums.fill(0.0);
    }
    for p in parts {
        for (gi, h) in p.heads.clone().map(|hi| p.kv * g + hi).enumerate() {
            for r in 0..p.rows {
                let t = p.start + r;
                out[(t * s.heads + h) * hd..(t * s.heads + h + 1) * hd]
                    .copy_from_slice(&p.out[(gi * p.rows + r) * hd..(gi * p.rows + r + 1) * hd]);
            }
            if let Some(dst) = probe_probs.as_deref_mut() {
                let here = (p.start + p.rows).saturating_sub(p.probe_from);
                for pr in 0..here {
                    let row = p.probe_from + pr - first_probe;
                    dst[(h * probe_rows + row) * m..(h * probe_rows + row + 1) * m]
                        .copy_from_slice(&p.probs[(gi * here + pr) * m..(gi * here + pr + 1) * m]);
                }
            }
            if let Some(dst) = probe_sums.as_deref_mut() {
                for (d, &v) in dst[h * m..(h + 1) * m].iter_mut().zip(&p.sums[gi * m..(gi + 1) * m]) {
                    *d += v;
                }
            }
        }
    }
}

/// [`attention`] of one query row (a decode step). A task takes one KV head's chunk of up
/// to [`ROW_CHUNK`] keys for every query head of its group, block by block of
/// [`ROW_BLOCK`] keys, so that each key and value is read from memory once per step and
/// then serves the group's heads from the nearest cache; on a long cache the step reads
/// the cache at the memory's pace. A chunk's scores are exponentiated against the chunk's
/// own maximum and its values summed with those weights; the chunks of a head are then
/// combined, each scaled by `exp(max_c - max) / total` (as in split-K "flash decoding"),
/// which also gives the probabilities the probes asked for.
#[allow(clippy::too_many_arguments)]
fn one_row(
    q: &[f32],
    q_pos: usize,
    keys: &[f32],
    values: &[f32],
    k_pos: &[usize],
    s: Shape<'_>,
    out: &mut [f32],
    probe: ProbeOut<'_>,
) {
    let (m, hd, g) = (k_pos.len(), s.head_dim, s.heads / s.kv_heads);
    // Keys this query sees: after its window's start, up to its position.
    let visible = k_pos.partition_point(|&p| p <= q_pos);
    let k0 = k_pos[..visible].partition_point(|&p| p.saturating_add(s.window) <= q_pos);
    let ProbeOut { rows, probs, mut sums } = probe;
    let mut probs = probs.filter(|_| rows > 0);
    assert!(probs.as_ref().is_none_or(|p| p.len() == s.heads * m), "attention: probabilities must be [heads, 1, keys]");
    assert!(sums.as_ref().is_none_or(|p| p.len() == s.heads * m), "attention: column sums must be [heads, keys]");
    // Each KV head's first key: the window's start, or after its padding rows (never read).
    let first = |kv: usize| k0.max(s.padding.get(kv).copied().unwrap_or(0)).min(visible);
    // (KV head, first key, end key) of each task.
    let mut tasks = Vec::new();
    for kv in 0..s.kv_heads {
        let mut a = first(kv);
        while a < visible {
            let b = (a + ROW_CHUNK).min(visible);
            tasks.push((kv, a, b));
            a = b;
        }
    }
    // Every head's scores over the visible keys, then its chunk's exponentials in place;
    // per task and head of its group: the chunk's maximum and sum, and its weighted values.
    let mut p = zeroed(s.heads * visible);
    let mut stats = zeroed(2 * g * tasks.len());
    let mut partial = zeroed(hd * g * tasks.len());
    let (p_at, stats_at, partial_at) = (Out::new(&mut p), Out::new(&mut stats), Out::new(&mut partial));
    let task = |t: usize| {
        let (kv, a, b) = tasks[t];
        let base = kv * s.capacity * hd;
        let heads = kv * g..(kv + 1) * g;
        // SAFETY: task `t` alone writes keys `a..b` of its group's rows of `p`, and its own
        // statistics and weighted values; all outlive the pool's run.
        let scores = |h: usize| unsafe { p_at.part(h * visible + a, b - a) };
        for j in (a..b).step_by(ROW_BLOCK) {
            let e = (j + ROW_BLOCK).min(b);
            let block = &keys[base + j * hd..base + e * hd];
            for h in heads.clone() {
                row_dots(block, &q[h * hd..(h + 1) * hd], &mut scores(h)[j - a..e - a]);
            }
        }
        for (i, h) in heads.clone().enumerate() {
            let row = scores(h);
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let total = exp_shifted_sum(row, max);
            // SAFETY: as above.
            unsafe { stats_at.part(2 * (t * g + i), 2) }.copy_from_slice(&[max, total]);
        }
        for j in (a..b).step_by(ROW_BLOCK) {
            let e = (j + ROW_BLOCK).min(b);
            let block = &values[base + j * hd..base + e * hd];
            let ps: Vec<&[f32]> = heads.clone().map(|h| &scores(h)[j - a..e - a]).collect();
            // SAFETY: as above.
            let mut outs: Vec<&mut [f32]> = (0..g).map(|i| unsafe { partial_at.part((t * g + i) * hd, hd) }).collect();
            weighted_sums(&ps, block, &mut outs);
        }
    };
    if m * s.heads * hd < SPLIT_WORK {
        (0..tasks.len()).for_each(task);
    } else {
        Pool::global().run(tasks.len(), &task);
    }
    // Each head's chunks combined: weights `exp(max_c - max) / total`.
    for h in 0..s.heads {
        let (kv, i) = (h / g, h % g);
        let mine: Vec<usize> = (0..tasks.len()).filter(|&t| tasks[t].0 == kv).collect();
        let stat = |t: usize| (stats[2 * (t * g + i)], stats[2 * (t * g + i) + 1]);
        let max = mine.iter().map(|&t| stat(t).0).fold(f32::NEG_INFINITY, f32::max);
        let total: f32 = mine.iter().map(|&t| stat(t).1 * (stat(t).0 - max).exp()).sum();
        let o = &mut out[h * hd..(h + 1) * hd];
        o.fill(0.0);
        for &t in &mine {
            let w = (stat(t).0 - max).exp() / total;
            for (o, &v) in o.iter_mut().zip(&partial[(t * g + i) * hd..(t * g + i + 1) * hd]) {
                *o += w * v;
            }
            let (a, b) = (tasks[t].1, tasks[t].2);
            p[h * visible + a..h * visible + b].iter_mut().for_each(|v| *v *= w);
        }
        let lo = first(kv);
        for dst in [probs.as_deref_mut(), sums.as_deref_mut()].into_iter().flatten() {
            let row = &mut dst[h * m..(h + 1) * m];
            row[..lo].fill(0.0);
            row[lo..visible].copy_from_slice(&p[h * visible + lo..(h + 1) * visible]);
            row[visible..].fill(0.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Plain causal softmax attention in `f64`: `[n, heads, hd]` outputs, `[heads, n, m]`
    /// probabilities.
    fn reference(
        q: &[f32],
        q_pos: &[usize],
        keys: &[f32],
        values: &[f32],
        k_pos: &[usize],
        s: Shape<'_>,
    ) -> (Vec<f64>, Vec<f64>) {
        let (n, m, hd, g) = (q_pos.len(), k_pos.len(), s.head_dim, s.heads / s.kv_heads);
        let (mut out, mut probs) = (vec![0f64; n * s.heads * hd], vec![0f64; s.heads * n * m]);
        for h in 0..s.heads {
            let kv = h / g;
            for t in 0..n {
                let qi = &q[(t * s.heads + h) * hd..(t * s.heads + h + 1) * hd];
                let score = |j: usize| -> f64 {
                    let k = &keys[(kv * s.capacity + j) * hd..(kv * s.capacity + j + 1) * hd];
                    qi.iter().zip(k).map(|(&a, &b)| f64::from(a) * f64::from(b)).sum()
                };
                let pad = s.padding.get(kv).copied().unwrap_or(0);
                let seen: Vec<usize> = (pad..m)
                    .filter(|&j| k_pos[j] <= q_pos[t] && k_pos[j].saturating_add(s.window) > q_pos[t])
                    .collect();
                let max = seen.iter().map(|&j| score(j)).fold(f64::NEG_INFINITY, f64::max);
                let total: f64 = seen.iter().map(|&j| (score(j) - max).exp()).sum();
                for &j in &seen {
                    let p = (score(j) - max).exp() / total;
                    probs[(h * n + t) * m + j] = p;
                    let v = &values[(kv * s.capacity + j) * hd..(kv * s.capacity + j + 1) * hd];
                    for (o, &x) in out[(t * s.heads + h) * hd..(t * s.heads + h + 1) * hd].iter_mut().zip(v) {
                        *o += p * f64::from(x);
                    }
                }
            }
        }
        (out, probs)
    }

    /// A decode step's row over a sliding window, with KV heads holding different numbers
    /// of entries (padding rows first), on a cache short enough to run on the calling
    /// thread and on one long enough for the pool: outputs, probabilities and column sums
    /// against plain attention over the keys each head may see.
    #[test]
    fn one_row_respects_windows_and_padding() {
        let (heads, kv_heads, hd) = (9, 3, 64);
        let value = |i: usize, salt: usize| ((i * 37 + salt * 11) % 101) as f32 / 50.0 - 1.0;
        for (m, window, padding) in
            [(10, usize::MAX, vec![0, 3, 1]), (700, 300, vec![5, 0, 200]), (700, usize::MAX, vec![])]
        {
            let keys: Vec<f32> = (0..kv_heads * m * hd).map(|i| value(i, 1) * 0.3).collect();
            let values: Vec<f32> = (0..kv_heads * m * hd).map(|i| value(i, 2)).collect();
            let k_pos: Vec<usize> = (0..m).map(|j| 2 * j).collect();
            let q_pos = [2 * m - 2];
            let q: Vec<f32> = (0..heads * hd).map(|i| value(i, 3) * 0.3).collect();
            let s = Shape { heads, kv_heads, head_dim: hd, capacity: m, window, padding: &padding };
            let mut out = vec![0f32; q.len()];
            let (mut probs, mut sums) = (vec![7f32; heads * m], vec![7f32; heads * m]);
            let probe = ProbeOut { rows: 1, probs: Some(&mut probs), sums: Some(&mut sums) };
            attention(&q, &q_pos, &keys, &values, &k_pos, s, &mut out, probe);
            let (want_out, want_probs) = reference(&q, &q_pos, &keys, &values, &k_pos, s);
            let worst =
                |a: &[f32], b: &[f64]| a.iter().zip(b).map(|(&x, &y)| (f64::from(x) - y).abs()).fold(0.0, f64::max);
            assert!(worst(&out, &want_out) < 1e-5, "{m} keys: outputs off by {}", worst(&out, &want_out));
            assert!(worst(&probs, &want_probs) < 1e-6, "{m} keys: probabilities off by {}", worst(&probs, &want_probs));
            assert!(worst(&sums, &want_probs) < 1e-6, "{m} keys: column sums off by {}", worst(&sums, &want_probs));
        }
    }

    /// A decode step (one row), two rows (direct kernels, one task per query head) and
    /// three (the GEMM) over a cache longer than any block, against plain attention:
    /// outputs, the last rows' probabilities and their column sums.
    #[test]
    fn direct_and_blocked_paths_match_plain_attention_on_a_long_cache() {
        let (heads, kv_heads, hd, m) = (9, 3, 64, 700);
        let value = |i: usize, salt: usize| ((i * 37 + salt * 11) % 101) as f32 / 50.0 - 1.0;
        let keys: Vec<f32> = (0..kv_heads * m * hd).map(|i| value(i, 1) * 0.3).collect();
        let values: Vec<f32> = (0..kv_heads * m * hd).map(|i| value(i, 2)).collect();
        let k_pos: Vec<usize> = (0..m).map(|j| 2 * j).collect();
        for n in [1, 2, 3] {
            let q_pos: Vec<usize> = (0..n).map(|t| 2 * m - 2 * n + 2 * t + 1).collect();
            let q: Vec<f32> = (0..n * heads * hd).map(|i| value(i, 3) * 0.3).collect();
            let s = Shape { heads, kv_heads, head_dim: hd, capacity: m, window: usize::MAX, padding: &[] };
            let mut out = vec![0f32; q.len()];
            let (mut probs, mut sums) = (vec![0f32; heads * n * m], vec![0f32; heads * m]);
            let probe = ProbeOut { rows: n, probs: Some(&mut probs), sums: Some(&mut sums) };
            attention(&q, &q_pos, &keys, &values, &k_pos, s, &mut out, probe);
            let (want_out, want_probs) = reference(&q, &q_pos, &keys, &values, &k_pos, s);
            let worst =
                |a: &[f32], b: &[f64]| a.iter().zip(b).map(|(&x, &y)| (f64::from(x) - y).abs()).fold(0.0, f64::max);
            assert!(worst(&out, &want_out) < 1e-5, "{n} rows: outputs off by {}", worst(&out, &want_out));
            assert!(worst(&probs, &want_probs) < 1e-6, "{n} rows: probabilities off by {}", worst(&probs, &want_probs));
            let want_sums: Vec<f64> =
                (0..heads * m).map(|i| (0..n).map(|t| want_probs[(i / m * n + t) * m + i % m]).sum()).collect();
            assert!(worst(&sums, &want_sums) < 1e-5, "{n} rows: column sums off by {}", worst(&sums, &want_sums));
        }
    }
}
