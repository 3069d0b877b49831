//! The exponential of many `f32` values at once, the inner loop of softmax.
//!
//! `e^x = 2^n · e^r` with `n = round(x / ln 2)` and `r = x - n ln 2` in `[-ln 2 / 2, ln 2 / 2]`,
//! where a degree-6 Taylor polynomial is good to about 2e-7 relative; `2^n` goes straight
//! into the exponent bits. Inputs are clamped to `[-87, 88]` (the result is then 0 to
//! `f32` precision at the low end, and softmax inputs never exceed 0).

use super::simd::{Isa, isa};

const LOG2E: f32 = std::f32::consts::LOG2_E;
const LN2_HI: f32 = 0.693_145_75;
const LN2_LO: f32 = 1.428_606_8e-6;
const LO: f32 = -87.0;
const HI: f32 = 88.0;
/// `1/k!` for k = 2..=6.
const C: [f32; 5] = [1.0 / 2.0, 1.0 / 6.0, 1.0 / 24.0, 1.0 / 120.0, 1.0 / 720.0];

/// `e^x` of one value, the same formula as the vector paths.
#[inline]
pub fn exp1(x: f32) -> f32 {
    let x = x.clamp(LO, HI);
    let n = (x * LOG2E).round();
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.0 + r * (1.0 + r * (C[0] + r * (C[1] + r * (C[2] + r * (C[3] + r * C[4])))));
    f32::from_bits(p.to_bits().wrapping_add(((n as i32) << 23) as u32))
}

/// `x[i] = e^(x[i] - shift)` for every value; returns their sum.
pub fn exp_shifted_sum(x: &mut [f32], shift: f32) -> f32 {
    match isa() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: avx512f was detected on this CPU.
        Isa::Avx512 => unsafe { x86::exp_avx512(x, shift) },
        _ => {
            let mut sum = 0.0;
            for v in x.iter_mut() {
                *v = exp1(*v - shift);
                sum += *v;
            }
            sum
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{C, HI, LN2_HI, LN2_LO, LO, LOG2E};

    /// # Safety
    /// The CPU has avx512f.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn exp_avx512(x: &mut [f32], shift: f32) -> f32 {
        let n = x.len();
        let p = x.as_mut_ptr();
        let (s, lo, hi) = (_mm512_set1_ps(shift), _mm512_set1_ps(LO), _mm512_set1_ps(HI));
        let (log2e, ln2_hi, ln2_lo) = (_mm512_set1_ps(LOG2E), _mm512_set1_ps(LN2_HI), _mm512_set1_ps(LN2_LO));
        let c = C.map(|c| _mm512_set1_ps(c));
        let one = _mm512_set1_ps(1.0);
        let mut acc = _mm512_setzero_ps();
        let mut i = 0;
        while i < n {
            let left = n - i;
            let mask: __mmask16 = if left >= 16 { 0xffff } else { ((1u32 << left) - 1) as u16 };
            // SAFETY: the mask covers only indices below `n`.
            let v = unsafe { _mm512_maskz_loadu_ps(mask, p.add(i)) };
            let v = _mm512_min_ps(_mm512_max_ps(_mm512_sub_ps(v, s), lo), hi);
            let k = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm512_mul_ps(v, log2e));
            let r = _mm512_fnmadd_ps(k, ln2_lo, _mm512_fnmadd_ps(k, ln2_hi, v));
            let mut poly = _mm512_fmadd_ps(r, c[4], c[3]);
            poly = _mm512_fmadd_ps(r, poly, c[2]);
            poly = _mm512_fmadd_ps(r, poly, c[1]);
            poly = _mm512_fmadd_ps(r, poly, c[0]);
            poly = _mm512_fmadd_ps(r, poly, one);
            poly = _mm512_fmadd_ps(r, poly, one);
            let bits = _mm512_add_epi32(_mm512_castps_si512(poly), _mm512_slli_epi32::<23>(_mm512_cvtps_epi32(k)));
            let e = _mm512_castsi512_ps(bits);
            // SAFETY: as for the load.
            unsafe { _mm512_mask_storeu_ps(p.add(i), mask, e) };
            acc = _mm512_mask_add_ps(acc, mask, acc, e);
            i += 16;
        }
        _mm512_reduce_add_ps(acc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_standard_exponential() {
        let mut xs: Vec<f32> = (0..=2000).map(|i| -80.0 + i as f32 * 0.0437).collect();
        xs.extend([0.0, -0.0, 1e-8, -1e-8, -86.9, 87.9]);
        let mut got = xs.clone();
        let sum = exp_shifted_sum(&mut got, 1.5);
        let mut want_sum = 0f64;
        for (x, g) in xs.iter().zip(&got) {
            // The shift is applied in f32, as the kernel does.
            let want = f64::from(x - 1.5).exp();
            want_sum += want;
            assert!((f64::from(*g) - want).abs() <= 4e-7 * want + 1e-37, "exp({x} - 1.5): {g} vs {want}");
            assert!((f64::from(exp1(x - 1.5)) - want).abs() <= 4e-7 * want + 1e-37);
        }
        assert!((f64::from(sum) - want_sum).abs() <= 1e-5 * want_sum);
    }
}
