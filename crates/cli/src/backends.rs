//! The runtimes compiled into this binary, chosen with `--backend`.

use anyhow::{Result, bail};
use sieve_engine::Model;

use crate::args::{BackendKind, RuntimeArgs};

/// A loaded backend. Adding a runtime means adding a variant here, and every `match`
/// on it fails to compile until the new runtime is wired in.
pub enum Loaded {
    #[cfg(feature = "candle")]
    Candle(sieve_candle::CandleBackend),
    #[cfg(feature = "tch")]
    Tch(sieve_tch::TchBackend),
    #[cfg(feature = "ort")]
    Ort(sieve_ort::OrtBackend),
}

/// Device named on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceSpec {
    Cpu,
    Cuda(usize),
}

pub fn parse_device(s: &str) -> Result<DeviceSpec> {
    match s {
        "cpu" => Ok(DeviceSpec::Cpu),
        "cuda" => Ok(DeviceSpec::Cuda(0)),
        _ => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(n)) => Ok(DeviceSpec::Cuda(n)),
            _ => bail!("--device `{s}` is not `cpu`, `cuda` or `cuda:N`"),
        },
    }
}

/// Builds the backend that `args` asks for on `model`'s weights.
/// The weights move into the backend; `model` keeps its configuration and tokenizer.
pub fn load(args: &RuntimeArgs, model: &mut Model) -> Result<Loaded> {
    let device = parse_device(&args.device)?;
    match args.backend {
        BackendKind::Candle => load_candle(model, device),
        BackendKind::Tch => load_tch(model, device),
        BackendKind::Ort => load_ort(model, device),
    }
}

#[cfg(feature = "candle")]
fn load_candle(model: &mut Model, device: DeviceSpec) -> Result<Loaded> {
    let device = match device {
        DeviceSpec::Cpu => sieve_candle::CandleDevice::Cpu,
        DeviceSpec::Cuda(n) => sieve_candle::CandleDevice::Cuda(n),
    };
    let weights = model.take_weights();
    Ok(Loaded::Candle(sieve_candle::CandleBackend::from_weights(&model.config, weights, device)?))
}

#[cfg(feature = "tch")]
fn load_tch(model: &mut Model, device: DeviceSpec) -> Result<Loaded> {
    let device = match device {
        DeviceSpec::Cpu => sieve_tch::Device::Cpu,
        DeviceSpec::Cuda(n) => sieve_tch::Device::Cuda(n),
    };
    let weights = model.take_weights();
    Ok(Loaded::Tch(sieve_tch::TchBackend::new(&model.config, &weights, device)?))
}

#[cfg(not(feature = "tch"))]
fn load_tch(_: &mut Model, _: DeviceSpec) -> Result<Loaded> {
    // main() hands `--backend tch` to sieve-tch before a model is loaded.
    bail!("backend `tch` is not compiled into this binary; build it with `cargo xtask build-tch`")
}

#[cfg(feature = "ort")]
fn load_ort(model: &mut Model, device: DeviceSpec) -> Result<Loaded> {
    let device = match device {
        DeviceSpec::Cpu => sieve_ort::OrtDevice::Cpu,
        DeviceSpec::Cuda(n) => sieve_ort::OrtDevice::Cuda(n),
    };
    let weights = model.take_weights();
    Ok(Loaded::Ort(sieve_ort::OrtBackend::new(&model.config, &weights, device)?))
}

#[cfg(not(feature = "ort"))]
fn load_ort(_: &mut Model, _: DeviceSpec) -> Result<Loaded> {
    bail!("backend `ort` is not compiled into this binary; rebuild with `--features ort`")
}

#[cfg(not(feature = "candle"))]
fn load_candle(_: &mut Model, _: DeviceSpec) -> Result<Loaded> {
    bail!("backend `candle` is not compiled into this binary; rebuild with `--features candle`")
}

/// Calls `$body` with `$b` bound to the concrete backend inside `$loaded`.
#[macro_export]
macro_rules! with_backend {
    ($loaded:expr, $b:ident => $body:expr) => {
        match $loaded {
            #[cfg(feature = "candle")]
            $crate::backends::Loaded::Candle($b) => $body,
            #[cfg(feature = "tch")]
            $crate::backends::Loaded::Tch($b) => $body,
            #[cfg(feature = "ort")]
            $crate::backends::Loaded::Ort($b) => $body,
        }
    };
}
