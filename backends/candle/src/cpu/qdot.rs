//! Dot products of packed rows with an `f32` vector, the blocks decoded in registers:
//! Q4_0, Q4_1 and Q8_0 (the formats of the default model and of most small GGUF files),
//! f16 and bf16, four rows per pass, with AVX-512 (and F16C for the scales). The values are
//! exactly those [`sieve_backend::quant::dequantize`] gives, so a packed matrix computes the
//! same product as its `f32` decoding (up to the order of the additions).
//!
//! Other formats, or a CPU without AVX-512, decode rows into a buffer first
//! ([`super::weights::Matrix::rows_f32`]).

use sieve_backend::quant::GgmlType;

use super::simd::{Isa, isa};

/// Whether [`dot4`] has a kernel for `dtype` on this CPU.
pub fn supported(dtype: GgmlType) -> bool {
    isa() == Isa::Avx512
        && std::is_x86_feature_detected!("f16c")
        && matches!(dtype, GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q8_0 | GgmlType::F16 | GgmlType::BF16)
}

/// Sums of `x` over each block of 32 values (what Q4_0 and Q4_1 need besides the dots).
pub fn block_sums(x: &[f32]) -> Vec<f32> {
    x.chunks(32).map(|b| b.iter().sum()).collect()
}

/// `rows[r] · x` for four packed rows of `x.len()` values; `sums` from [`block_sums`].
///
/// # Panics
/// If [`supported`] is false for `dtype` (callers check it once per matrix).
pub fn dot4(dtype: GgmlType, rows: [&[u8]; 4], x: &[f32], sums: &[f32]) -> [f32; 4] {
    assert!(supported(dtype), "no packed kernel for {dtype:?} on this CPU");
    assert!(rows.iter().all(|r| r.len() == dtype.row_bytes(x.len())) && x.len().is_multiple_of(32));
    // SAFETY: `supported` checked avx512f and f16c; every row holds the blocks of
    // `x.len()` values (asserted above), which is a multiple of 32.
    unsafe {
        match dtype {
            GgmlType::Q4_0 => x86::q4(rows, x, sums, false),
            GgmlType::Q4_1 => x86::q4(rows, x, sums, true),
            GgmlType::Q8_0 => x86::q8_0(rows, x),
            GgmlType::F16 => x86::half(rows, x, false),
            _ => x86::half(rows, x, true),
        }
    }
}

mod x86 {
    use std::arch::x86_64::*;

    /// Scale (and minimum) of the block at `p`: `[d, m, _, _]` for Q4_1, `[d, _, _, _]`
    /// otherwise.
    #[inline]
    #[target_feature(enable = "avx512f,f16c")]
    unsafe fn scales(p: *const u8) -> __m128 {
        // SAFETY: every block starts with at least two f16 values (a Q8_0/Q4_0 block's
        // second pair of bytes is data, read and ignored).
        _mm_cvtph_ps(_mm_cvtsi32_si128(unsafe { p.cast::<i32>().read_unaligned() }))
    }

    /// Q4_0 (value `d (q - 8)`) or Q4_1 (value `d q + m`) rows.
    ///
    /// # Safety
    /// avx512f and f16c; rows hold `x.len() / 32` blocks.
    #[target_feature(enable = "avx512f,f16c")]
    pub unsafe fn q4(rows: [&[u8]; 4], x: &[f32], sums: &[f32], with_min: bool) -> [f32; 4] {
        let size = if with_min { 20 } else { 18 };
        let qs_at = if with_min { 4 } else { 2 };
        let (xp, rp) = (x.as_ptr(), rows.map(<[u8]>::as_ptr));
        let mut acc = [_mm512_setzero_ps(); 4];
        let mut extra = [0f32; 4];
        let mask = _mm512_set1_epi32(0xf);
        for (b, &sum) in sums.iter().enumerate() {
            // SAFETY (all reads): block `b` of 32 values is inside `x`, and block `b` of
            // every row is inside that row (`size` bytes, the caller's guarantee).
            let (x0, x1) = unsafe { (_mm512_loadu_ps(xp.add(b * 32)), _mm512_loadu_ps(xp.add(b * 32 + 16))) };
            for r in 0..4 {
                let block = unsafe { rp[r].add(b * size) };
                let dm = unsafe { scales(block) };
                let d = _mm512_broadcastss_ps(dm);
                extra[r] +=
                    if with_min { _mm_cvtss_f32(_mm_movehdup_ps(dm)) * sum } else { -8.0 * _mm_cvtss_f32(dm) * sum };
                let wide = _mm512_cvtepu8_epi32(unsafe { _mm_loadu_si128(block.add(qs_at).cast()) });
                let lo = _mm512_cvtepi32_ps(_mm512_and_si512(wide, mask));
                let hi = _mm512_cvtepi32_ps(_mm512_srli_epi32::<4>(wide));
                acc[r] = _mm512_fmadd_ps(d, _mm512_fmadd_ps(hi, x1, _mm512_mul_ps(lo, x0)), acc[r]);
            }
        }
        let mut out = [0f32; 4];
        for r in 0..4 {
            out[r] = _mm512_reduce_add_ps(acc[r]) + extra[r];
        }
        out
    }

