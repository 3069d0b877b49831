//! General matrix products on host slices through the `gemm` crate (the kernels behind
//! candle's own CPU matmul), with the bounds checked before the raw call.

/// A matrix in a slice: element `(i, j)` at `offset + i * row_stride + j * col_stride`.
#[derive(Debug, Clone, Copy)]
pub struct View<'a> {
    pub data: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    pub row_stride: usize,
    pub col_stride: usize,
}

impl<'a> View<'a> {
    /// A row-major matrix.
    pub fn rows(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Self { data, rows, cols, row_stride: cols, col_stride: 1 }
    }

    /// The transpose of a row-major `[cols, rows]` matrix (a weight `[out, in]` read as
    /// `[in, out]`).
    pub fn transposed(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Self { data, rows, cols, row_stride: 1, col_stride: rows }
    }

    /// A row-major matrix whose rows are `row_stride` apart.
    pub fn strided(data: &'a [f32], rows: usize, cols: usize, row_stride: usize) -> Self {
        Self { data, rows, cols, row_stride, col_stride: 1 }
    }

    fn fits(&self) -> bool {
        self.rows == 0
            || self.cols == 0
            || (self.rows - 1) * self.row_stride + (self.cols - 1) * self.col_stride < self.data.len()
    }
}

/// `dst = a · b` (or `dst += a · b` with `accumulate`), `dst` row-major `[a.rows, b.cols]`
/// with rows `dst_stride` apart, on the calling thread.
pub fn matmul(a: View<'_>, b: View<'_>, dst: &mut [f32], dst_stride: usize, accumulate: bool) {
    let (m, n) = (a.rows, b.cols);
    assert!(m == 0 || n == 0 || (m - 1) * dst_stride + n <= dst.len(), "gemm: the destination is too small");
    // SAFETY: the destination holds every element written (checked above) and is a unique
    // borrow, so nothing else reads or writes it meanwhile.
    unsafe { matmul_into(a, b, dst.as_mut_ptr(), dst_stride, accumulate) }
}

/// [`matmul`] into the matrix at `dst`.
///
/// # Safety
/// `dst` points to `(a.rows - 1) * dst_stride + b.cols` writable values that nothing else
/// reads or writes during the call (other calls may use the columns in between).
pub unsafe fn matmul_into(a: View<'_>, b: View<'_>, dst: *mut f32, dst_stride: usize, accumulate: bool) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert!(b.rows == k, "gemm: {m}x{k} by {}x{n}", b.rows);
    assert!(a.fits() && b.fits(), "gemm: an operand overruns its slice");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                for j in 0..n {
                    // SAFETY: inside the destination the caller vouches for.
                    unsafe { *dst.add(i * dst_stride + j) = 0.0 };
                }
            }
        }
        return;
    }
    // SAFETY: every element the product reads lies inside its slice (checked above from
    // the shapes and strides), every element it writes lies inside the destination the
    // caller vouches for, which does not alias the operands, and `read_dst` is set only
    // with `accumulate`, when the destination holds the values to add to.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            dst_stride as isize,
            accumulate,
            a.data.as_ptr(),
            a.col_stride as isize,
            a.row_stride as isize,
            b.data.as_ptr(),
            b.col_stride as isize,
            b.row_stride as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn products_with_transposes_strides_and_accumulation() {
        let a: Vec<f32> = (0..6).map(|i| i as f32).collect(); // 2x3
        let w: Vec<f32> = (0..12).map(|i| (i as f32) * 0.5).collect(); // 4x3, used as 3x4
        let mut dst = vec![1.0f32; 8];
        matmul(View::rows(&a, 2, 3), View::transposed(&w, 3, 4), &mut dst, 4, false);
        for i in 0..2 {
            for j in 0..4 {
                let want: f32 = (0..3).map(|c| a[i * 3 + c] * w[j * 3 + c]).sum();
                assert_eq!(dst[i * 4 + j], want);
            }
        }
        let before = dst.clone();
        matmul(View::rows(&a, 2, 3), View::transposed(&w, 3, 4), &mut dst, 4, true);
        assert!(dst.iter().zip(&before).all(|(d, b)| (d - 2.0 * b).abs() < 1e-5));
    }
}
