//! Integer dot products for Q4_0, Q4_1 and Q8_0 rows: the input vector is quantized to
//! 16 bits per block of 32 values (one `f32` scale per block), each block's products are
//! summed as integers by AVX-512 VNNI (`vpdpwssd`, 32 products per instruction) and then
//! scaled in `f32`. That is about half the instructions per weight of decoding the blocks
//! to `f32` ([`super::qdot`]).
//!
//! The result is exactly the product of the decoded weights with the decoded 16-bit input
//! (up to the order of the `f32` additions); against the `f32` input, each value moves by
//! at most half a step, `amax / 65534` of its block. Eight bits (llama.cpp's Q8_1
//! activations) would halve the work again, but measurably change the default model's
//! answers (it no longer names Paris as France's capital); sixteen bits do not.
//!
//! Q8_0 rows are multiplied here; Q4_0 and Q4_1 rows by [`super::nibble`], on the same
//! 16-bit input split in bytes. The kernels read a layout of their own, made once at load
//! ([`split`]). Q8_0 blocks go in pairs, and a pair's 64 values in *lane order*: the first
//! 16 values of the first block, the first 16 of the second, then the last 16 of each.
//! Widened to 16 bits, the first 32 of them fill one register whose products land in lanes
//! 0-7 (first block) and 8-15 (second block) of `vpdpwssd`'s output, and the last 32
//! accumulate into the same lanes: one conversion, one scale and one multiply-add per pair
//! instead of per block. The input is quantized in the same order. After the values of all
//! pairs come the blocks' `f16` scales. A row takes as many bytes as in the GGUF layout.

use sieve_backend::quant::{GgmlType, f16_to_f32};

use super::nibble;
use super::simd::{Isa, isa};

/// Whether rows of `cols` values of `dtype` have an integer kernel on this CPU.
pub fn supported(dtype: GgmlType, cols: usize) -> bool {
    cpu() && cols.is_multiple_of(64) && matches!(dtype, GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q8_0)
}

/// Whether this CPU has the instructions of the kernels, detected once (set
/// `SIEVE_NO_VNNI` to use the `f32` kernels instead).
pub(crate) fn cpu() -> bool {
    use std::sync::OnceLock;
    static CPU: OnceLock<bool> = OnceLock::new();
    *CPU.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            isa() == Isa::Avx512
                && std::env::var_os("SIEVE_NO_VNNI").is_none()
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512vl")
                && is_x86_feature_detected!("avx512vnni")
                && is_x86_feature_detected!("f16c")
        }
        #[cfg(not(target_arch = "x86_64"))]
        false
    })
}

/// The 32 values of Q8_0 block `block` as bytes, with its `f16` scale bytes.
fn block_values(block: &[u8]) -> ([u8; 32], [u8; 2]) {
    let mut v = [0u8; 32];
    v.copy_from_slice(&block[2..34]);
    (v, [block[0], block[1]])
}

/// Where value `j` (`0..32`) of block `b` (0 or 1 of a pair) sits in the pair's lane order.
fn lane(b: usize, j: usize) -> usize {
    (j / 16) * 32 + b * 16 + j % 16
}

/// Rows of GGUF blocks (`bytes`, rows of `cols` values) in the kernels' layout.
///
/// # Panics
/// If [`supported`] would refuse `dtype` and `cols` on any CPU (`cols` not a multiple of 64,
/// or another format), or `bytes` is not whole rows.
pub fn split(dtype: GgmlType, cols: usize, bytes: &[u8]) -> Vec<u8> {
    assert!(cols.is_multiple_of(64) && matches!(dtype, GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q8_0));
    let (rb, size, nb) = (dtype.row_bytes(cols), dtype.block_bytes(), cols / 32);
    assert!(bytes.len().is_multiple_of(rb), "{} bytes are not rows of {rb}", bytes.len());
    let mut out = vec![0u8; bytes.len()];
    for (row, dst) in bytes.chunks_exact(rb).zip(out.chunks_exact_mut(rb)) {
        if nibble::handles(dtype) {
            nibble::split_row(dtype, nb, row, dst);
            continue;
        }
        let (values, scales) = dst.split_at_mut(nb * 32);
        for (b, block) in row.chunks_exact(size).enumerate() {
            let (v, d) = block_values(block);
            scales[2 * b..2 * b + 2].copy_from_slice(&d);
            let pair = &mut values[64 * (b / 2)..64 * (b / 2 + 1)];
            for (j, &q) in v.iter().enumerate() {
                pair[lane(b % 2, j)] = q;
            }
        }
    }
    out
}

