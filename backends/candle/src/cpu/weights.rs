//! [`Matrix`]: a weight matrix `[rows, cols]` as the CPU kernels read it: `f32` values,
//! packed blocks ([`sieve_backend::quant`]) decoded on the fly, or blocks in the integer
//! kernels' layout ([`super::vnni`]).

use sieve_backend::HostWeight;
use sieve_backend::quant::{GgmlType, Packed, dequantize};

use super::vnni;

/// How a [`Matrix`] stores its values.
#[derive(Debug, Clone)]
pub enum Storage {
    /// Row-major `f32` values.
    F32(Vec<f32>),
    /// Rows of blocks, as the file stores them.
    Packed(Packed),
    /// Panels of 16 rows of blocks in the layout of [`vnni::split`] (the same bytes in all).
    Split(Packed),
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
    /// `Weights::check`). Formats with an integer kernel on this CPU are rearranged for it.
    pub fn from_weight(w: HostWeight) -> Self {
        let (rows, cols) = (w.shape[0], w.shape.get(1).copied().unwrap_or(1));
        // Q5_0 has no integer kernel of its own; as Q8_0 (exact) it uses Q8_0's.
        let packed = match w.packed {
            Some(p) if p.dtype == GgmlType::Q5_0 && vnni::supported(GgmlType::Q8_0, rows, cols) => {
                Some(Packed::new(GgmlType::Q8_0, sieve_backend::quant::q5_0_to_q8_0(&p.bytes)))
            }
            other => other,
        };
        match packed {
            Some(p) if vnni::supported(p.dtype, rows, cols) => {
                let bytes = vnni::split(p.dtype, cols, &p.bytes);
                Self { rows, cols, storage: Storage::Split(Packed::new(p.dtype, bytes)) }
            }
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
        self.packed().map(|p| p.dtype)
    }

    fn packed(&self) -> Option<&Packed> {
        match &self.storage {
            Storage::F32(_) => None,
            Storage::Packed(p) | Storage::Split(p) => Some(p),
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
            Storage::Packed(p) | Storage::Split(p) => p.bytes.len(),
        }
    }

    /// The packed bytes of rows `start..start + n` (in either layout: see [`Self::storage`];
    /// split rows come in whole panels, so `start` and `n` are multiples of 16 there).
    pub fn packed_rows(&self, start: usize, n: usize) -> Option<(&Packed, &[u8])> {
        let p = self.packed()?;
        let rb = p.dtype.row_bytes(self.cols);
        Some((p, &p.bytes[start * rb..(start + n) * rb]))
    }

    /// Asks the CPU to bring packed rows `start..start + n` into cache (a hint: it reads
    /// nothing).
    #[inline]
    pub fn prefetch_rows(&self, start: usize, n: usize) {
        let (ptr, len) = match &self.storage {
            // Long f32 rows stream well enough: fetching them ahead measured slower.
            Storage::F32(_) => return,
            Storage::Packed(p) | Storage::Split(p) => {
                let rb = p.dtype.row_bytes(self.cols);
                (p.bytes[start * rb..(start + n) * rb].as_ptr(), n * rb)
            }
        };
        #[cfg(target_arch = "x86_64")]
        for i in (0..len).step_by(64) {
            // SAFETY: a prefetch has no observable effect, and `ptr + i` lies inside the
            // rows sliced above.
            unsafe {
                std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T2 }>(ptr.add(i).cast());
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (ptr, len);
    }

    /// Rows `start..start + n` as `f32`, row-major: a view of the values, or (for packed
    /// rows) decoded into `scratch`.
    #[inline]
    pub fn rows_f32<'a>(&'a self, start: usize, n: usize, scratch: &'a mut Vec<f32>) -> &'a [f32] {
        match &self.storage {
            Storage::F32(d) => &d[start * self.cols..(start + n) * self.cols],
            Storage::Packed(p) | Storage::Split(p) => {
                let rb = p.dtype.row_bytes(self.cols);
                scratch.resize(n * self.cols, 0.0);
                if matches!(self.storage, Storage::Split(_)) {
                    vnni::dequantize(p.dtype, self.cols, &p.bytes, start, &mut scratch[..n * self.cols]);
                } else {
                    dequantize(p.dtype, &p.bytes[start * rb..(start + n) * rb], &mut scratch[..n * self.cols]);
                }
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
        let kind = |m: &Matrix| (m.dtype(), matches!(m.storage, Storage::Split(_)));
        if parts.iter().any(|p| p.cols != cols || kind(p) != kind(&parts[0])) {
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
            Some(dtype) => {
                let bytes = parts.iter().flat_map(|p| p.packed().map_or(&[][..], |q| &q.bytes)).copied().collect();
                let packed = Packed::new(dtype, bytes);
                if kind(&parts[0]).1 { Storage::Split(packed) } else { Storage::Packed(packed) }
            }
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
