//! The conformance suite through the dispatch: a [`Runtime`] behaves exactly like the
//! backend inside it, for every backend this build contains.

use sieve_backend::{DeviceSpec, ModelConfig, Weights};
use sieve_runtime::{BackendKind, Runtime};

fn load(kind: BackendKind, config: &ModelConfig, weights: Weights) -> Runtime {
    Runtime::load(kind, DeviceSpec::Cpu, config, weights).unwrap_or_else(|e| panic!("{kind}: {e}"))
}

mod candle {
    use super::*;

    sieve_backend::backend_conformance!(Runtime, |c: &ModelConfig, w| load(BackendKind::Candle, c, w));
}

mod ort {
    use super::*;

    sieve_backend::backend_conformance!(Runtime, |c: &ModelConfig, w| load(BackendKind::Ort, c, w));
}
