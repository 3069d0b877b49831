//! Matrix times a few vectors, `Y = X · Wᵀ` for `X` of `n` rows (a decode step has one),
//! with the weight rows split across threads. Each weight row is read once per call, as
//! every token's row of `X` uses it while it is in cache: the product is bound by reading
//! the weights, and this reads them at the memory's pace.

use super::intdot::PANEL;
use super::pool::Pool;
use super::simd::dot4;
use super::weights::{Matrix, Storage};
use super::{amx, qdot, vnni};
use sieve_backend::quant::GgmlType;

/// Weight rows handed to one task: enough that a task's bookkeeping is small against its
/// reads (64 rows of 576 f32 are 144 KiB).
const MIN_ROWS_PER_TASK: usize = 64;

/// From how many inputs a product on panels runs on AMX tiles (where the CPU has them).
const AMX_INPUTS: usize = 5;

/// How far ahead of the rows being multiplied their successors are fetched into cache.
const PREFETCH_ROWS: usize = 8;

/// How many panels ahead of the one being multiplied the integer kernels request rows from
/// memory. Measured on the default model's shapes (30 layers' Q4_1 matrices and the Q8_0
/// output, one input, two threads, variants alternating in one process): 4.24 ms per
/// pass over them at two panels, 4.33 at three, against 5.18 with the next panel requested all at
/// once before each panel; in noisier runs, 5.50 at four and 5.97 at eight against 6.33,
/// and no request at all slowest (8.7 against 6.3).
const FETCH_PANELS: usize = 2;

/// Splits `rows` output rows into tasks of whole multiples of `align` and runs
/// `f(start, end)` on each in parallel.
pub(crate) fn par_rows(rows: usize, align: usize, f: impl Fn(usize, usize) + Sync) {
    let pool = Pool::global();
    let threads = pool.threads();
    // One task per thread: each streams one contiguous run of rows. Four per thread (so
    // that a thread falling behind is helped) decoded about 4% slower, one sequence or
    // eight: the product waits on memory, not on a slow thread.
    let per = rows.div_ceil(threads).max(MIN_ROWS_PER_TASK).next_multiple_of(align);
    let tasks = rows.div_ceil(per);
    if tasks <= 1 {
        f(0, rows);
        return;
    }
    pool.run(tasks, &|t| f(t * per, ((t + 1) * per).min(rows)));
}

/// A raw pointer to output rows that tasks write disjoint parts of.
#[derive(Clone, Copy)]
pub(crate) struct Out(*mut f32, usize);

// SAFETY: tasks write disjoint index ranges (the rows `par_rows` hands out, or an
// attention head's own row), so sharing the pointer across threads never makes two of
// them write the same value.
unsafe impl Send for Out {}
// SAFETY: as above.
unsafe impl Sync for Out {}

impl Out {
    pub(crate) fn new(y: &mut [f32]) -> Self {
        Self(y.as_mut_ptr(), y.len())
    }

    /// Values `start..start + len` as a slice, for a task that writes them all.
    ///
    /// # Safety
    /// No other task reaches these values while the slice lives, and the slice `new` was
    /// given outlives it.
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn part<'a>(self, start: usize, len: usize) -> &'a mut [f32] {
        assert!(start + len <= self.1, "values {start}..{} are outside the output", start + len);
        // SAFETY: inside the slice `new` was given (asserted); exclusive by the caller.
        unsafe { std::slice::from_raw_parts_mut(self.0.add(start), len) }
    }

    /// The pointer to value `i` (which the caller keeps inside the slice `new` was given).
    #[inline]
    pub(crate) fn at(self, i: usize) -> *mut f32 {
        self.0.wrapping_add(i)
    }

    /// Writes `v` at `i`.
    ///
    /// # Safety
    /// `i` is inside the slice `new` was given, and no other task writes `i`.
    #[inline]
    pub(crate) unsafe fn set(self, i: usize, v: f32) {
        // SAFETY: guaranteed by the caller.
        unsafe { *self.0.add(i) = v }
    }
}