/// Decodes split rows (from [`split`]) to `f32`, as [`sieve_backend::quant::dequantize`]
/// decodes the GGUF rows they came from.
pub fn dequantize(dtype: GgmlType, cols: usize, bytes: &[u8], out: &mut [f32]) {
    let (rb, nb) = (dtype.row_bytes(cols), cols / 32);
    assert_eq!(out.len() * rb, bytes.len() * cols, "dequantize: {} values from {} bytes", out.len(), bytes.len());
    for (row, dst) in bytes.chunks_exact(rb).zip(out.chunks_exact_mut(cols)) {
        if nibble::handles(dtype) {
            nibble::dequantize_row(dtype, nb, row, dst);
            continue;
        }
        #[cfg(target_arch = "x86_64")]
        if cpu() && cols.is_multiple_of(64) {
            // SAFETY: `cpu` detected avx512f and f16c; `row` is one split Q8_0 row of
            // `cols` values (a multiple of 64) and `dst` holds `cols` values.
            unsafe { x86::dequantize_row(cols, row, dst) };
            continue;
        }
        let (values, rest) = row.split_at(nb * 32);
        for (b, block) in dst.chunks_exact_mut(32).enumerate() {
            let d = f16_to_f32(u16::from_le_bytes([rest[2 * b], rest[2 * b + 1]]));
            let pair = &values[64 * (b / 2)..64 * (b / 2 + 1)];
            for (j, o) in block.iter_mut().enumerate() {
                *o = d * f32::from(pair[lane(b % 2, j)] as i8);
            }
        }
    }
}

/// A vector quantized for the kernels: 16-bit values (each 64 in the lane order of
/// [`split`]), and per block of 32 the scale and the sum of the decoded values.
#[derive(Debug, Clone, Default)]
pub struct Quantized {
    q: Vec<i16>,
    d: Vec<f32>,
    s: Vec<f32>,
    /// The same values split in bytes for the 4-bit kernels ([`nibble`]).
    bytes: nibble::Bytes,
}

impl Quantized {
    /// `x` (a multiple of 32 values) quantized per block: scale `max |x| / 32767`, values
    /// rounded to the nearest step.
    pub fn new(x: &[f32]) -> Self {
        assert!(x.len().is_multiple_of(32), "{} values are not blocks of 32", x.len());
        let nb = x.len() / 32;
        let mut out = Self { q: vec![0; x.len()], d: vec![0.0; nb], s: vec![0.0; nb], ..Self::default() };
        #[cfg(target_arch = "x86_64")]
        if cpu() {
            for (b, block) in x.chunks_exact(32).enumerate() {
                // SAFETY: `cpu` detected avx512f and avx512bw; the block has 32 values
                // and its output 32 slots.
                let (d, sum) = unsafe { x86::quantize_block(block, &mut out.q[32 * b..32 * b + 32]) };
                out.d[b] = d;
                out.s[b] = d * sum as f32;
            }
            return out.into_lane_order();
        }
        for (b, block) in x.chunks_exact(32).enumerate() {
            let amax = block.iter().fold(0f32, |m, v| m.max(v.abs()));
            let d = amax / 32767.0;
            let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
            let mut sum = 0i32;
            for (o, &v) in out.q[32 * b..32 * b + 32].iter_mut().zip(block) {
                let q = (v * inv).round_ties_even().clamp(-32767.0, 32767.0) as i16;
                sum += i32::from(q);
                *o = q;
            }
            out.d[b] = d;
            out.s[b] = d * sum as f32;
        }
        out.into_lane_order()
    }

    /// Swaps the middle 16 values of every 64 (natural order to lane order and back).
    fn swap_quarters(q: &mut [i16]) {
        for chunk in q.chunks_exact_mut(64) {
            let (first, second) = chunk.split_at_mut(32);
            first[16..].swap_with_slice(&mut second[..16]);
        }
    }

    fn into_lane_order(mut self) -> Self {
        self.bytes = nibble::Bytes::new(&self.q, &self.d, &self.s);
        Self::swap_quarters(&mut self.q);
        self
    }

