//! The core's conformance suite (tensor operations and scorers against the host
//! reference) on candle's CPU tensors.

use candle_core::Device;
use sieve_candle::CandleTensor;

#[test]
fn candle_tensors_conform_to_the_reference() {
    sieve_core::conformance::run_all::<CandleTensor>(&Device::Cpu).unwrap();
}