/// `y[t, r] = x[t, :] · w[r, :]` for `n = x.len() / cols` rows of `x`; `y` is `[n, rows]`.
pub fn matmul_t(w: &Matrix, x: &[f32], y: &mut [f32]) {
    let n = x.len() / w.cols();
    assert!(y.len() == n * w.rows(), "matmul_t: {n} rows into {}", y.len());
    matmul_t_at(w, x, Out::new(y), w.rows(), 0);
}

/// [`matmul_t`] into columns `offset..offset + w.rows()` of an output whose rows are
/// `stride` wide (one part of a [`super::weights::Fused`] projection).
pub(crate) fn matmul_t_at(w: &Matrix, x: &[f32], out: Out, stride: usize, offset: usize) {
    let (rows, cols) = (w.rows(), w.cols());
    let n = x.len() / cols;
    assert!(x.len() == n * cols, "matmul_t: {} values are not rows of {cols}", x.len());
    // The kernel for these rows: integer dots on a quantized input, `f32` dots on blocks
    // decoded in registers, or rows decoded to `f32` first.
    enum Input {
        Blocks(Vec<Vec<f32>>),
        Decoded,
    }
    let rows_of_x = || x.chunks_exact(cols);
    let input = match (w.storage(), w.dtype()) {
        (Storage::Split(p), _) => {
            let inputs: Vec<vnni::Quantized> = rows_of_x().map(vnni::Quantized::new).collect();
            return matmul_panels(w, p.dtype, &inputs, out, stride, offset);
        }
        (Storage::Packed(_), Some(d)) if qdot::supported(d) => {
            Input::Blocks(rows_of_x().map(qdot::block_sums).collect())
        }
        _ => Input::Decoded,
    };
    par_rows(rows, 4, |start, end| {
        let mut scratch = Vec::new();
        let mut r = start;
        while r < end {
            let take = (end - r).min(4);
            let clamp = |i: usize| i.min(take - 1);
            let packed = match input {
                Input::Decoded => None,
                Input::Blocks(_) => w.packed_rows(r, take).map(|(p, bytes)| (p.dtype, p.dtype.row_bytes(cols), bytes)),
            };
            let block = if packed.is_none() { w.rows_f32(r, take, &mut scratch) } else { &[][..] };
            // Two groups ahead, into the outer caches: the hardware's prefetcher alone
            // leaves a decode step on packed rows waiting on memory (about 1.3x slower on
            // the default model); into L1 it measured slower still.
            if r + PREFETCH_ROWS + 4 <= end {
                w.prefetch_rows(r + PREFETCH_ROWS, 4);
            }
            for t in 0..n {
                let xt = &x[t * cols..(t + 1) * cols];
                let d = match (&input, packed) {
                    (Input::Blocks(sums), Some((dtype, rb, bytes))) => {
                        let row = |i: usize| &bytes[clamp(i) * rb..(clamp(i) + 1) * rb];
                        qdot::dot4(dtype, [row(0), row(1), row(2), row(3)], xt, &sums[t])
                    }
                    _ => {
                        let row = |i: usize| &block[clamp(i) * cols..(clamp(i) + 1) * cols];
                        dot4([row(0), row(1), row(2), row(3)], xt)
                    }
                };
                for (i, &v) in d.iter().enumerate().take(take) {
                    // SAFETY: `t < n` and `offset + r + i < offset + rows <= stride`, inside
                    // the output the caller gave; this task alone owns rows `start..end`.
                    unsafe { out.set(t * stride + offset + r + i, v) };
                }
            }
            r += take;
        }
    });
}

