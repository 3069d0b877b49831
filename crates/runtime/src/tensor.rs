//! [`RuntimeTensor`]: a tensor of whichever backend [`crate::Runtime`] holds.

use sieve_core::{Error, Pool, Result, Tensor};

/// A tensor of one of the compiled-in backends; operations run on that backend.
#[derive(Debug, Clone)]
pub enum RuntimeTensor {
    /// A candle tensor.
    #[cfg(feature = "candle")]
    Candle(sieve_candle::CandleTensor),
    /// A libtorch tensor.
    #[cfg(feature = "tch")]
    Tch(sieve_tch::TchTensor),
    /// An ONNX Runtime value.
    #[cfg(feature = "ort")]
    Ort(sieve_ort::OrtTensor),
}

/// The device of a [`RuntimeTensor`].
#[derive(Debug, Clone)]
pub enum RuntimeDevice {
    /// A candle device.
    #[cfg(feature = "candle")]
    Candle(<sieve_candle::CandleTensor as Tensor>::Device),
    /// A libtorch device.
    #[cfg(feature = "tch")]
    Tch(<sieve_tch::TchTensor as Tensor>::Device),
    /// An ONNX Runtime device.
    #[cfg(feature = "ort")]
    Ort(<sieve_ort::OrtTensor as Tensor>::Device),
}

/// Applies `$body` (a `Result` of the inner tensor type) to the tensor inside `$value`,
/// wrapping the result in the same variant.
macro_rules! each {
    ($value:expr, $t:ident => $body:expr) => {
        match $value {
            #[cfg(feature = "candle")]
            RuntimeTensor::Candle($t) => Ok(RuntimeTensor::Candle($body?)),
            #[cfg(feature = "tch")]
            RuntimeTensor::Tch($t) => Ok(RuntimeTensor::Tch($body?)),
            #[cfg(feature = "ort")]
            RuntimeTensor::Ort($t) => Ok(RuntimeTensor::Ort($body?)),
        }
    };
}

/// Applies `$body` to the tensor inside `$value`, returning its result as it is.
macro_rules! with {
    ($value:expr, $t:ident => $body:expr) => {
        match $value {
            #[cfg(feature = "candle")]
            RuntimeTensor::Candle($t) => $body,
            #[cfg(feature = "tch")]
            RuntimeTensor::Tch($t) => $body,
            #[cfg(feature = "ort")]
            RuntimeTensor::Ort($t) => $body,
        }
    };
}

fn mixed(op: &'static str) -> Error {
    Error::Shape { op, detail: "tensors of two different backends".into() }
}

/// Applies `$body` to the tensors inside `$x` and `$y`, which must be of one backend.
macro_rules! both {
    ($x:expr, $y:expr, $op:literal, $a:ident, $b:ident => $body:expr) => {
        match ($x, $y) {
            #[cfg(feature = "candle")]
            (RuntimeTensor::Candle($a), RuntimeTensor::Candle($b)) => Ok(RuntimeTensor::Candle($body?)),
            #[cfg(feature = "tch")]
            (RuntimeTensor::Tch($a), RuntimeTensor::Tch($b)) => Ok(RuntimeTensor::Tch($body?)),
            #[cfg(feature = "ort")]
            (RuntimeTensor::Ort($a), RuntimeTensor::Ort($b)) => Ok(RuntimeTensor::Ort($body?)),
            #[allow(unreachable_patterns)]
            _ => Err(mixed($op)),
        }
    };
}

/// Unwraps a list of tensors that must all be of variant `$variant`.
macro_rules! all_of {
    ($tensors:expr, $variant:ident, $op:literal) => {
        $tensors
            .iter()
            .map(|t| match t {
                RuntimeTensor::$variant(x) => Ok(x),
                #[allow(unreachable_patterns)]
                _ => Err(mixed($op)),
            })
            .collect::<Result<Vec<_>>>()
    };
}

impl Tensor for RuntimeTensor {
    type Device = RuntimeDevice;

    fn device(&self) -> RuntimeDevice {
        match self {
            #[cfg(feature = "candle")]
            RuntimeTensor::Candle(t) => RuntimeDevice::Candle(t.device()),
            #[cfg(feature = "tch")]
            RuntimeTensor::Tch(t) => RuntimeDevice::Tch(t.device()),
            #[cfg(feature = "ort")]
            RuntimeTensor::Ort(t) => RuntimeDevice::Ort(t.device()),
        }
    }