    /// The scale of each block.
    pub(crate) fn d(&self) -> &[f32] {
        &self.d
    }

    /// Each block's scale times the sum of its 16-bit values.
    pub(crate) fn s(&self) -> &[f32] {
        &self.s
    }

    /// The values split in bytes for the 4-bit kernels.
    pub(crate) fn bytes(&self) -> &nibble::Bytes {
        &self.bytes
    }

    /// The 16-bit values in the input's order.
    fn natural(&self) -> Vec<i16> {
        let mut q = self.q.clone();
        Self::swap_quarters(&mut q);
        q
    }

    /// The decoded values (what the kernels multiply by), in the input's order.
    pub fn values(&self) -> Vec<f32> {
        self.natural().iter().enumerate().map(|(i, &q)| self.d[i / 32] * f32::from(q)).collect()
    }
}

/// `rows[r] · x` for four split rows (from [`split`]) of `x`'s length.
///
/// # Panics
/// If [`supported`] is false for `dtype` and the length (callers check it once per
/// matrix), or a row is not one split row.
pub fn dot4(dtype: GgmlType, rows: [&[u8]; 4], x: &Quantized) -> [f32; 4] {
    let cols = x.q.len();
    assert!(supported(dtype, cols), "no integer kernel for {dtype:?} rows of {cols} on this CPU");
    assert!(rows.iter().all(|r| r.len() == dtype.row_bytes(cols)));
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `supported` detected avx512f, avx512bw, avx512vl, avx512vnni and f16c; every row is
    // one split row of `cols` values (a multiple of 64), asserted above.
    unsafe {
        dots(dtype, rows, [x])[0]
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("supported() is false off x86-64")
}

/// [`dot4`] for up to four inputs at once (`out[t]` for `xs[t]`), each block of the rows
/// widened once for all of them: the same values as separate calls, for a decode step of
/// several sequences.
///
/// # Panics
/// As [`dot4`], or if `xs` holds more than four inputs or inputs of different lengths.
pub fn dot4_many(dtype: GgmlType, rows: [&[u8]; 4], xs: &[Quantized], out: &mut [[f32; 4]]) {
    let cols = xs.first().map_or(0, |x| x.q.len());
    assert!(supported(dtype, cols), "no integer kernel for {dtype:?} rows of {cols} on this CPU");
    assert!(rows.iter().all(|r| r.len() == dtype.row_bytes(cols)));
    assert!(xs.iter().all(|x| x.q.len() == cols) && out.len() == xs.len());
    #[cfg(target_arch = "x86_64")]
    // SAFETY: as in `dot4`; every input has `cols` values (asserted above).
    unsafe {
        match xs {
            [a] => out[0] = dots(dtype, rows, [a])[0],
            [a, b] => out.copy_from_slice(&dots(dtype, rows, [a, b])),
            [a, b, c] => out.copy_from_slice(&dots(dtype, rows, [a, b, c])),
            [a, b, c, d] => out.copy_from_slice(&dots(dtype, rows, [a, b, c, d])),
            _ => panic!("dot4_many takes one to four inputs, not {}", xs.len()),
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("supported() is false off x86-64")
}

/// The kernel of `dtype`'s rows for `T` inputs.
///
/// # Safety
/// As [`x86::dots`].
#[cfg(target_arch = "x86_64")]
unsafe fn dots<const T: usize>(dtype: GgmlType, rows: [&[u8]; 4], xs: [&Quantized; T]) -> [[f32; 4]; T] {
    // SAFETY: guaranteed by the caller; both kernels ask the same.
    unsafe { if nibble::handles(dtype) { nibble::x86::dots(dtype, rows, xs) } else { x86::dots(rows, xs) } }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{GgmlType, Quantized};

    /// One block of [`Quantized::new`]: the scale and the sum of the 16-bit values (the
    /// same values as the scalar code: products rounded to the nearest even step).
    ///
    /// # Safety
    /// avx512f and avx512bw; `x` and `q` hold 32 values.
    #[target_feature(enable = "avx512f,avx512bw")]
    pub unsafe fn quantize_block(x: &[f32], q: &mut [i16]) -> (f32, i32) {
        assert!(x.len() == 32 && q.len() == 32);
        // SAFETY: 32 values each side (asserted).
        let (a, b) = unsafe { (_mm512_loadu_ps(x.as_ptr()), _mm512_loadu_ps(x.as_ptr().add(16))) };
        let amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(a), _mm512_abs_ps(b)));
        let d = amax / 32767.0;
        let inv = _mm512_set1_ps(if d > 0.0 { 1.0 / d } else { 0.0 });
        let limit = _mm512_set1_ps(32767.0);
        let round = |v: __m512| {
            let v =
                _mm512_max_ps(_mm512_min_ps(_mm512_mul_ps(v, inv), limit), _mm512_sub_ps(_mm512_setzero_ps(), limit));
            _mm512_cvtps_epi32(v) // the current rounding mode: to nearest, ties to even
        };
        let (qa, qb) = (round(a), round(b));
        // SAFETY: 16 values at each of `q` and `q + 16`.
        unsafe {
            _mm256_storeu_si256(q.as_mut_ptr().cast(), _mm512_cvtepi32_epi16(qa));
            _mm256_storeu_si256(q.as_mut_ptr().add(16).cast(), _mm512_cvtepi32_epi16(qb));
        }
        (d, _mm512_reduce_add_epi32(_mm512_add_epi32(qa, qb)))
    }

    /// [`super::dequantize`] of one split Q8_0 row, a pair of blocks (64 values) at a
    /// time, with the scalar code's operation (`d * q`), so the values are the same bit for
    /// bit.
    ///
    /// # Safety
    /// avx512f and f16c; `row` is one split Q8_0 row of `cols` values, a multiple of 64,
    /// and `dst` holds `cols` values.
    #[target_feature(enable = "avx512f,f16c")]
    pub unsafe fn dequantize_row(cols: usize, row: &[u8], dst: &mut [f32]) {
        let nb = cols / 32;
        assert!(cols.is_multiple_of(64) && dst.len() == cols && row.len() == GgmlType::Q8_0.row_bytes(cols));
        let (values, rest) = row.split_at(nb * 32);
        let half = |at: usize| super::f16_to_f32(u16::from_le_bytes([rest[at], rest[at + 1]]));
        for p in 0..nb / 2 {
            let (d0, d1) = (_mm512_set1_ps(half(4 * p)), _mm512_set1_ps(half(4 * p + 2)));
            // The pair's 64 values in lane order: b0[0..16], b1[0..16], b0[16..32], b1[16..32].
            let at = values[64 * p..64 * p + 64].as_ptr();
            // SAFETY: 16 bytes at each of `at`, `at + 16`, `at + 32`, `at + 48`.
            let q: [__m512; 4] = std::array::from_fn(|k| unsafe {
                _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(at.add(16 * k).cast())))
            });
            let out = dst[64 * p..64 * p + 64].as_mut_ptr();
            // SAFETY: 64 values at `out` (the pair's two blocks).
            unsafe {
                _mm512_storeu_ps(out, _mm512_mul_ps(d0, q[0]));
                _mm512_storeu_ps(out.add(16), _mm512_mul_ps(d0, q[2]));
                _mm512_storeu_ps(out.add(32), _mm512_mul_ps(d1, q[1]));
                _mm512_storeu_ps(out.add(48), _mm512_mul_ps(d1, q[3]));
            }
        }
    }

    /// `rows[r] · xs[t]` for four split Q8_0 rows and `T` inputs of the same length: each
    /// block of the rows is widened once for every input, and each input's sums are formed
    /// in the same order as with one input, so the results are those of `T` separate calls.
    ///
    /// # Safety
    /// avx512f, avx512bw, avx512vl, avx512vnni and f16c; rows are split Q8_0 rows of the
    /// inputs' length, a multiple of 64.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,f16c")]
    pub unsafe fn dots<const T: usize>(rows: [&[u8]; 4], xs: [&Quantized; T]) -> [[f32; 4]; T] {
        let nb = xs[0].q.len() / 32;
        let (values, scales) = (rows.map(<[u8]>::as_ptr), rows.map(|r| r[nb * 32..].as_ptr()));
        let mut acc = [[_mm512_setzero_ps(); 4]; T];
        let zero = _mm512_setzero_si512();
        for c in (0..nb).step_by(16) {
            let blocks = (nb - c).min(16);
            let mask: __mmask16 = if blocks == 16 { 0xffff } else { (1u16 << blocks) - 1 };
            // Per row and input, the product of the weight and input scales of each block
            // of the chunk.
            let mut scale = [[_mm512_setzero_ps(); 4]; T];
            for r in 0..4 {
                // SAFETY (all reads): blocks `c..c + blocks` exist in every input and row;
                // masked loads touch no byte past them.
                let d = _mm512_cvtph_ps(unsafe { _mm256_maskz_loadu_epi16(mask, scales[r].add(2 * c).cast()) });
                for t in 0..T {
                    let dx = unsafe { _mm512_maskz_loadu_ps(mask, xs[t].d.as_ptr().add(c)) };
                    scale[t][r] = _mm512_mul_ps(d, dx);
                }
            }
            // Pair k of the chunk: lanes 0-7 of the products are block 2k, lanes 8-15 block
            // 2k + 1, each with its own scale.
            for k in 0..blocks / 2 {
                let pair = c / 2 + k;
                let mut x0 = [zero; T];
                let mut x1 = [zero; T];
                for t in 0..T {
                    // SAFETY: pair `pair` (64 values) is inside every input.
                    unsafe {
                        x0[t] = _mm512_loadu_si512(xs[t].q.as_ptr().add(64 * pair).cast());
                        x1[t] = _mm512_loadu_si512(xs[t].q.as_ptr().add(64 * pair + 32).cast());
                    }
                }
                let at = _mm512_mask_blend_epi32(
                    0xff00,
                    _mm512_set1_epi32(2 * k as i32),
                    _mm512_set1_epi32(2 * k as i32 + 1),
                );
                for r in 0..4 {
                    // SAFETY: pair `pair` of row `r` is inside the row.
                    let (w0, w1) = unsafe {
                        (
                            _mm512_cvtepi8_epi16(_mm256_loadu_si256(values[r].add(64 * pair).cast())),
                            _mm512_cvtepi8_epi16(_mm256_loadu_si256(values[r].add(64 * pair + 32).cast())),
                        )
                    };
                    for t in 0..T {
                        let dot = _mm512_dpwssd_epi32(_mm512_dpwssd_epi32(zero, w0, x0[t]), w1, x1[t]);
                        acc[t][r] =
                            _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_permutexvar_ps(at, scale[t][r]), acc[t][r]);
                    }
                }
            }
        }
        let mut out = [[0f32; 4]; T];
        for t in 0..T {
            for r in 0..4 {
                out[t][r] = _mm512_reduce_add_ps(acc[t][r]);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use sieve_backend::quant::{dequantize as decode, quantize};

    use super::*;

    const FORMATS: [GgmlType; 3] = [GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q8_0];

    /// Several inputs in one pass give, bit for bit, what each gives alone.
    #[test]
    fn several_inputs_at_once_equal_each_alone() {
        for dtype in FORMATS {
            let cols = 576;
            if !supported(dtype, cols) {
                eprintln!("skipped {dtype:?}: no integer kernel on this CPU");
                return;
            }
            let split = split(dtype, cols, &rows(dtype, 4, cols));
            let rb = dtype.row_bytes(cols);
            let row = |r: usize| &split[r * rb..(r + 1) * rb];
            let xs: Vec<Quantized> = (0..4)
                .map(|t| {
                    Quantized::new(&(0..cols).map(|i| ((i * (29 + t) % 17) as f32 - 8.0) / 9.0).collect::<Vec<_>>())
                })
                .collect();
            for n in 1..=4 {
                let mut out = vec![[0f32; 4]; n];
                dot4_many(dtype, [row(0), row(1), row(2), row(3)], &xs[..n], &mut out);
                for (t, got) in out.iter().enumerate() {
                    let alone = dot4(dtype, [row(0), row(1), row(2), row(3)], &xs[t]);
                    assert_eq!(got.map(f32::to_bits), alone.map(f32::to_bits), "{dtype:?}, {n} inputs, input {t}");
                }
            }
        }
    }

    fn rows(dtype: GgmlType, n: usize, cols: usize) -> Vec<u8> {
        let values: Vec<f32> = (0..n * cols).map(|i| ((i * 7 + i / cols * 31) % 23) as f32 / 5.0 - 2.1).collect();
        quantize(dtype, &values).unwrap()
    }

    #[test]
    fn the_split_layout_decodes_to_the_same_values() {
        for (dtype, cols) in FORMATS.into_iter().flat_map(|d| [(d, 128), (d, 576), (d, 1536)]) {
            let n = 3;
            let gguf = rows(dtype, n, cols);
            let split = split(dtype, cols, &gguf);
            assert_eq!(split.len(), gguf.len());
            let (mut want, mut got) = (vec![0f32; n * cols], vec![0f32; n * cols]);
            decode(dtype, &gguf, &mut want);
            dequantize(dtype, cols, &split, &mut got);
            assert_eq!(got, want, "{dtype:?}");
        }
    }

    #[test]
    fn vector_and_scalar_quantization_agree() {
        let x: Vec<f32> =
            (0..96).map(|i| ((i * 37 % 29) as f32 - 14.0) / 3.0 + if i == 40 { 100.0 } else { 0.0 }).collect();
        let fast = Quantized::new(&x);
        let mut scalar = Quantized { q: vec![0; 96], d: vec![0.0; 3], s: vec![0.0; 3], ..Quantized::default() };
        for (b, block) in x.chunks_exact(32).enumerate() {
            let d = block.iter().fold(0f32, |m, v| m.max(v.abs())) / 32767.0;
            let mut sum = 0;
            for (o, &v) in scalar.q[32 * b..32 * b + 32].iter_mut().zip(block) {
                *o = (v / d).round_ties_even() as i16;
                sum += i32::from(*o);
            }
            (scalar.d[b], scalar.s[b]) = (d, d * sum as f32);
        }
        assert_eq!(fast.d, scalar.d);
        assert_eq!(fast.s, scalar.s);
        let fast_q = fast.natural();
        let off: Vec<usize> = (0..96).filter(|&i| (fast_q[i] - scalar.q[i]).abs() > 1).collect();
        assert!(off.is_empty(), "values {off:?} differ by more than one step");
    }

    #[test]
    fn quantized_inputs_are_within_half_a_step() {
        let x: Vec<f32> = (0..64).map(|i| ((i * 37 % 29) as f32 - 14.0) / 3.0).collect();
        let q = Quantized::new(&x);
        for (i, (a, b)) in q.values().iter().zip(&x).enumerate() {
            let step = q.d[i / 32];
            assert!((a - b).abs() <= 0.51 * step, "value {i}: {a} vs {b}");
        }
        assert_eq!(Quantized::new(&[0.0; 32]).values(), vec![0.0; 32]);
    }

    /// The kernels compute the decoded weights times the decoded input, and stay within
    /// the quantization error of the `f32` product; every chunk length (16 blocks and the
    /// tails) is covered.
    #[test]
    fn integer_dots_are_the_decoded_product() {
        for dtype in FORMATS {
            for cols in [64, 576, 960, 1536] {
                if !supported(dtype, cols) {
                    eprintln!("skipped {dtype:?}: no integer kernel on this CPU");
                    return;
                }
                let gguf = rows(dtype, 4, cols);
                let split = split(dtype, cols, &gguf);
                let x: Vec<f32> = (0..cols).map(|i| ((i * 29 % 13) as f32 - 6.0) / 7.0).collect();
                let q = Quantized::new(&x);
                let rb = dtype.row_bytes(cols);
                let row = |r: usize| &split[r * rb..(r + 1) * rb];
                let got = dot4(dtype, [row(0), row(1), row(2), row(3)], &q);
                let mut w = vec![0f32; 4 * cols];
                decode(dtype, &gguf, &mut w);
                let xq = q.values();
                for r in 0..4 {
                    let w = &w[r * cols..(r + 1) * cols];
                    let exact: f64 = w.iter().zip(&xq).map(|(&a, &b)| f64::from(a) * f64::from(b)).sum();
                    let mass: f64 = w.iter().zip(&xq).map(|(&a, &b)| f64::from((a * b).abs())).sum();
                    let err = (f64::from(got[r]) - exact).abs();
                    assert!(err <= 1e-5 * mass.max(1.0), "{dtype:?} {cols} row {r}: {} vs {exact}", got[r]);
                    let truth: f64 = w.iter().zip(&x).map(|(&a, &b)| f64::from(a) * f64::from(b)).sum();
                    let bound: f64 = w.iter().enumerate().map(|(i, &a)| f64::from(a.abs() * q.d[i / 32]) * 0.51).sum();
                    assert!(
                        (exact - truth).abs() <= bound + 1e-6,
                        "{dtype:?} {cols} row {r}: input error over the bound"
                    );
                }
            }
        }
    }
}
