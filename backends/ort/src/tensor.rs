//! [`OrtTensor`]: the core's tensor trait on ONNX Runtime values. Each operation runs as a
//! one-operator ONNX graph (see [`crate::ops`]) on the tensor's device.

use std::sync::Arc;

use ort::session::SessionInputValue;
use ort::value::{DynValue, Tensor as OrtValueTensor};
use sieve_core::{Error, Pool, Result};

use crate::graph::Attr;
use crate::ops::{In, op};
use crate::runtime::{OrtDevice, environment};

/// An `f32` ONNX Runtime value seen through [`sieve_core::Tensor`]. Clones share the value.
#[derive(Clone)]
pub struct OrtTensor {
    value: Arc<DynValue>,
    shape: Vec<usize>,
    device: OrtDevice,
}

impl std::fmt::Debug for OrtTensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "OrtTensor({:?} on {:?})", self.shape, self.device)
    }
}

fn fail(op: &'static str) -> impl Fn(crate::Error) -> Error {
    move |e| Error::backend(op, e)
}

fn fail_ort(op: &'static str) -> impl Fn(ort::Error) -> Error {
    move |e| Error::backend(op, e)
}

/// An int64 vector as an ONNX Runtime value.
pub(crate) fn int_value(values: &[i64]) -> std::result::Result<DynValue, ort::Error> {
    OrtValueTensor::<i64>::from_array((vec![values.len()], values.to_vec())).map(|t| t.into_dyn())
}

/// A float value of `shape` holding `data`.
pub(crate) fn float_value(data: &[f32], shape: &[usize]) -> std::result::Result<DynValue, ort::Error> {
    OrtValueTensor::<f32>::from_array((shape.to_vec(), data.to_vec())).map(|t| t.into_dyn())
}

impl OrtTensor {
    /// Wraps an `f32` value that ONNX Runtime produced on `device`.
    pub(crate) fn from_value(value: DynValue, device: OrtDevice) -> crate::Result<Self> {
        let (shape, _) = value.try_extract_tensor::<f32>().map_err(crate::Error::ort("reading an output"))?;
        let shape = shape.iter().map(|&d| d as usize).collect();
        Ok(Self { value: Arc::new(value), shape, device })
    }

    /// The underlying value, to pass to a session.
    pub(crate) fn value(&self) -> &DynValue {
        &self.value
    }

