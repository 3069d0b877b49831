//! [`CandleTensor`]: the core's tensor trait on candle tensors.

use candle_core::{D, DType, Device, Tensor};
use sieve_core::{Error, Pool, Result};

/// A candle tensor (`f32`) seen through [`sieve_core::Tensor`].
#[derive(Debug, Clone)]
pub struct CandleTensor(pub Tensor);

fn wrap(op: &'static str) -> impl Fn(candle_core::Error) -> Error {
    move |e| Error::backend(op, crate::error::without_backtrace(e))
}

impl CandleTensor {
    /// The candle tensor inside.
    pub fn inner(&self) -> &Tensor {
        &self.0
    }
}

impl sieve_core::Tensor for CandleTensor {
    type Device = Device;

    fn device(&self) -> Device {
        self.0.device().clone()
    }

    fn from_host(data: &[f32], shape: &[usize], device: &Device) -> Result<Self> {
        Tensor::from_slice(data, shape, device).map(Self).map_err(wrap("from_host"))
    }

    fn shape(&self) -> Vec<usize> {
        self.0.dims().to_vec()
    }

    fn to_host(&self) -> Result<Vec<f32>> {
        self.0
            .flatten_all()
            .and_then(|t| t.to_dtype(DType::F32))
            .and_then(|t| t.to_vec1::<f32>())
            .map_err(wrap("to_host"))
    }

    fn reshape(&self, shape: &[usize]) -> Result<Self> {
        self.0.reshape(shape).map(Self).map_err(wrap("reshape"))
    }

    fn index_select(&self, dim: usize, indices: &[usize]) -> Result<Self> {
        let ids: Vec<u32> = indices.iter().map(|&i| i as u32).collect();
        let ids = Tensor::from_vec(ids, indices.len(), self.0.device()).map_err(wrap("index_select"))?;
        self.0.index_select(&ids, dim).map(Self).map_err(wrap("index_select"))
    }

    fn narrow(&self, dim: usize, start: usize, len: usize) -> Result<Self> {
        self.0.narrow(dim, start, len).map(Self).map_err(wrap("narrow"))
    }

    fn cat(tensors: &[&Self], dim: usize) -> Result<Self> {
        let inner: Vec<&Tensor> = tensors.iter().map(|t| &t.0).collect();
        Tensor::cat(&inner, dim).map(Self).map_err(wrap("cat"))
    }

    fn sum(&self, dim: usize) -> Result<Self> {
        self.0.sum(dim).map(Self).map_err(wrap("sum"))
    }

    fn mean(&self, dim: usize) -> Result<Self> {
        self.0.mean(dim).map(Self).map_err(wrap("mean"))
    }

    fn max(&self, dim: usize) -> Result<Self> {
        self.0.max(dim).map(Self).map_err(wrap("max"))
    }

    fn softmax_last(&self) -> Result<Self> {
        candle_nn::ops::softmax_last_dim(&self.0.contiguous().map_err(wrap("softmax"))?)
            .map(Self)
            .map_err(wrap("softmax"))
    }

    fn matmul(&self, rhs: &Self) -> Result<Self> {
        self.0.matmul(&rhs.0).map(Self).map_err(wrap("matmul"))
    }

    fn add(&self, rhs: &Self) -> Result<Self> {
        (&self.0 + &rhs.0).map(Self).map_err(wrap("add"))
    }

    fn affine(&self, mul: f32, add: f32) -> Result<Self> {
        self.0.affine(mul as f64, add as f64).map(Self).map_err(wrap("affine"))
    }

    fn sqr(&self) -> Result<Self> {
        self.0.sqr().map(Self).map_err(wrap("sqr"))
    }

    fn sqrt(&self) -> Result<Self> {
        self.0.sqrt().map(Self).map_err(wrap("sqrt"))
    }

    fn pool1d(&self, kernel: usize, pool: Pool) -> Result<Self> {
        sieve_core::tensor::check_pool_kernel(kernel)?;
        let e = wrap("pool1d");
        let x = &self.0;
        let len = x.dim(D::Minus1).map_err(&e)?;
        let half = kernel / 2;
        if half == 0 || len == 0 {
            return Ok(self.clone());
        }
        let last = x.rank() - 1;
        let padded = match pool {
            Pool::Avg => x.pad_with_zeros(last, half, half).map_err(&e)?,
            Pool::Max => {
                let mut shape = x.dims().to_vec();
                shape[last] = half;
                let fill = Tensor::full(f32::NEG_INFINITY, shape, x.device()).map_err(&e)?;
                Tensor::cat(&[&fill, x, &fill], last).map_err(&e)?
            }
        };
        let mut acc = padded.narrow(last, 0, len).map_err(&e)?;
        for j in 1..kernel {
            let shifted = padded.narrow(last, j, len).map_err(&e)?;
            acc = match pool {
                Pool::Avg => (acc + shifted).map_err(&e)?,
                Pool::Max => acc.maximum(&shifted).map_err(&e)?,
            };
        }
        if pool == Pool::Avg {
            acc = acc.affine(1.0 / kernel as f64, 0.0).map_err(&e)?;
        }
        Ok(Self(acc))
    }
}
