//! Weights read per second by the CPU kernels' matrix × vector products (a decode step's
//! work), for one Q4_1 matrix of 1,536 × 576 from cache and for 64 of them streamed from
//! memory: `cargo run --release -p sieve-candle --example matvec [q4_0|q4_1|q8_0] [inputs]`.
//! Set `SIEVE_THREADS` as for sieve.

use std::time::Instant;

use sieve_backend::HostWeight;
use sieve_backend::quant::{GgmlType, Packed, quantize};
use sieve_candle::cpu::matvec::matmul_t;
use sieve_candle::cpu::weights::Matrix;

fn main() {
    let mut args = std::env::args().skip(1);
    let dtype = match args.next().as_deref() {
        Some("q4_0") => GgmlType::Q4_0,
        Some("q8_0") => GgmlType::Q8_0,
        _ => GgmlType::Q4_1,
    };
    let inputs: usize = args.next().and_then(|n| n.parse().ok()).unwrap_or(1);
    let (rows, cols) = (1536, 576);
    let matrix = |seed: usize| {
        let values: Vec<f32> =
            (0..rows * cols).map(|i| (((i + seed) * 2_654_435_761 % 1000) as f32 - 500.0) / 700.0).collect();
        let bytes = quantize(dtype, &values).expect("a quantizable format");
        Matrix::from_weight(HostWeight {
            data: Vec::new(),
            shape: vec![rows, cols],
            packed: Some(Packed { dtype, bytes }),
        })
    };
    let x: Vec<f32> = (0..inputs * cols).map(|i| ((i * 37 % 101) as f32 - 50.0) / 60.0).collect();
    let mut y = vec![0f32; inputs * rows];
    for (name, count, reps) in [("from cache", 1, 20_000), ("streamed", 64, 300)] {
        let ms: Vec<Matrix> = (0..count).map(matrix).collect();
        let bytes: usize = ms.iter().map(Matrix::bytes).sum();
        for m in &ms {
            matmul_t(m, &x, &mut y);
        }
        let start = Instant::now();
        for _ in 0..reps {
            for m in &ms {
                matmul_t(m, &x, &mut y);
            }
        }
        let s = start.elapsed().as_secs_f64();
        println!("{dtype:?} {inputs} input(s), {name}: {:.1} GB/s of weights", (bytes * reps) as f64 / s / 1e9);
    }
}
