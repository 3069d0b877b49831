//! The backend conformance suite (and the core's tensor cases) on ONNX Runtime's CPU
//! provider. Needs the library (`cargo xtask setup-ort`; CI installs it).

use sieve_backend::{ModelConfig, Weights};
use sieve_ort::{OrtBackend, OrtDevice};

fn cpu(config: &ModelConfig, weights: Weights) -> OrtBackend {
    sieve_ort::load(&sieve_fetch::onnxruntime::library_path()).unwrap_or_else(|e| panic!("{e}"));
    OrtBackend::new(config, &weights, OrtDevice::Cpu).unwrap_or_else(|e| panic!("ort backend: {e}"))
}

sieve_backend::backend_conformance!(OrtBackend, cpu);
