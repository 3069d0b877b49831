//! Integer dot products for Q4_0, Q4_1 and Q8_0 rows: the input vector is quantized to
//! 16 bits per block of 32 values (one `f32` scale per block), each block's products are
//! summed as integers by AVX-512 VNNI (or, without it, AVX-512BW) and then scaled in `f32` ([`super::intdot`] holds the
//! kernels and their layout). That is far fewer instructions per weight than decoding the
//! blocks to `f32` ([`super::qdot`]).
//!
//! The result is exactly the product of the decoded weights with the decoded 16-bit input
//! (up to the order of the `f32` additions); against the `f32` input, each value moves by
//! at most half a step, `amax / 65534` of its block. Eight bits (llama.cpp's Q8_1
//! activations) would halve the work again, but measurably change the default model's
//! answers (it no longer names Paris as France's capital); sixteen bits do not.

use sieve_backend::quant::GgmlType;

use super::intdot::{self, PANEL};
use super::simd::{Isa, isa};

/// Whether a matrix of `rows` rows of `cols` values of `dtype` has an integer kernel on
/// this CPU (rows in whole panels of [`PANEL`]).
pub fn supported(dtype: GgmlType, rows: usize, cols: usize) -> bool {
    cpu()
        && rows.is_multiple_of(PANEL)
        && cols.is_multiple_of(32)
        && matches!(dtype, GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q8_0)
}

/// Whether this CPU has the instructions of the integer kernels (AVX-512 F, BW and VL, and
/// F16C), detected once (set `SIEVE_NO_INTDOT` to use the `f32` kernels instead).
pub(crate) fn cpu() -> bool {
    use std::sync::OnceLock;
    static CPU: OnceLock<bool> = OnceLock::new();
    *CPU.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            isa() == Isa::Avx512
                && std::env::var_os("SIEVE_NO_INTDOT").is_none()
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512vl")
                && is_x86_feature_detected!("f16c")
        }
        #[cfg(not(target_arch = "x86_64"))]
        false
    })
}

/// Whether the integer kernels use VNNI's byte products (else AVX-512BW's 16-bit ones, the
/// same bits with about twice the instructions), detected once (set `SIEVE_NO_VNNI` to use
/// the 16-bit ones on a CPU that has VNNI).
pub(crate) fn vnni() -> bool {
    use std::sync::OnceLock;
    static VNNI: OnceLock<bool> = OnceLock::new();
    *VNNI.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            cpu() && std::env::var_os("SIEVE_NO_VNNI").is_none() && is_x86_feature_detected!("avx512vnni")
        }
        #[cfg(not(target_arch = "x86_64"))]
        false
    })
}

/// Rows of GGUF blocks (`bytes`, rows of `cols` values) in the kernels' layout
/// ([`intdot::split_panel`]), the same bytes in all.
///
/// # Panics
/// If [`supported`] would refuse the matrix on any CPU (rows not whole panels, another
/// format), or `bytes` is not whole rows.
pub fn split(dtype: GgmlType, cols: usize, bytes: &[u8]) -> Vec<u8> {
    assert!(cols.is_multiple_of(32) && matches!(dtype, GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q8_0));
    let pb = PANEL * dtype.row_bytes(cols);
    assert!(bytes.len().is_multiple_of(pb), "{} bytes are not panels of {pb}", bytes.len());
    let mut out = vec![0u8; bytes.len()];
    for (panel, dst) in bytes.chunks_exact(pb).zip(out.chunks_exact_mut(pb)) {
        intdot::split_panel(dtype, cols / 32, panel, dst);
    }
    out
}

/// Decodes rows `start..start + out.len() / cols` of a matrix in the kernels' layout (from
/// [`split`]) to `f32`, as [`sieve_backend::quant::dequantize`] decodes the GGUF rows they
/// came from.
pub fn dequantize(dtype: GgmlType, cols: usize, bytes: &[u8], start: usize, out: &mut [f32]) {
    let pb = PANEL * dtype.row_bytes(cols);
    assert!(out.len().is_multiple_of(cols), "dequantize: {} values are not rows of {cols}", out.len());
    for (r, dst) in (start..).zip(out.chunks_exact_mut(cols)) {
        let panel = &bytes[r / PANEL * pb..(r / PANEL + 1) * pb];
        intdot::dequantize_row(dtype, cols / 32, panel, r % PANEL, dst);
    }
}

