//! [`Matrix`]: a weight matrix `[rows, cols]` as the CPU kernels read it.

/// A weight matrix in host memory, rows of `cols` values, read row by row.
#[derive(Debug, Clone)]
pub struct Matrix {
    rows: usize,
    cols: usize,
    data: Vec<f32>,
}

impl Matrix {
    /// An `f32` matrix from row-major values.
    pub fn f32(data: Vec<f32>, rows: usize, cols: usize) -> Self {
        assert_eq!(data.len(), rows * cols, "matrix of {rows} x {cols}");
        Self { rows, cols, data }
    }

    /// Rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Columns (the length of each row).
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.data.len() * std::mem::size_of::<f32>()
    }

    /// Rows `start..start + n` as `f32`, row-major: a view of the values, or (for a matrix
    /// stored otherwise) converted into `scratch`.
    #[inline]
    pub fn rows_f32<'a>(&'a self, start: usize, n: usize, _scratch: &'a mut Vec<f32>) -> &'a [f32] {
        &self.data[start * self.cols..(start + n) * self.cols]
    }

    /// The whole matrix as `f32`, row-major (converted into `scratch` if stored otherwise).
    pub fn all_f32<'a>(&'a self, scratch: &'a mut Vec<f32>) -> &'a [f32] {
        self.rows_f32(0, self.rows, scratch)
    }

    /// Stacks matrices of equal width into one (fused projections: q, k and v; gate and
    /// up).
    pub fn stack(parts: &[Matrix]) -> Self {
        let cols = parts[0].cols;
        assert!(parts.iter().all(|p| p.cols == cols), "stacked matrices differ in width");
        let mut data = Vec::with_capacity(parts.iter().map(|p| p.data.len()).sum());
        for p in parts {
            data.extend_from_slice(&p.data);
        }
        Self { rows: parts.iter().map(|p| p.rows).sum(), cols, data }
    }
}
