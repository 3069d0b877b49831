//! [`Matrix`]: a weight matrix `[rows, cols]` as the CPU kernels read it: `f32` values, or
//! packed blocks ([`sieve_backend::quant`]) decoded on the fly.

use sieve_backend::HostWeight;
use sieve_backend::quant::{GgmlType, Packed, dequantize};

/// How a [`Matrix`] stores its values.
#[derive(Debug, Clone)]
pub enum Storage {
    /// Row-major `f32` values.
    F32(Vec<f32>),
    /// Rows of blocks.
    Packed(Packed),
}

/// A weight matrix in host memory, rows of `cols` values, read row by row.
#[derive(Debug, Clone)]
pub struct Matrix {
    rows: usize,
    cols: usize,
    storage: Storage,
}

impl Matrix {
    /// An `f32` matrix from row-major values.
    pub fn f32(data: Vec<f32>, rows: usize, cols: usize) -> Self {
        assert_eq!(data.len(), rows * cols, "matrix of {rows} x {cols}");
        Self { rows, cols, storage: Storage::F32(data) }
    }

    /// A matrix of a loaded weight `[rows, cols]`, packed or not (checked by the contract's
    /// `Weights::check`).
    pub fn from_weight(w: HostWeight) -> Self {
        let (rows, cols) = (w.shape[0], w.shape.get(1).copied().unwrap_or(1));
        match w.packed {
            Some(p) => Self { rows, cols, storage: Storage::Packed(p) },
            None => Self::f32(w.data, rows, cols),
        }
    }

    /// Rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Columns (the length of each row).
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// The packed format, if packed.
    pub fn dtype(&self) -> Option<GgmlType> {
        match &self.storage {
            Storage::F32(_) => None,
            Storage::Packed(p) => Some(p.dtype),
        }
    }

    /// How the values are stored.
    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        match &self.storage {
            Storage::F32(d) => d.len() * std::mem::size_of::<f32>(),
            Storage::Packed(p) => p.bytes.len(),
        }
    }

    /// The packed bytes of rows `start..start + n`.
    pub fn packed_rows(&self, start: usize, n: usize) -> Option<(&Packed, &[u8])> {
        match &self.storage {
            Storage::F32(_) => None,
            Storage::Packed(p) => {
                let rb = p.dtype.row_bytes(self.cols);
                Some((p, &p.bytes[start * rb..(start + n) * rb]))
            }
        }
    }

    /// Rows `start..start + n` as `f32`, row-major: a view of the values, or (for packed
    /// rows) decoded into `scratch`.
    #[inline]
    pub fn rows_f32<'a>(&'a self, start: usize, n: usize, scratch: &'a mut Vec<f32>) -> &'a [f32] {
        match &self.storage {
            Storage::F32(d) => &d[start * self.cols..(start + n) * self.cols],
            Storage::Packed(p) => {
                let rb = p.dtype.row_bytes(self.cols);
                scratch.resize(n * self.cols, 0.0);
                dequantize(p.dtype, &p.bytes[start * rb..(start + n) * rb], &mut scratch[..n * self.cols]);
                &scratch[..n * self.cols]
            }
        }
    }

    /// The whole matrix as `f32`, row-major (decoded into `scratch` if packed).
    pub fn all_f32<'a>(&'a self, scratch: &'a mut Vec<f32>) -> &'a [f32] {
        self.rows_f32(0, self.rows, scratch)
    }

    /// Stacks matrices of equal width and storage format into one (fused projections: q,
    /// k and v; gate and up); `None` when they differ in format.
    pub fn stack(parts: &[Matrix]) -> Option<Self> {
        let cols = parts[0].cols;
        if parts.iter().any(|p| p.cols != cols || p.dtype() != parts[0].dtype()) {
            return None;
        }
        let rows = parts.iter().map(|p| p.rows).sum();
        let storage = match parts[0].dtype() {
            None => Storage::F32(
                parts
                    .iter()
                    .flat_map(|p| if let Storage::F32(d) = &p.storage { d.as_slice() } else { &[] })
                    .copied()
                    .collect(),
            ),
            Some(dtype) => Storage::Packed(Packed {
                dtype,
                bytes: parts
                    .iter()
                    .flat_map(|p| if let Storage::Packed(q) = &p.storage { q.bytes.as_slice() } else { &[] })
                    .copied()
                    .collect(),
            }),
        };
        Some(Self { rows, cols, storage })
    }
}

/// Matrices applied to one input as one: their outputs side by side (`[n, Σ rows]`). Parts
/// of one format are stacked into a single matrix at load.
#[derive(Debug, Clone)]
pub struct Fused {
    parts: Vec<Matrix>,
}

impl Fused {
    /// `parts` as one projection, stacked where they share a format.
    pub fn new(parts: Vec<Matrix>) -> Self {
        match Matrix::stack(&parts) {
            Some(one) => Self { parts: vec![one] },
            None => Self { parts },
        }
    }

    /// The matrices, in output order.
    pub fn parts(&self) -> &[Matrix] {
        &self.parts
    }

    /// Output columns (all parts' rows).
    pub fn rows(&self) -> usize {
        self.parts.iter().map(Matrix::rows).sum()
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.parts.iter().map(Matrix::bytes).sum()
    }
}
