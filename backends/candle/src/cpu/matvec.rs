//! Matrix times a few vectors, `Y = X · Wᵀ` for `X` of `n` rows (a decode step has one),
//! with the weight rows split across threads. Each weight row is read once per call, as
//! every token's row of `X` uses it while it is in cache: the product is bound by reading
//! the weights, and this reads them at the memory's pace.

use super::pool::Pool;
use super::simd::dot4;
use super::weights::Matrix;

/// Weight rows handed to one task: enough that a task's bookkeeping is small against its
/// reads (64 rows of 576 f32 are 144 KiB).
const MIN_ROWS_PER_TASK: usize = 64;

/// Splits `rows` output rows into tasks of whole multiples of 4 and runs `f(start, end)` on
/// each in parallel.
pub(crate) fn par_rows(rows: usize, f: impl Fn(usize, usize) + Sync) {
    let pool = Pool::global();
    let threads = pool.threads();
    // A few tasks per thread, so that a thread that falls behind is helped.
    let per = (rows.div_ceil(threads * 4)).max(MIN_ROWS_PER_TASK).next_multiple_of(4);
    let tasks = rows.div_ceil(per);
    if tasks <= 1 {
        f(0, rows);
        return;
    }
    pool.run(tasks, &|t| f(t * per, ((t + 1) * per).min(rows)));
}

/// A raw pointer to output rows that tasks write disjoint parts of.
#[derive(Clone, Copy)]
pub(crate) struct Out(*mut f32);

// SAFETY: tasks write disjoint index ranges (see `par_rows`), so sharing the pointer
// across threads never makes two of them write the same value.
unsafe impl Send for Out {}
// SAFETY: as above.
unsafe impl Sync for Out {}

impl Out {
    pub(crate) fn new(y: &mut [f32]) -> Self {
        Self(y.as_mut_ptr())
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
    let (rows, cols) = (w.rows(), w.cols());
    let n = x.len() / cols;
    assert!(x.len() == n * cols && y.len() == n * rows, "matmul_t: {n} x {cols} by {rows} x {cols} into {}", y.len());
    let out = Out::new(y);
    par_rows(rows, |start, end| {
        let mut scratch = Vec::new();
        let mut r = start;
        while r < end {
            let take = (end - r).min(4);
            let block = w.rows_f32(r, take, &mut scratch);
            let row = |i: usize| &block[i.min(take - 1) * cols..(i.min(take - 1) + 1) * cols];
            for t in 0..n {
                let d = dot4([row(0), row(1), row(2), row(3)], &x[t * cols..(t + 1) * cols]);
                for (i, &v) in d.iter().enumerate().take(take) {
                    // SAFETY: `t < n` and `r + i < end <= rows`, inside `y`; this task alone
                    // owns rows `start..end`.
                    unsafe { out.set(t * rows + r + i, v) };
                }
            }
            r += take;
        }
    });
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
