//! Weights kept as their file stores them: the backend contract's decoding of every packed
//! format equals candle's (the GGUF reader's), block for block, and loading with each
//! `Dtype` gives the same model.

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use sieve_backend::quant::{GgmlType, dequantize};
use sieve_engine::Dtype;
use sieve_engine::model::load_gguf_bytes;
use sieve_engine::testing::TinyGguf;

fn candle_type(t: GgmlType) -> GgmlDType {
    match t {
        GgmlType::F16 => GgmlDType::F16,
        GgmlType::BF16 => GgmlDType::BF16,
        GgmlType::Q4_0 => GgmlDType::Q4_0,
        GgmlType::Q4_1 => GgmlDType::Q4_1,
        GgmlType::Q5_0 => GgmlDType::Q5_0,
        GgmlType::Q5_1 => GgmlDType::Q5_1,
        GgmlType::Q8_0 => GgmlDType::Q8_0,
        GgmlType::Q4K => GgmlDType::Q4K,
        GgmlType::Q5K => GgmlDType::Q5K,
        GgmlType::Q6K => GgmlDType::Q6K,
    }
}

#[test]
fn every_packed_format_decodes_as_candle_decodes_it() {
    let n = 4 * 256;
    let values: Vec<f32> = (0..n).map(|i| ((i * 7919 % 1013) as f32 / 1013.0 - 0.5) * (1.0 + (i % 5) as f32)).collect();
    let t = Tensor::from_vec(values, (4, 256), &Device::Cpu).unwrap();
    for dtype in GgmlType::ALL {
        let q = QTensor::quantize(&t, candle_type(dtype)).unwrap();
        let bytes = q.data().unwrap().into_owned();
        assert_eq!(bytes.len(), 4 * dtype.row_bytes(256), "{dtype:?}");
        let want = q.dequantize(&Device::Cpu).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let mut got = vec![0f32; n];
        dequantize(dtype, &bytes, &mut got);
        for (i, (a, b)) in got.iter().zip(&want).enumerate() {
            assert!(a == b || (a - b).abs() <= 1e-6 * b.abs(), "{dtype:?} value {i}: {a} vs candle {b}");
        }
    }
}

#[test]
fn every_dtype_loads_the_same_model() {
    let bytes = TinyGguf::llama().unwrap().to_bytes().unwrap();
    let f32_model = load_gguf_bytes(&bytes).unwrap().weights.into_f32();
    let native = sieve_engine::model::load_gguf_bytes(&bytes).unwrap();
    // The tiny model's matrices are Q8_0: kept as blocks by default.
    assert!(native.weights.layers[0].q.packed.as_ref().is_some_and(|p| p.dtype == GgmlType::Q8_0));
    assert_eq!(native.weights.into_f32().layers[0].q, f32_model.layers[0].q);
    assert_eq!("bf16".parse::<Dtype>().unwrap(), Dtype::BF16);
    assert!("int3".parse::<Dtype>().is_err());
}
