//! Weights read per second by the CPU kernels' matrix × vector products (a decode step's
//! work), for one matrix of 1,536 × 576 from cache, for 64 of them streamed from memory,
//! and for the default model's matrices (30 layers' products in the format given and the
//! 49,152 × 576 Q8_0 output, as a decode step reads them):
//! `cargo run --release -p sieve-candle --example matvec [q4_0|q4_1|q8_0] [inputs]`.
//! Set `SIEVE_THREADS` as for sieve.
//!
//! A last line times the integer kernel alone on the model's matrices: two threads, each
//! taking half of every matrix's panels (the next panel but one requested ahead, as the
//! products do), the inputs quantized once, no pool, no output buffers; what the products
//! of a decode step cannot go below on this CPU.

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
    let matrix_of = |dtype: GgmlType, rows: usize, cols: usize, seed: usize| {
        let values: Vec<f32> =
            (0..rows * cols).map(|i| (((i + seed) * 2_654_435_761 % 1000) as f32 - 500.0) / 700.0).collect();
        let bytes = quantize(dtype, &values).expect("a quantizable format");
        Matrix::from_weight(HostWeight {
            data: Vec::new(),
            shape: vec![rows, cols],
            packed: Some(Packed::new(dtype, bytes)),
        })
    };
    let matrix = |seed: usize| matrix_of(dtype, rows, cols, seed);
    // The default model's products per layer (q/k/v and gate/up fused) and its output.
    let model = || {
        let mut ms = Vec::new();
        for layer in 0..30 {
            for (r, c) in [(960, 576), (576, 576), (3072, 576), (576, 1536)] {
                ms.push(matrix_of(dtype, r, c, 7 * layer + r));
            }
        }
        ms.push(matrix_of(GgmlType::Q8_0, 49_152, 576, 3));
        ms
    };
    let x: Vec<f32> = (0..inputs * 1536).map(|i| ((i * 37 % 101) as f32 - 50.0) / 60.0).collect();
    let cases: [(&str, Vec<Matrix>, usize); 3] = [
        ("from cache", vec![matrix(0)], 20_000),
        ("streamed", (0..64).map(matrix).collect(), 300),
        ("the default model's matrices", model(), 100),
    ];
    for (name, ms, reps) in cases {
        let bytes: usize = ms.iter().map(Matrix::bytes).sum();
        let pass = || {
            for m in &ms {
                let mut y = vec![0f32; inputs * m.rows()];
                matmul_t(m, &x[..inputs * m.cols()], &mut y);
                std::hint::black_box(&y);
            }
        };
        pass();
        let start = Instant::now();
        for _ in 0..reps {
            pass();
        }
        let s = start.elapsed().as_secs_f64();
        println!(
            "{dtype:?} {inputs} input(s), {name}: {:.1} GB/s of weights, {:.2} ms per pass",
            (bytes * reps) as f64 / s / 1e9,
            s * 1e3 / reps as f64
        );
    }
    kernel_alone(model(), &x, inputs);
}

/// The integer kernel on every panel of `ms` (the model's matrices) for `inputs` rows of
/// `x`, two threads splitting each matrix's panels, four inputs per pass as the products
/// run them.
fn kernel_alone(ms: Vec<Matrix>, x: &[f32], inputs: usize) {
    use sieve_candle::cpu::intdot::PANEL;
    use sieve_candle::cpu::vnni;
    let Some(dtype) = ms[0].dtype().filter(|&d| vnni::supported(d, PANEL, ms[0].cols())) else {
        println!("the integer kernel alone: none for this format on this CPU");
        return;
    };
    // Per matrix: its format, its panels and its inputs, quantized once.
    let work: Vec<_> = ms
        .iter()
        .map(|m| {
            let d = m.dtype().unwrap_or(dtype);
            let xs: Vec<vnni::Quantized> =
                x[..inputs * m.cols()].chunks_exact(m.cols()).map(vnni::Quantized::new).collect();
            let panels: Vec<&[u8]> =
                (0..m.rows()).step_by(PANEL).filter_map(|r| m.packed_rows(r, PANEL).map(|(_, b)| b)).collect();
            (d, panels, xs)
        })
        .collect();
    let half = |which: usize| {
        let mut out = vec![[0f32; PANEL]; 4];
        for (d, panels, xs) in &work {
            let (from, to) = (panels.len() * which / 2, panels.len() * (which + 1) / 2);
            for p in from..to {
                let fetch = (p + 2 < to).then(|| panels[p + 2]);
                for (i, xs) in xs.chunks(4).enumerate() {
                    let out = &mut out[..xs.len()];
                    vnni::panel_dots(*d, panels[p], fetch.filter(|_| i == 0), xs, out);
                    std::hint::black_box(&out);
                }
            }
        }
    };
    let pass = || {
        std::thread::scope(|s| {
            s.spawn(|| half(1));
            half(0);
        })
    };
    pass();
    let reps = 20;
    let start = Instant::now();
    for _ in 0..reps {
        pass();
    }
    let units: usize = ms.iter().map(|m| m.rows() * m.cols() / (PANEL * 32)).sum();
    let s = start.elapsed().as_secs_f64() / reps as f64;
    println!(
        "{dtype:?} {inputs} input(s), the integer kernel alone on the model's matrices, two threads: {:.2} ms per pass, {:.2} ns per unit of 16 rows x 32 values and input",
        s * 1e3,
        s * 1e9 / (units * inputs) as f64
    );
}