/// A vector quantized for the kernels: 16-bit values, per block of 32 the scale and the
/// scaled sum of the values, and the values split in bytes for the kernels.
#[derive(Debug, Clone, Default)]
pub struct Quantized {
    q: Vec<i16>,
    d: Vec<f32>,
    s: Vec<f32>,
    bytes: intdot::Bytes,
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
            // The bytes for the kernels in the same pass (see `intdot::Bytes::new`).
            let (mut hi, mut lo, mut excess) = (vec![0i8; x.len()], vec![0u8; x.len()], Vec::with_capacity(nb));
            for (b, block) in x.chunks_exact(32).enumerate() {
                let at = 32 * b..32 * b + 32;
                // SAFETY: `cpu` detected avx512f and avx512bw; the block has 32 values
                // and each of its outputs 32 slots.
                let (d, sum, h) =
                    unsafe { x86::quantize_block(block, &mut out.q[at.clone()], &mut hi[at.clone()], &mut lo[at]) };
                out.d[b] = d;
                out.s[b] = d * sum as f32;
                excess.push(128 * h);
            }
            out.bytes = intdot::Bytes::from_parts(hi, lo, excess);
            return out;
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
        out.with_bytes()
    }

    fn with_bytes(mut self) -> Self {
        self.bytes = intdot::Bytes::new(&self.q);
        self
    }

    /// The 16-bit values.
    pub(crate) fn q(&self) -> &[i16] {
        &self.q
    }

    /// The scale of each block.
    pub(crate) fn d(&self) -> &[f32] {
        &self.d
    }

    /// Each block's scale times the sum of its 16-bit values.
    pub(crate) fn s(&self) -> &[f32] {
        &self.s
    }

    /// The values split in bytes for the kernels.
    pub(crate) fn bytes(&self) -> &intdot::Bytes {
        &self.bytes
    }

    /// The decoded values (what the kernels multiply by), in the input's order.
    pub fn values(&self) -> Vec<f32> {
        self.q.iter().enumerate().map(|(i, &q)| self.d[i / 32] * f32::from(q)).collect()
    }
}

/// A panel's rows (one panel from [`split`]) times `x`: value `i` is row `i` · `x`.
///
/// # Panics
/// If [`supported`] is false for `dtype` on this CPU (callers check it once per matrix), or
/// `panel` is not one panel of `x`'s length.
pub fn panel_dot(dtype: GgmlType, panel: &[u8], x: &Quantized) -> [f32; PANEL] {
    let mut out = [[0f32; PANEL]];
    panel_dots(dtype, panel, None, std::slice::from_ref(x), &mut out);
    out[0]
}