    fn input(&self) -> SessionInputValue<'_> {
        SessionInputValue::from(&*self.value)
    }

    fn run(
        &self,
        name: &'static str,
        key: &str,
        op_type: &str,
        extra: Vec<(In, SessionInputValue<'_>)>,
        attrs: &[(&str, Attr)],
    ) -> Result<Self> {
        let mut kinds = vec![In::F];
        let mut inputs = vec![self.input()];
        for (kind, v) in extra {
            kinds.push(kind);
            inputs.push(v);
        }
        let op = op(key, self.device, op_type, &kinds, attrs).map_err(fail(name))?;
        let out = op.run(inputs).map_err(fail(name))?;
        Self::from_value(out, self.device).map_err(fail(name))
    }

    fn ints(name: &'static str, v: &[i64]) -> Result<SessionInputValue<'static>> {
        int_value(v).map(SessionInputValue::from).map_err(fail_ort(name))
    }

    fn check_dim(&self, op: &'static str, dim: usize) -> Result<()> {
        if dim >= self.shape.len() {
            return Err(Error::Shape { op, detail: format!("dimension {dim} of a tensor of shape {:?}", self.shape) });
        }
        Ok(())
    }

    fn reduce(&self, name: &'static str, op_type: &str, dim: usize) -> Result<Self> {
        self.check_dim(name, dim)?;
        let axes = Self::ints(name, &[dim as i64])?;
        self.run(name, op_type, op_type, vec![(In::I, axes)], &[("keepdims", Attr::Int(0))])
    }

    fn scalar_op(&self, name: &'static str, op_type: &str, value: f32) -> Result<Self> {
        let s = float_value(&[value], &[]).map(SessionInputValue::from).map_err(fail_ort(name))?;
        self.run(name, op_type, op_type, vec![(In::F, s)], &[])
    }
}

impl sieve_core::Tensor for OrtTensor {
    type Device = OrtDevice;

    fn device(&self) -> OrtDevice {
        self.device
    }

    fn from_host(data: &[f32], shape: &[usize], device: &OrtDevice) -> Result<Self> {
        let n: usize = shape.iter().product();
        if n != data.len() {
            return Err(Error::Shape { op: "from_host", detail: format!("{} values for shape {shape:?}", data.len()) });
        }
        environment().map_err(fail("from_host"))?;
        let value = float_value(data, shape).map_err(fail_ort("from_host"))?;
        Ok(Self { value: Arc::new(value), shape: shape.to_vec(), device: *device })
    }

    fn shape(&self) -> Vec<usize> {
        self.shape.clone()
    }

    fn to_host(&self) -> Result<Vec<f32>> {
        let (_, data) = self.value.try_extract_tensor::<f32>().map_err(fail_ort("to_host"))?;
        Ok(data.to_vec())
    }

    fn reshape(&self, shape: &[usize]) -> Result<Self> {
        if shape.iter().product::<usize>() != self.shape.iter().product::<usize>() {
            return Err(Error::Shape { op: "reshape", detail: format!("{:?} to {shape:?}", self.shape) });
        }
        let dims: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
        self.run("reshape", "reshape", "Reshape", vec![(In::I, Self::ints("reshape", &dims)?)], &[])
    }

    fn index_select(&self, dim: usize, indices: &[usize]) -> Result<Self> {
        self.check_dim("index_select", dim)?;
        let size = self.shape[dim];
        if let Some(&bad) = indices.iter().find(|&&i| i >= size) {
            return Err(Error::Index { op: "index_select", index: bad, size });
        }
        let ids: Vec<i64> = indices.iter().map(|&i| i as i64).collect();
        let key = format!("gather{dim}");
        let attrs = [("axis", Attr::Int(dim as i64))];
        self.run("index_select", &key, "Gather", vec![(In::I, Self::ints("index_select", &ids)?)], &attrs)
    }

    fn narrow(&self, dim: usize, start: usize, len: usize) -> Result<Self> {
        self.check_dim("narrow", dim)?;
        let size = self.shape[dim];
        if start + len > size {
            return Err(Error::Index { op: "narrow", index: start + len, size });
        }
        let i = |v: usize| Self::ints("narrow", &[v as i64]);
        let extra = vec![(In::I, i(start)?), (In::I, i(start + len)?), (In::I, i(dim)?)];
        self.run("narrow", "slice", "Slice", extra, &[])
    }

    fn cat(tensors: &[&Self], dim: usize) -> Result<Self> {
        let first = tensors.first().ok_or(Error::Shape { op: "cat", detail: "no tensors".into() })?;
        first.check_dim("cat", dim)?;
        for t in tensors {
            let same = t.shape.len() == first.shape.len()
                && t.shape.iter().zip(&first.shape).enumerate().all(|(d, (a, b))| d == dim || a == b);
            if !same {
                return Err(Error::Shape {
                    op: "cat",
                    detail: format!("{:?} and {:?} along {dim}", first.shape, t.shape),
                });
            }
        }
        let key = format!("concat{}_{dim}", tensors.len());
        let kinds = vec![In::F; tensors.len()];
        let op = op(&key, first.device, "Concat", &kinds, &[("axis", Attr::Int(dim as i64))]).map_err(fail("cat"))?;
        let out = op.run(tensors.iter().map(|t| t.input()).collect()).map_err(fail("cat"))?;
        Self::from_value(out, first.device).map_err(fail("cat"))
    }

    fn sum(&self, dim: usize) -> Result<Self> {
        self.reduce("sum", "ReduceSum", dim)
    }

    fn mean(&self, dim: usize) -> Result<Self> {
        self.reduce("mean", "ReduceMean", dim)
    }

    fn max(&self, dim: usize) -> Result<Self> {
        self.reduce("max", "ReduceMax", dim)
    }

    fn softmax_last(&self) -> Result<Self> {
        self.run("softmax", "softmax", "Softmax", vec![], &[("axis", Attr::Int(-1))])
    }

    fn matmul(&self, rhs: &Self) -> Result<Self> {
        let (a, b) = (&self.shape, &rhs.shape);
        let ok = a.len() >= 2
            && a.len() == b.len()
            && a[..a.len() - 2] == b[..b.len() - 2]
            && a[a.len() - 1] == b[b.len() - 2];
        if !ok {
            return Err(Error::Shape { op: "matmul", detail: format!("{a:?} x {b:?}") });
        }
        self.run("matmul", "matmul", "MatMul", vec![(In::F, rhs.input())], &[])
    }

    fn add(&self, rhs: &Self) -> Result<Self> {
        if self.shape != rhs.shape {
            return Err(Error::Shape { op: "add", detail: format!("{:?} + {:?}", self.shape, rhs.shape) });
        }
        self.run("add", "add", "Add", vec![(In::F, rhs.input())], &[])
    }

    fn affine(&self, mul: f32, add: f32) -> Result<Self> {
        self.scalar_op("affine", "Mul", mul)?.scalar_op("affine", "Add", add)
    }

    fn sqr(&self) -> Result<Self> {
        self.run("sqr", "mul", "Mul", vec![(In::F, self.input())], &[])
    }

    fn sqrt(&self) -> Result<Self> {
        self.run("sqrt", "sqrt", "Sqrt", vec![], &[])
    }

    fn pool1d(&self, kernel: usize, pool: Pool) -> Result<Self> {
        sieve_core::tensor::check_pool_kernel(kernel)?;
        let len = *self.shape.last().ok_or(Error::Shape { op: "pool1d", detail: "scalar".into() })?;
        let rows = self.shape.iter().product::<usize>() / len.max(1);
        let x = self.reshape(&[rows, 1, len])?;
        let (k, pad) = (kernel as i64, (kernel / 2) as i64);
        let mut attrs = vec![("kernel_shape", Attr::Ints(vec![k])), ("pads", Attr::Ints(vec![pad, pad]))];
        attrs.push(("strides", Attr::Ints(vec![1])));
        let pooled = match pool {
            // count_include_pad: positions past either end count as zero.
            Pool::Avg => {
                attrs.push(("count_include_pad", Attr::Int(1)));
                x.run("pool1d", &format!("avgpool{kernel}"), "AveragePool", vec![], &attrs)?
            }
            Pool::Max => x.run("pool1d", &format!("maxpool{kernel}"), "MaxPool", vec![], &attrs)?,
        };
        pooled.reshape(&self.shape)
    }
}