    /// Q8_0 rows (value `d q`).
    ///
    /// # Safety
    /// avx512f and f16c; rows hold `x.len() / 32` blocks.
    #[target_feature(enable = "avx512f,f16c")]
    pub unsafe fn q8_0(rows: [&[u8]; 4], x: &[f32]) -> [f32; 4] {
        let (xp, rp) = (x.as_ptr(), rows.map(<[u8]>::as_ptr));
        let mut acc = [_mm512_setzero_ps(); 4];
        for b in 0..x.len() / 32 {
            // SAFETY (all reads): block `b` of 32 values is inside `x`, and block `b` of
            // every row (34 bytes) is inside that row.
            let (x0, x1) = unsafe { (_mm512_loadu_ps(xp.add(b * 32)), _mm512_loadu_ps(xp.add(b * 32 + 16))) };
            for r in 0..4 {
                let block = unsafe { rp[r].add(b * 34) };
                let d = _mm512_broadcastss_ps(unsafe { scales(block) });
                let (q0, q1) = unsafe { (_mm_loadu_si128(block.add(2).cast()), _mm_loadu_si128(block.add(18).cast())) };
                let lo = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q0));
                let hi = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q1));
                acc[r] = _mm512_fmadd_ps(d, _mm512_fmadd_ps(hi, x1, _mm512_mul_ps(lo, x0)), acc[r]);
            }
        }
        acc.map(|a| _mm512_reduce_add_ps(a))
    }

    /// f16 or bf16 rows.
    ///
    /// # Safety
    /// avx512f and f16c; rows hold `x.len()` 16-bit values.
    #[target_feature(enable = "avx512f,f16c")]
    pub unsafe fn half(rows: [&[u8]; 4], x: &[f32], brain: bool) -> [f32; 4] {
        let mut acc = [_mm512_setzero_ps(); 4];
        for i in (0..x.len()).step_by(16) {
            // SAFETY: `i + 16 <= x.len()` (a multiple of 32), and each row holds
            // `2 * x.len()` bytes.
            let xv = unsafe { _mm512_loadu_ps(x.as_ptr().add(i)) };
            for r in 0..4 {
                let h = unsafe { _mm256_loadu_si256(rows[r].as_ptr().add(2 * i).cast()) };
                let w = if brain {
                    _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h)))
                } else {
                    _mm512_cvtph_ps(h)
                };
                acc[r] = _mm512_fmadd_ps(w, xv, acc[r]);
            }
        }
        acc.map(|a| _mm512_reduce_add_ps(a))
    }
}

#[cfg(test)]
mod tests {
    use sieve_backend::quant::{dequantize, quantize};

    use super::*;

    #[test]
    fn packed_dots_match_the_decoded_rows() {
        let cols = 96;
        let x: Vec<f32> = (0..cols).map(|i| ((i * 29 % 13) as f32 - 6.0) / 7.0).collect();
        for dtype in [GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q8_0, GgmlType::F16, GgmlType::BF16] {
            if !supported(dtype) {
                eprintln!("skipped {dtype:?}: no kernel on this CPU");
                continue;
            }
            let rows: Vec<Vec<u8>> = (0..4)
                .map(|r| {
                    quantize(dtype, &(0..cols).map(|i| ((i * 7 + r * 31) % 23) as f32 / 5.0 - 2.0).collect::<Vec<_>>())
                        .unwrap()
                })
                .collect();
            let got = dot4(dtype, [&rows[0], &rows[1], &rows[2], &rows[3]], &x, &block_sums(&x));
            for r in 0..4 {
                let mut w = vec![0f32; cols];
                dequantize(dtype, &rows[r], &mut w);
                let want: f32 = w.iter().zip(&x).map(|(a, b)| a * b).sum();
                assert!((got[r] - want).abs() < 1e-3 * want.abs().max(1.0), "{dtype:?} row {r}: {} vs {want}", got[r]);
            }
        }
    }
}
