//! [`HostTensor`]: the reference implementation of [`Tensor`] on host memory.
//!
//! Written for clarity, not speed: it is the oracle against which backends are checked.

use crate::error::{Error, Result};
use crate::tensor::{Pool, Tensor};

/// A row-major `f32` tensor in host memory.
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    data: Vec<f32>,
    shape: Vec<usize>,
}

/// The only device of [`HostTensor`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Host;

impl HostTensor {
    /// Builds a tensor, checking that `data` has as many values as `shape` asks for.
    pub fn new(data: Vec<f32>, shape: &[usize]) -> Result<Self> {
        let n: usize = shape.iter().product();
        if n != data.len() {
            return Err(Error::Shape {
                op: "new",
                detail: format!("{} values for shape {shape:?} ({n} elements)", data.len()),
            });
        }
        Ok(Self { data, shape: shape.to_vec() })
    }

    /// The values, row-major.
    pub fn data(&self) -> &[f32] {
        &self.data
    }

    /// Splits the shape around `dim` into (outer, size, inner) element counts.
    fn split(&self, op: &'static str, dim: usize) -> Result<(usize, usize, usize)> {
        if dim >= self.shape.len() {
            return Err(Error::Dim { op, dim, rank: self.shape.len() });
        }
        let outer = self.shape[..dim].iter().product();
        let inner = self.shape[dim + 1..].iter().product();
        Ok((outer, self.shape[dim], inner))
    }

    fn reduce(&self, op: &'static str, dim: usize, f: impl Fn(&mut dyn Iterator<Item = f32>) -> f32) -> Result<Self> {
        let (outer, size, inner) = self.split(op, dim)?;
        if size == 0 {
            return Err(Error::Shape {
                op,
                detail: format!("cannot reduce an empty dimension {dim} of {:?}", self.shape),
            });
        }
        let mut out = Vec::with_capacity(outer * inner);
        for o in 0..outer {
            for i in 0..inner {
                let mut it = (0..size).map(|s| self.data[(o * size + s) * inner + i]);
                out.push(f(&mut it));
            }
        }
        let mut shape = self.shape.clone();
        shape.remove(dim);
        Self::new(out, &shape)
    }

    fn map(&self, f: impl Fn(f32) -> f32) -> Self {
        Self { data: self.data.iter().map(|&x| f(x)).collect(), shape: self.shape.clone() }
    }
}

impl Tensor for HostTensor {
    type Device = Host;

    fn device(&self) -> Host {
        Host
    }

    fn from_host(data: &[f32], shape: &[usize], _device: &Host) -> Result<Self> {
        Self::new(data.to_vec(), shape)
    }

    fn shape(&self) -> Vec<usize> {
        self.shape.clone()
    }

    fn to_host(&self) -> Result<Vec<f32>> {
        Ok(self.data.clone())
    }

    fn reshape(&self, shape: &[usize]) -> Result<Self> {
        Self::new(self.data.clone(), shape)
    }

    fn index_select(&self, dim: usize, indices: &[usize]) -> Result<Self> {
        let (outer, size, inner) = self.split("index_select", dim)?;
        if let Some(&bad) = indices.iter().find(|&&i| i >= size) {
            return Err(Error::Index { op: "index_select", index: bad, size });
        }
        let mut out = Vec::with_capacity(outer * indices.len() * inner);
        for o in 0..outer {
            for &s in indices {
                let start = (o * size + s) * inner;
                out.extend_from_slice(&self.data[start..start + inner]);
            }
        }
        let mut shape = self.shape.clone();
        shape[dim] = indices.len();
        Self::new(out, &shape)
    }

    fn narrow(&self, dim: usize, start: usize, len: usize) -> Result<Self> {
        let size = self.dim(dim)?;
        if start + len > size {
            return Err(Error::Index { op: "narrow", index: start + len, size });
        }
        let indices: Vec<usize> = (start..start + len).collect();
        self.index_select(dim, &indices)
    }

    fn cat(tensors: &[&Self], dim: usize) -> Result<Self> {
        let first = tensors.first().ok_or(Error::Shape { op: "cat", detail: "no tensors".into() })?;
        let (outer, _, inner) = first.split("cat", dim)?;
        let mut shape = first.shape.clone();
        shape[dim] = 0;
        for t in tensors {
            let same_rank = t.shape.len() == first.shape.len();
            let same_other =
                same_rank && t.shape.iter().zip(&first.shape).enumerate().all(|(d, (a, b))| d == dim || a == b);
            if !same_other {
                return Err(Error::Shape {
                    op: "cat",
                    detail: format!("{:?} vs {:?} along {dim}", t.shape, first.shape),
                });
            }
            shape[dim] += t.shape[dim];
        }
        let mut out = Vec::with_capacity(shape.iter().product());
        for o in 0..outer {
            for t in tensors {
                let block = t.shape[dim] * inner;
                out.extend_from_slice(&t.data[o * block..(o + 1) * block]);
            }
        }
        Self::new(out, &shape)
    }

    fn sum(&self, dim: usize) -> Result<Self> {
        self.reduce("sum", dim, |it| it.sum())
    }

    fn mean(&self, dim: usize) -> Result<Self> {
        let n = self.dim(dim)? as f32;
        self.reduce("mean", dim, |it| it.sum::<f32>() / n)
    }

    fn max(&self, dim: usize) -> Result<Self> {
        self.reduce("max", dim, |it| it.fold(f32::NEG_INFINITY, f32::max))
    }

