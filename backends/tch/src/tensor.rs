//! [`TchTensor`]: the core's tensor trait on libtorch tensors.

use sieve_core::{Error, Pool, Result};
use tch::{Device, Kind, Tensor};

/// A libtorch tensor (`f32`) seen through [`sieve_core::Tensor`].
#[derive(Debug)]
pub struct TchTensor(pub Tensor);

impl Clone for TchTensor {
    /// Shares the storage, as tensors of the other backends do.
    fn clone(&self) -> Self {
        Self(self.0.shallow_clone())
    }
}

fn wrap(op: &'static str) -> impl Fn(tch::TchError) -> Error {
    move |e| Error::backend(op, e)
}

fn dims(shape: &[usize]) -> Vec<i64> {
    shape.iter().map(|&d| d as i64).collect()
}

fn index(indices: &[usize], device: Device) -> Result<Tensor> {
    let ids: Vec<i64> = indices.iter().map(|&i| i as i64).collect();
    Tensor::f_from_slice(&ids).and_then(|t| t.f_to(device)).map_err(wrap("index"))
}

impl sieve_core::Tensor for TchTensor {
    type Device = Device;

    fn device(&self) -> Device {
        self.0.device()
    }

    fn from_host(data: &[f32], shape: &[usize], device: &Device) -> Result<Self> {
        let n: usize = shape.iter().product();
        if n != data.len() {
            return Err(Error::Shape { op: "from_host", detail: format!("{} values for shape {shape:?}", data.len()) });
        }
        Tensor::f_from_slice(data)
            .and_then(|t| t.f_reshape(dims(shape)))
            .and_then(|t| t.f_to(*device))
            .map(Self)
            .map_err(wrap("from_host"))
    }

    fn shape(&self) -> Vec<usize> {
        self.0.size().iter().map(|&d| d as usize).collect()
    }

    fn to_host(&self) -> Result<Vec<f32>> {
        let flat = self.0.f_to_kind(Kind::Float).and_then(|t| t.f_reshape([-1])).map_err(wrap("to_host"))?;
        Vec::<f32>::try_from(&flat).map_err(wrap("to_host"))
    }

    fn reshape(&self, shape: &[usize]) -> Result<Self> {
        self.0.f_reshape(dims(shape)).map(Self).map_err(wrap("reshape"))
    }

    fn index_select(&self, dim: usize, indices: &[usize]) -> Result<Self> {
        let size = self.dim(dim)?;
        if let Some(&bad) = indices.iter().find(|&&i| i >= size) {
            return Err(Error::Index { op: "index_select", index: bad, size });
        }
        let ids = index(indices, self.0.device())?;
        self.0.f_index_select(dim as i64, &ids).map(Self).map_err(wrap("index_select"))
    }

    fn narrow(&self, dim: usize, start: usize, len: usize) -> Result<Self> {
        let size = self.dim(dim)?;
        if start + len > size {
            return Err(Error::Index { op: "narrow", index: start + len, size });
        }
        self.0.f_narrow(dim as i64, start as i64, len as i64).map(Self).map_err(wrap("narrow"))
    }

    fn cat(tensors: &[&Self], dim: usize) -> Result<Self> {
        let inner: Vec<&Tensor> = tensors.iter().map(|t| &t.0).collect();
        Tensor::f_cat(&inner, dim as i64).map(Self).map_err(wrap("cat"))
    }

    fn sum(&self, dim: usize) -> Result<Self> {
        self.0.f_sum_dim_intlist([dim as i64].as_slice(), false, Kind::Float).map(Self).map_err(wrap("sum"))
    }

    fn mean(&self, dim: usize) -> Result<Self> {
        self.0.f_mean_dim([dim as i64].as_slice(), false, Kind::Float).map(Self).map_err(wrap("mean"))
    }

    fn max(&self, dim: usize) -> Result<Self> {
        self.0.f_amax([dim as i64].as_slice(), false).map(Self).map_err(wrap("max"))
    }

    fn softmax_last(&self) -> Result<Self> {
        self.0.f_softmax(-1, Kind::Float).map(Self).map_err(wrap("softmax"))
    }

    fn matmul(&self, rhs: &Self) -> Result<Self> {
        if self.rank() < 2 || self.rank() != rhs.rank() {
            return Err(Error::Shape { op: "matmul", detail: format!("{:?} x {:?}", self.shape(), rhs.shape()) });
        }
        self.0.f_matmul(&rhs.0).map(Self).map_err(wrap("matmul"))
    }

    fn add(&self, rhs: &Self) -> Result<Self> {
        if self.shape() != rhs.shape() {
            return Err(Error::Shape { op: "add", detail: format!("{:?} + {:?}", self.shape(), rhs.shape()) });
        }
        self.0.f_add(&rhs.0).map(Self).map_err(wrap("add"))
    }

    fn affine(&self, mul: f32, add: f32) -> Result<Self> {
        self.0.f_mul_scalar(mul as f64).and_then(|t| t.f_add_scalar(add as f64)).map(Self).map_err(wrap("affine"))
    }

    fn sqr(&self) -> Result<Self> {
        self.0.f_square().map(Self).map_err(wrap("sqr"))
    }

    fn sqrt(&self) -> Result<Self> {
        self.0.f_sqrt().map(Self).map_err(wrap("sqrt"))
    }

    fn pool1d(&self, kernel: usize, pool: Pool) -> Result<Self> {
        sieve_core::tensor::check_pool_kernel(kernel)?;
        let shape = self.shape();
        let len = *shape.last().ok_or(Error::Shape { op: "pool1d", detail: "scalar".into() })? as i64;
        let rows = (shape.iter().product::<usize>() as i64) / len.max(1);
        let (k, pad) = (kernel as i64, (kernel / 2) as i64);
        let x = self.0.f_reshape([rows, 1, len]).map_err(wrap("pool1d"))?;
        let pooled = match pool {
            // count_include_pad: positions past either end count as zero.
            Pool::Avg => x.f_avg_pool1d([k], [1], [pad], false, true),
            Pool::Max => x.f_max_pool1d([k], [1], [pad], [1], false),
        };
        pooled.and_then(|t| t.f_reshape(dims(&shape))).map(Self).map_err(wrap("pool1d"))
    }
}
