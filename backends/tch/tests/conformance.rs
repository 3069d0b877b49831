//! The backend conformance suite (and the core's tensor cases) on libtorch's CPU, and the
//! tensor cases on CUDA when libtorch sees a GPU.

use sieve_backend::{ModelConfig, Weights};
use sieve_tch::{Device, TchBackend, TchTensor};

fn cpu(config: &ModelConfig, weights: Weights) -> TchBackend {
    TchBackend::new(config, &weights, Device::Cpu).expect("tch backend")
}

sieve_backend::backend_conformance!(TchBackend, cpu);

#[test]
fn cuda_tensors_conform_when_a_gpu_is_present() {
    if !sieve_tch::cuda_available() {
        eprintln!("skipped: libtorch sees no CUDA device");
        return;
    }
    sieve_core::conformance::run_all::<TchTensor>(&Device::Cuda(0)).unwrap();
}