    fn softmax_last(&self) -> Result<Self> {
        let last = *self.shape.last().ok_or(Error::Shape { op: "softmax", detail: "scalar".into() })?;
        let mut data = self.data.clone();
        if last > 0 {
            for row in data.chunks_mut(last) {
                let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let mut total = 0.0;
                for x in row.iter_mut() {
                    *x = (*x - m).exp();
                    total += *x;
                }
                row.iter_mut().for_each(|x| *x /= total);
            }
        }
        Self::new(data, &self.shape)
    }

    fn matmul(&self, rhs: &Self) -> Result<Self> {
        let (a, b) = (&self.shape, &rhs.shape);
        let bad = || Error::Shape { op: "matmul", detail: format!("{a:?} x {b:?}") };
        if a.len() < 2 || a.len() != b.len() || a[..a.len() - 2] != b[..b.len() - 2] {
            return Err(bad());
        }
        let (m, k, n) = (a[a.len() - 2], a[a.len() - 1], b[b.len() - 1]);
        if b[b.len() - 2] != k {
            return Err(bad());
        }
        let batch: usize = a[..a.len() - 2].iter().product();
        let mut out = vec![0.0f32; batch * m * n];
        for bi in 0..batch {
            let (x, y) = (&self.data[bi * m * k..], &rhs.data[bi * k * n..]);
            for i in 0..m {
                for j in 0..n {
                    out[bi * m * n + i * n + j] = (0..k).map(|p| x[i * k + p] * y[p * n + j]).sum();
                }
            }
        }
        let mut shape = a.clone();
        let last = shape.len() - 1;
        shape[last] = n;
        Self::new(out, &shape)
    }

    fn add(&self, rhs: &Self) -> Result<Self> {
        if self.shape != rhs.shape {
            return Err(Error::Shape { op: "add", detail: format!("{:?} + {:?}", self.shape, rhs.shape) });
        }
        let data = self.data.iter().zip(&rhs.data).map(|(x, y)| x + y).collect();
        Self::new(data, &self.shape)
    }

    fn affine(&self, mul: f32, add: f32) -> Result<Self> {
        Ok(self.map(|x| x * mul + add))
    }

    fn sqr(&self) -> Result<Self> {
        Ok(self.map(|x| x * x))
    }

    fn sqrt(&self) -> Result<Self> {
        Ok(self.map(f32::sqrt))
    }

    fn pool1d(&self, kernel: usize, pool: Pool) -> Result<Self> {
        crate::tensor::check_pool_kernel(kernel)?;
        let last = *self.shape.last().ok_or(Error::Shape { op: "pool1d", detail: "scalar".into() })?;
        let half = kernel / 2;
        let mut data = Vec::with_capacity(self.data.len());
        if last > 0 {
            for row in self.data.chunks(last) {
                for i in 0..last {
                    let window = &row[i.saturating_sub(half)..(i + half + 1).min(last)];
                    data.push(match pool {
                        Pool::Avg => window.iter().sum::<f32>() / kernel as f32,
                        Pool::Max => window.iter().copied().fold(f32::NEG_INFINITY, f32::max),
                    });
                }
            }
        }
        Self::new(data, &self.shape)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(data: &[f32], shape: &[usize]) -> HostTensor {
        HostTensor::new(data.to_vec(), shape).unwrap()
    }

    #[test]
    fn reductions_remove_the_dimension() {
        let x = t(&[1., 2., 3., 4., 5., 6.], &[2, 3]);
        assert_eq!(x.sum(0).unwrap(), t(&[5., 7., 9.], &[3]));
        assert_eq!(x.sum(1).unwrap(), t(&[6., 15.], &[2]));
        assert_eq!(x.mean(1).unwrap(), t(&[2., 5.], &[2]));
        assert_eq!(x.max(0).unwrap(), t(&[4., 5., 6.], &[3]));
        assert!(matches!(x.sum(2), Err(Error::Dim { .. })));
    }

    #[test]
    fn index_select_narrow_and_cat() {
        let x = t(&[1., 2., 3., 4., 5., 6.], &[2, 3]);
        assert_eq!(x.index_select(1, &[2, 0]).unwrap(), t(&[3., 1., 6., 4.], &[2, 2]));
        assert_eq!(x.narrow(1, 1, 2).unwrap(), t(&[2., 3., 5., 6.], &[2, 2]));
        assert!(matches!(x.index_select(1, &[3]), Err(Error::Index { index: 3, size: 3, .. })));
        let y = t(&[7., 8.], &[2, 1]);
        assert_eq!(HostTensor::cat(&[&x, &y], 1).unwrap(), t(&[1., 2., 3., 7., 4., 5., 6., 8.], &[2, 4]));
    }

    #[test]
    fn matmul_and_softmax() {
        let a = t(&[1., 2., 3., 4.], &[2, 2]);
        let b = t(&[5., 6., 7., 8.], &[2, 2]);
        assert_eq!(a.matmul(&b).unwrap(), t(&[19., 22., 43., 50.], &[2, 2]));
        let s = t(&[0., (2.0f32).ln()], &[1, 2]).softmax_last().unwrap();
        let v = s.to_host().unwrap();
        assert!((v[0] - 1.0 / 3.0).abs() < 1e-6 && (v[1] - 2.0 / 3.0).abs() < 1e-6);
    }

    #[test]
    fn pooling_pads_like_snapkv() {
        let x = t(&[3., 0., 0., 6.], &[4]);
        // zero-padded average over a window of 3
        assert_eq!(x.pool1d(3, Pool::Avg).unwrap(), t(&[1., 1., 2., 2.], &[4]));
        assert_eq!(x.pool1d(3, Pool::Max).unwrap(), t(&[3., 3., 6., 6.], &[4]));
        assert!(x.pool1d(2, Pool::Max).is_err());
    }
}
