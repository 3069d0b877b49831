//! [`CandleBackend`]: the backend contract on candle — sieve's own kernels on the CPU
//! ([`crate::cpu`]), candle ops elsewhere ([`crate::ops`]).

use candle_core::Device;
use sieve_backend::{Backend, DeviceSpec, ModelConfig, Weights};

use crate::cpu::CpuModel;
use crate::error::{Error, Result};
use crate::ops::OpsModel;
use crate::tensor::CandleTensor;

/// Where candle runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CandleDevice {
    /// The CPU.
    #[default]
    Cpu,
    /// A CUDA GPU by ordinal (needs the `cuda` feature).
    Cuda(usize),
}

impl From<DeviceSpec> for CandleDevice {
    fn from(spec: DeviceSpec) -> Self {
        match spec {
            DeviceSpec::Cpu => CandleDevice::Cpu,
            DeviceSpec::Cuda(n) => CandleDevice::Cuda(n),
        }
    }
}

impl CandleDevice {
    /// Opens the device; a CUDA device in a build without the `cuda` feature, or on a
    /// machine without a GPU, is an error.
    pub fn open(self) -> Result<Device> {
        match self {
            CandleDevice::Cpu => Ok(Device::Cpu),
            CandleDevice::Cuda(ordinal) => {
                if !candle_core::utils::cuda_is_available() {
                    return Err(Error::NoCuda);
                }
                Device::new_cuda(ordinal).map_err(|e| {
                    // The driver's reason, without the backtrace candle attaches when
                    // RUST_BACKTRACE is set.
                    let e = match e {
                        candle_core::Error::WithBacktrace { inner, .. } => *inner,
                        e => e,
                    };
                    let detail = e.to_string().lines().map(str::trim).collect::<Vec<_>>().join(" ");
                    Error::NoDevice { ordinal, detail }
                })
            }
        }
    }
}

/// How a [`CandleBackend`] computes its layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Kernels {
    /// sieve's CPU kernels on the CPU, candle ops on any other device.
    #[default]
    Auto,
    /// candle ops on every device (for comparison with the kernels).
    Ops,
}

enum Path {
    Cpu(CpuModel),
    Ops(OpsModel),
}

/// A Llama-family decoder on candle (`f32`).
pub struct CandleBackend {
    config: ModelConfig,
    device: Device,
    path: Path,
}

impl CandleBackend {
    /// Copies `weights` to `device`.
    pub fn new(config: &ModelConfig, weights: &Weights, device: CandleDevice) -> Result<Self> {
        Self::from_weights(config, weights.clone(), device)
    }

    /// Moves `weights` to `device` (on the CPU without a copy), with the default kernels.
    pub fn from_weights(config: &ModelConfig, weights: Weights, device: CandleDevice) -> Result<Self> {
        Self::with_kernels(config, weights, device, Kernels::Auto)
    }

    /// Moves `weights` to `device` and computes with `kernels`.
    pub fn with_kernels(
        config: &ModelConfig,
        weights: Weights,
        device: CandleDevice,
        kernels: Kernels,
    ) -> Result<Self> {
        config.validate()?;
        weights.check(config)?;
        let device = device.open()?;
        let path = match (kernels, &device) {
            (Kernels::Auto, Device::Cpu) => Path::Cpu(CpuModel::new(config, weights)),
            _ => Path::Ops(OpsModel::new(config, weights, device.clone())?),
        };
        Ok(Self { config: config.clone(), device, path })
    }

    /// What the layers' matrices compute in: `f32`, or `f16`/`bf16` on the candle-ops path
    /// when every matrix is stored in that format. The CPU kernels compute
    /// in `f32` on any format.
    pub fn compute_dtype(&self) -> candle_core::DType {
        match &self.path {
            Path::Cpu(_) => candle_core::DType::F32,
            Path::Ops(m) => m.dtype(),
        }
    }

    /// Bytes of device memory in use on a CUDA device, as its driver counts them (total
    /// minus free, after the device's queue has finished); `None` on the CPU.
    pub fn device_memory_in_use(&self) -> Option<u64> {
        #[cfg(feature = "cuda")]
        if let Device::Cuda(cuda) = &self.device {
            self.device.synchronize().ok()?;
            let (free, total) = cuda.cuda_stream().context().mem_get_info().ok()?;
            return Some((total - free) as u64);
        }
        None
    }

    /// Which kernels run the layers: `cpu` (sieve's) or `ops` (candle's).
    pub fn kernels(&self) -> &'static str {
        match self.path {
            Path::Cpu(_) => "cpu",
            Path::Ops(_) => "ops",
        }
    }
}

impl Backend for CandleBackend {
    type Tensor = CandleTensor;
    type Error = Error;

    fn name(&self) -> &'static str {
        "candle"
    }

    fn config(&self) -> &ModelConfig {
        &self.config
    }

    fn device(&self) -> Device {
        self.device.clone()
    }

    fn embed(&self, tokens: &[u32]) -> Result<CandleTensor> {
        match &self.path {
            Path::Cpu(m) => m.embed(tokens),
            Path::Ops(m) => m.embed(tokens),
        }
    }

    fn layer(&self, call: crate::Call<'_>, cache: &mut crate::Cache) -> crate::Output {
        match &self.path {
            Path::Cpu(m) => m.layer(call, cache),
            Path::Ops(m) => m.layer(call, cache),
        }
    }

    fn logits(&self, hidden: &CandleTensor) -> Result<CandleTensor> {
        match &self.path {
            Path::Cpu(m) => m.logits(hidden),
            Path::Ops(m) => m.logits(hidden),
        }
    }

    fn layer_batch(
        &self,
        calls: &[crate::Call<'_>],
        caches: &mut [&mut crate::Cache],
    ) -> Result<Vec<sieve_backend::LayerOutput<CandleTensor>>> {
        match &self.path {
            Path::Cpu(m) => m.layer_batch(calls, caches),
            Path::Ops(_) => {
                sieve_backend::check_batch(calls, caches.len())?;
                calls.iter().zip(caches.iter_mut()).map(|(call, cache)| self.layer(*call, cache)).collect()
            }
        }
    }
}