    fn from_host(data: &[f32], shape: &[usize], device: &RuntimeDevice) -> Result<Self> {
        match device {
            #[cfg(feature = "candle")]
            RuntimeDevice::Candle(d) => Ok(RuntimeTensor::Candle(Tensor::from_host(data, shape, d)?)),
            #[cfg(feature = "tch")]
            RuntimeDevice::Tch(d) => Ok(RuntimeTensor::Tch(Tensor::from_host(data, shape, d)?)),
            #[cfg(feature = "ort")]
            RuntimeDevice::Ort(d) => Ok(RuntimeTensor::Ort(Tensor::from_host(data, shape, d)?)),
        }
    }

    fn shape(&self) -> Vec<usize> {
        with!(self, t => t.shape())
    }

    fn to_host(&self) -> Result<Vec<f32>> {
        with!(self, t => t.to_host())
    }

    fn reshape(&self, shape: &[usize]) -> Result<Self> {
        each!(self, t => t.reshape(shape))
    }

    fn index_select(&self, dim: usize, indices: &[usize]) -> Result<Self> {
        each!(self, t => t.index_select(dim, indices))
    }

    fn narrow(&self, dim: usize, start: usize, len: usize) -> Result<Self> {
        each!(self, t => t.narrow(dim, start, len))
    }

    fn cat(tensors: &[&Self], dim: usize) -> Result<Self> {
        let first = tensors.first().ok_or(Error::Shape { op: "cat", detail: "no tensors".into() })?;
        match first {
            #[cfg(feature = "candle")]
            RuntimeTensor::Candle(_) => Ok(RuntimeTensor::Candle(Tensor::cat(&all_of!(tensors, Candle, "cat")?, dim)?)),
            #[cfg(feature = "tch")]
            RuntimeTensor::Tch(_) => Ok(RuntimeTensor::Tch(Tensor::cat(&all_of!(tensors, Tch, "cat")?, dim)?)),
            #[cfg(feature = "ort")]
            RuntimeTensor::Ort(_) => Ok(RuntimeTensor::Ort(Tensor::cat(&all_of!(tensors, Ort, "cat")?, dim)?)),
        }
    }

    fn sum(&self, dim: usize) -> Result<Self> {
        each!(self, t => t.sum(dim))
    }

    fn mean(&self, dim: usize) -> Result<Self> {
        each!(self, t => t.mean(dim))
    }

    fn max(&self, dim: usize) -> Result<Self> {
        each!(self, t => t.max(dim))
    }

    fn softmax_last(&self) -> Result<Self> {
        each!(self, t => t.softmax_last())
    }

    fn matmul(&self, rhs: &Self) -> Result<Self> {
        both!(self, rhs, "matmul", a, b => a.matmul(b))
    }

    fn add(&self, rhs: &Self) -> Result<Self> {
        both!(self, rhs, "add", a, b => a.add(b))
    }

    fn affine(&self, mul: f32, add: f32) -> Result<Self> {
        each!(self, t => t.affine(mul, add))
    }

    fn sqr(&self) -> Result<Self> {
        each!(self, t => t.sqr())
    }

    fn sqrt(&self) -> Result<Self> {
        each!(self, t => t.sqrt())
    }

    fn pool1d(&self, kernel: usize, pool: Pool) -> Result<Self> {
        each!(self, t => t.pool1d(kernel, pool))
    }

    fn top_k(&self, k: usize) -> Result<Vec<usize>> {
        with!(self, t => t.top_k(k))
    }
}

/// Conversions between [`RuntimeTensor`] and one backend's tensor type.
pub(crate) trait Variant: Sized {
    /// Wraps a tensor of this backend.
    fn wrap(self) -> RuntimeTensor;
    /// The tensor of this backend inside `t`, or an error for another backend's.
    fn unwrap(t: RuntimeTensor) -> Result<Self>;
    /// A reference to the tensor of this backend inside `t`.
    fn borrow(t: &RuntimeTensor) -> Result<&Self>;
}

macro_rules! variant {
    ($feature:literal, $variant:ident, $ty:ty) => {
        #[cfg(feature = $feature)]
        impl Variant for $ty {
            fn wrap(self) -> RuntimeTensor {
                RuntimeTensor::$variant(self)
            }

            fn unwrap(t: RuntimeTensor) -> Result<Self> {
                match t {
                    RuntimeTensor::$variant(x) => Ok(x),
                    #[allow(unreachable_patterns)]
                    _ => Err(mixed(concat!("unwrap ", $feature))),
                }
            }

            fn borrow(t: &RuntimeTensor) -> Result<&Self> {
                match t {
                    RuntimeTensor::$variant(x) => Ok(x),
                    #[allow(unreachable_patterns)]
                    _ => Err(mixed(concat!("borrow ", $feature))),
                }
            }
        }
    };
}

variant!("candle", Candle, sieve_candle::CandleTensor);
variant!("tch", Tch, sieve_tch::TchTensor);
variant!("ort", Ort, sieve_ort::OrtTensor);
