//! The tensor trait that scoring and selection are written against.

use crate::error::{Error, Result};

/// How [`Tensor::pool1d`] combines the values under its window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pool {
    /// Sum of the window divided by the kernel size; positions past either end count as
    /// zero (the zero-padded average that SnapKV uses).
    Avg,
    /// Largest value of the window; positions past either end are ignored.
    Max,
}

/// Checks the kernel of [`Tensor::pool1d`]: odd and at least 1 (every implementation calls
/// this first, so that all reject the same kernels with the same error).
pub fn check_pool_kernel(kernel: usize) -> Result<()> {
    if kernel == 0 || kernel.is_multiple_of(2) {
        return Err(Error::out_of_range("kernel", kernel, "an odd number >= 1"));
    }
    Ok(())
}

/// A dense `f32` tensor on some device, with the operations that token scoring needs.
///
/// Every operation returns [`Result`]: runtimes fail for ordinary reasons (shapes, memory,
/// a device that went away) and those failures must reach the user as errors. Reductions
/// remove the reduced dimension. Data moves to the host only through [`Tensor::to_host`];
/// scoring runs on the tensor's own device and only the final 1-D score vector is read back.
///
/// [`crate::HostTensor`] is the reference implementation; every backend's conformance
/// suite compares its implementation against it.
pub trait Tensor: Clone + Sized {
    /// Where the tensor lives (a CPU, a GPU ordinal, ...).
    type Device: Clone + std::fmt::Debug;

    /// The device this tensor lives on.
    fn device(&self) -> Self::Device;

    /// Builds a tensor of `shape` from row-major `data` on `device`.
    fn from_host(data: &[f32], shape: &[usize], device: &Self::Device) -> Result<Self>;

    /// The dimensions, outermost first.
    fn shape(&self) -> Vec<usize>;

    /// Copies the values to host memory, row-major.
    fn to_host(&self) -> Result<Vec<f32>>;

    /// Same values, new shape with the same element count.
    fn reshape(&self, shape: &[usize]) -> Result<Self>;

    /// Keeps `indices` (in the given order) along `dim`.
    fn index_select(&self, dim: usize, indices: &[usize]) -> Result<Self>;

    /// The slice `start..start + len` along `dim`.
    fn narrow(&self, dim: usize, start: usize, len: usize) -> Result<Self>;

    /// Concatenates tensors along `dim`; all other dimensions must agree.
    fn cat(tensors: &[&Self], dim: usize) -> Result<Self>;

    /// Sum along `dim`, which is removed.
    fn sum(&self, dim: usize) -> Result<Self>;

    /// Mean along `dim`, which is removed.
    fn mean(&self, dim: usize) -> Result<Self>;

    /// Maximum along `dim`, which is removed.
    fn max(&self, dim: usize) -> Result<Self>;

    /// Softmax along the last dimension.
    fn softmax_last(&self) -> Result<Self>;

    /// Batched matrix product: `[.., m, k] x [.., k, n] -> [.., m, n]`, equal batch dims.
    fn matmul(&self, rhs: &Self) -> Result<Self>;

    /// Element-wise sum of two tensors of the same shape.
    fn add(&self, rhs: &Self) -> Result<Self>;

    /// Element-wise `x * mul + add`.
    fn affine(&self, mul: f32, add: f32) -> Result<Self>;

    /// Element-wise square.
    fn sqr(&self) -> Result<Self>;

    /// Element-wise square root.
    fn sqrt(&self) -> Result<Self>;

    /// 1-D pooling along the last dimension with stride 1 and `kernel / 2` padding on both
    /// sides, so the output has the input's shape. `kernel` must be odd.
    fn pool1d(&self, kernel: usize, pool: Pool) -> Result<Self>;

    /// Number of dimensions.
    fn rank(&self) -> usize {
        self.shape().len()
    }

    /// Size of dimension `dim`.
    fn dim(&self, dim: usize) -> Result<usize> {
        let shape = self.shape();
        shape.get(dim).copied().ok_or(Error::Dim { op: "dim", dim, rank: shape.len() })
    }

    /// Indices of the `k` largest values of a 1-D tensor, best first; ties go to the lower
    /// index. The default reads the scores back and ranks them on the host, which makes the
    /// order identical on every backend that computed the same scores.
    fn top_k(&self, k: usize) -> Result<Vec<usize>> {
        let shape = self.shape();
        if shape.len() != 1 {
            return Err(Error::Shape { op: "top_k", detail: format!("expected a 1-D tensor, got {shape:?}") });
        }
        let scores = self.to_host()?;
        let mut order = crate::select::rank_by_score(&scores)?;
        order.truncate(k);
        Ok(order)
    }
}