/// [`matmul_t_at`] on a matrix in the integer kernels' panels ([`vnni::split`]), the
/// inputs quantized: a panel's 16 rows against several inputs per pass over its blocks (a
/// decode step of several sequences), on AMX tiles (up to [`amx::GROUP`] inputs per pass)
/// from [`AMX_INPUTS`] inputs where the CPU has them, else four inputs at a time by VNNI.
/// Each input gets what it would alone.
fn matmul_panels(w: &Matrix, dtype: GgmlType, inputs: &[vnni::Quantized], out: Out, stride: usize, offset: usize) {
    let n = inputs.len();
    // Groups of inputs as equal as possible, each one tile product's rows.
    #[cfg(target_arch = "x86_64")]
    let batches: Vec<amx::Batch> = if n >= AMX_INPUTS && amx::available() {
        let per = n.div_ceil(n.div_ceil(amx::GROUP));
        inputs.chunks(per).map(amx::Batch::new).collect()
    } else {
        Vec::new()
    };
    let store = |r: usize, first: usize, d: &[[f32; PANEL]]| {
        for (t, d) in (first..).zip(d) {
            // SAFETY: `t < n` and `offset + r + 16 <= offset + rows <= stride`, inside the
            // output the caller gave; the task calling this alone owns rows `r..r + 16`.
            unsafe { std::ptr::copy_nonoverlapping(d.as_ptr(), out.at(t * stride + offset + r), PANEL) };
        }
    };
    par_rows(w.rows(), PANEL, |start, end| {
        let panel = |r: usize| w.packed_rows(r, PANEL).expect("split rows are packed").1;
        let mut d = [[[0f32; PANEL]; PANEL]; 2];
        #[cfg(target_arch = "x86_64")]
        if !batches.is_empty() {
            let mut first = 0;
            for batch in &batches {
                let (m, tiles) = (batch.len(), amx::Tiles::new(batch.len()));
                let mut r = start;
                while r < end {
                    // Two panels at a time. (Fetching the next ones ahead measured slower
                    // here: the tiles wait on arithmetic, not memory.)
                    let [d0, d1] = &mut d;
                    if r + 2 * PANEL <= end {
                        amx::panel_dots(
                            &tiles,
                            dtype,
                            [panel(r), panel(r + PANEL)],
                            batch,
                            [&mut d0[..m], &mut d1[..m]],
                        );
                        store(r, first, &d0[..m]);
                        store(r + PANEL, first, &d1[..m]);
                        r += 2 * PANEL;
                    } else {
                        amx::panel_dots(&tiles, dtype, [panel(r)], batch, [&mut d0[..m]]);
                        store(r, first, &d0[..m]);
                        r += PANEL;
                    }
                }
                first += m;
            }
            return;
        }
        for r in (start..end).step_by(PANEL) {
            // The panel [`FETCH_PANELS`] ahead is requested from memory while this one is
            // multiplied: the hardware's prefetcher alone leaves a decode step waiting on
            // memory.
            let ahead = r + FETCH_PANELS * PANEL;
            let fetch = (ahead + PANEL <= end).then(|| panel(ahead));
            let d = &mut d[0][..n];
            vnni_dots(dtype, panel(r), fetch, inputs, d);
            store(r, 0, d);
        }
    });
}

/// A panel times every input, four inputs per pass (`fetch` requested during the first).
fn vnni_dots(
    dtype: GgmlType,
    panel: &[u8],
    fetch: Option<&[u8]>,
    inputs: &[vnni::Quantized],
    out: &mut [[f32; PANEL]],
) {
    for (i, (inputs, out)) in inputs.chunks(4).zip(out.chunks_mut(4)).enumerate() {
        vnni::panel_dots(dtype, panel, fetch.filter(|_| i == 0), inputs, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_a_plain_product_for_every_shape() {
        for (rows, cols, n) in [(1, 5, 1), (7, 16, 1), (130, 33, 3), (257, 64, 2)] {
            let w: Vec<f32> = (0..rows * cols).map(|i| ((i * 13 % 17) as f32 - 8.0) / 8.0).collect();
            let x: Vec<f32> = (0..n * cols).map(|i| ((i * 7 % 11) as f32 - 5.0) / 5.0).collect();
            let m = Matrix::f32(w.clone(), rows, cols);
            let mut y = vec![0f32; n * rows];
            matmul_t(&m, &x, &mut y);
            for t in 0..n {
                for r in 0..rows {
                    let want: f32 = (0..cols).map(|c| x[t * cols + c] * w[r * cols + c]).sum();
                    assert!((y[t * rows + r] - want).abs() < 1e-4, "{rows}x{cols} n {n}: row {r}");
                }
            }
        }
    }
}