/// [`panel_dot`] for up to four inputs at once (`out[t]` for `xs[t]`), the weights'
/// registers made once for all of them: the same values as separate calls, for a decode
/// step of several sequences. `fetch`, a panel to be multiplied later, is requested from
/// memory along the way (its values are not used).
///
/// # Panics
/// As [`panel_dot`], or if `xs` holds more than four inputs or inputs of different lengths,
/// or `fetch` is not a panel of the same length.
pub fn panel_dots(dtype: GgmlType, panel: &[u8], fetch: Option<&[u8]>, xs: &[Quantized], out: &mut [[f32; PANEL]]) {
    let cols = xs.first().map_or(0, |x| x.q.len());
    assert!(supported(dtype, PANEL, cols), "no integer kernel for {dtype:?} rows of {cols} on this CPU");
    assert!(panel.len() == PANEL * dtype.row_bytes(cols), "not one panel of {cols} columns");
    assert!(fetch.is_none_or(|f| f.len() == panel.len()), "the panel to fetch is not one panel");
    assert!(xs.iter().all(|x| x.q.len() == cols) && out.len() == xs.len());
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `supported` detected avx512f, avx512bw, avx512vl and f16c, and `vnni`
    // avx512vnni; the panel holds 16 rows of `cols` values and every input has `cols`
    // values, asserted above.
    unsafe {
        use intdot::x86::panel_dots as dots;
        let v = vnni();
        match xs {
            [a] => out[0] = dots(dtype, panel, fetch, [a], v)[0],
            [a, b] => out.copy_from_slice(&dots(dtype, panel, fetch, [a, b], v)),
            [a, b, c] => out.copy_from_slice(&dots(dtype, panel, fetch, [a, b, c], v)),
            [a, b, c, d] => out.copy_from_slice(&dots(dtype, panel, fetch, [a, b, c, d], v)),
            _ => panic!("panel_dots takes one to four inputs, not {}", xs.len()),
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("supported() is false off x86-64")
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// One block of [`Quantized::new`]: the 16-bit values into `q` and their high and
    /// low bytes into `hi` and `lo`; returns the scale, the sum of the values and the sum
    /// of their high bytes (the same values as the scalar code: products rounded to the
    /// nearest even step).
    ///
    /// # Safety
    /// avx512f and avx512bw; `x`, `q`, `hi` and `lo` hold 32 values.
    #[target_feature(enable = "avx512f,avx512bw")]
    pub unsafe fn quantize_block(x: &[f32], q: &mut [i16], hi: &mut [i8], lo: &mut [u8]) -> (f32, i32, i32) {
        assert!(x.len() == 32 && q.len() == 32 && hi.len() == 32 && lo.len() == 32);
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
        let (ha, hb) = (_mm512_srai_epi32::<8>(qa), _mm512_srai_epi32::<8>(qb));
        let byte = _mm512_set1_epi32(0xff);
        // SAFETY: 16 values at each of `q`, `hi` and `lo` and 16 past each.
        unsafe {
            _mm256_storeu_si256(q.as_mut_ptr().cast(), _mm512_cvtepi32_epi16(qa));
            _mm256_storeu_si256(q.as_mut_ptr().add(16).cast(), _mm512_cvtepi32_epi16(qb));
            _mm_storeu_si128(hi.as_mut_ptr().cast(), _mm512_cvtepi32_epi8(ha));
            _mm_storeu_si128(hi.as_mut_ptr().add(16).cast(), _mm512_cvtepi32_epi8(hb));
            _mm_storeu_si128(lo.as_mut_ptr().cast(), _mm512_cvtepi32_epi8(_mm512_and_si512(qa, byte)));
            _mm_storeu_si128(lo.as_mut_ptr().add(16).cast(), _mm512_cvtepi32_epi8(_mm512_and_si512(qb, byte)));
        }
        (d, _mm512_reduce_add_epi32(_mm512_add_epi32(qa, qb)), _mm512_reduce_add_epi32(_mm512_add_epi32(ha, hb)))
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
            if !supported(dtype, PANEL, cols) {
                eprintln!("skipped {dtype:?}: no integer kernel on this CPU");
                return;
            }
            let panel = split(dtype, cols, &rows(dtype, PANEL, cols));
            let xs: Vec<Quantized> = (0..4)
                .map(|t| {
                    Quantized::new(&(0..cols).map(|i| ((i * (29 + t) % 17) as f32 - 8.0) / 9.0).collect::<Vec<_>>())
                })
                .collect();
            for n in 1..=4 {
                let mut out = vec![[0f32; PANEL]; n];
                panel_dots(dtype, &panel, None, &xs[..n], &mut out);
                for (t, got) in out.iter().enumerate() {
                    let alone = panel_dot(dtype, &panel, &xs[t]);
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
        for (dtype, cols) in FORMATS.into_iter().flat_map(|d| [(d, 32), (d, 576), (d, 1536)]) {
            let n = 3 * PANEL;
            let gguf = rows(dtype, n, cols);
            let split = split(dtype, cols, &gguf);
            assert_eq!(split.len(), gguf.len());
            let mut want = vec![0f32; n * cols];
            decode(dtype, &gguf, &mut want);
            // Every row alone, and a run of rows across panels from the middle of one.
            for r in 0..n {
                let mut got = vec![0f32; cols];
                dequantize(dtype, cols, &split, r, &mut got);
                assert_eq!(got, want[r * cols..(r + 1) * cols], "{dtype:?} {cols} row {r}");
            }
            let mut got = vec![0f32; 20 * cols];
            dequantize(dtype, cols, &split, 7, &mut got);
            assert_eq!(got, want[7 * cols..27 * cols], "{dtype:?} {cols} rows 7..27");
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
        assert_eq!(fast.bytes, intdot::Bytes::new(&fast.q), "the bytes made in the same pass");
        assert_eq!(fast.d, scalar.d);
        assert_eq!(fast.s, scalar.s);
        let fast_q = fast.q.clone();
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
    /// the quantization error of the `f32` product, for every row of a panel.
    #[test]
    fn integer_dots_are_the_decoded_product() {
        for dtype in FORMATS {
            for cols in [32, 64, 576, 960, 1536] {
                if !supported(dtype, PANEL, cols) {
                    eprintln!("skipped {dtype:?}: no integer kernel on this CPU");
                    return;
                }
                let gguf = rows(dtype, PANEL, cols);
                let panel = split(dtype, cols, &gguf);
                let x: Vec<f32> = (0..cols).map(|i| ((i * 29 % 13) as f32 - 6.0) / 7.0).collect();
                let q = Quantized::new(&x);
                let got = panel_dot(dtype, &panel, &q);
                let mut w = vec![0f32; PANEL * cols];
                decode(dtype, &gguf, &mut w);
                let xq = q.values();
                for r in 0..PANEL {
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

    /// The 16-bit products (for CPUs without VNNI) are the decoded product on every CPU
    /// with AVX-512BW, and give the VNNI kernel's bits where that runs too, for every
    /// format, the 8-bit extreme -128 and inputs at full scale included.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn both_integer_kernels_give_the_same_bits() {
        if !cpu() {
            eprintln!("skipped: no integer kernel on this CPU");
            return;
        }
        let vnni = is_x86_feature_detected!("avx512vnni");
        for (dtype, cols) in FORMATS.into_iter().flat_map(|d| [(d, 32), (d, 576), (d, 1536)]) {
            let mut gguf = rows(dtype, PANEL, cols);
            if dtype == GgmlType::Q8_0 {
                // Row 3's first block all -128.
                let at = 3 * dtype.row_bytes(cols);
                gguf[at + 2..at + 34].fill(0x80);
            }
            let panel = split(dtype, cols, &gguf);
            let mut w = vec![0f32; PANEL * cols];
            decode(dtype, &gguf, &mut w);
            let xs: Vec<Quantized> = (0..4)
                .map(|t| {
                    Quantized::new(
                        &(0..cols)
                            .map(|i| if (i + t) % 3 == 0 { -3.0 } else { ((i * (29 + t) % 17) as f32 - 8.0) / 9.0 })
                            .collect::<Vec<_>>(),
                    )
                })
                .collect();
            let inputs = [&xs[0], &xs[1], &xs[2], &xs[3]];
            // SAFETY: `cpu` detected avx512f, avx512bw, avx512vl and f16c; one panel of
            // `cols` columns, inputs of `cols` values.
            let bw = unsafe { intdot::x86::panel_dots(dtype, &panel, None, inputs, false) };
            for (t, got) in bw.iter().enumerate() {
                let xq = xs[t].values();
                for r in 0..PANEL {
                    let w = &w[r * cols..(r + 1) * cols];
                    let exact: f64 = w.iter().zip(&xq).map(|(&a, &b)| f64::from(a) * f64::from(b)).sum();
                    let mass: f64 = w.iter().zip(&xq).map(|(&a, &b)| f64::from((a * b).abs())).sum();
                    assert!(
                        (f64::from(got[r]) - exact).abs() <= 1e-5 * mass.max(1.0),
                        "{dtype:?} {cols} input {t} row {r}"
                    );
                }
            }
            if vnni {
                // SAFETY: as above, and avx512vnni detected.
                let v = unsafe { intdot::x86::panel_dots(dtype, &panel, None, inputs, true) };
                assert_eq!(bw.map(|o| o.map(f32::to_bits)), v.map(|o| o.map(f32::to_bits)), "{dtype:?} {cols}");
            } else {
                eprintln!("{dtype:?} {cols}: no VNNI here, the 16-bit products checked alone");
            }
        }
    }

    /// The byte split stays exact at the extremes: every weight at its largest or smallest
    /// stored value (8-bit -128 included, which quantizing never makes but a file may hold)
    /// against inputs at full scale of both signs.
    #[test]
    fn extreme_values_are_exact() {
        let cols = 576;
        for (dtype, byte) in [
            (GgmlType::Q4_0, 0xffu8),
            (GgmlType::Q4_0, 0),
            (GgmlType::Q4_1, 0xff),
            (GgmlType::Q8_0, 0x80),
            (GgmlType::Q8_0, 0x7f),
        ] {
            if !supported(dtype, PANEL, cols) {
                eprintln!("skipped {dtype:?}: no integer kernel on this CPU");
                return;
            }
            // Scale 1.0 (f16 0x3c00), Q4_1's minimum -2.0 (0xc000), every value byte `byte`.
            let block: Vec<u8> = match dtype {
                GgmlType::Q4_1 => [&[0x00, 0x3c, 0x00, 0xc0][..], &[byte; 16]].concat(),
                GgmlType::Q8_0 => [&[0x00, 0x3c][..], &[byte; 32]].concat(),
                _ => [&[0x00, 0x3c][..], &[byte; 16]].concat(),
            };
            let gguf: Vec<u8> = (0..PANEL * cols / 32).flat_map(|_| block.iter().copied()).collect();
            let panel = split(dtype, cols, &gguf);
            let rb = dtype.row_bytes(cols);
            for sign in [1.0f32, -1.0] {
                let x: Vec<f32> = (0..cols).map(|i| if i % 3 == 0 { -sign } else { sign } * 3.0).collect();
                let q = Quantized::new(&x);
                let got = panel_dot(dtype, &panel, &q);
                let mut w = vec![0f32; cols];
                decode(dtype, &gguf[..rb], &mut w);
                let exact: f64 = w.iter().zip(q.values()).map(|(&a, b)| f64::from(a) * f64::from(b)).sum();
                let mass: f64 = w.iter().zip(q.values()).map(|(&a, b)| f64::from((a * b).abs())).sum();
                for (r, &g) in got.iter().enumerate() {
                    assert!(
                        (f64::from(g) - exact).abs() <= 1e-6 * mass,
                        "{dtype:?} byte {byte:#x} sign {sign} row {r}: {g} vs {exact}"
                    );
                }
            }
        }
    }
}
