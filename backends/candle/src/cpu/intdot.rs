//! Integer dot products of quantized rows (Q4_0, Q4_1, Q8_0) with a 16-bit input, by
//! 8-bit VNNI (`vpdpbusd`, 64 byte products per instruction) without losing a bit, or on
//! CPUs without VNNI by AVX-512BW's 16-bit products (`vpmaddwd`), to the same bits.
//!
//! Each 16-bit input value `q` is split in bytes, `q = 256 h + l` (`h` signed, `l`
//! unsigned), and a block's integer sum is `256 Σ w·h + Σ w·l`. `vpdpbusd` multiplies
//! unsigned bytes by signed ones: a 4-bit weight (`0..=15`) is the unsigned side against `h`
//! and the signed side against `l`; an 8-bit weight is the signed side against `l`, and
//! `w + 128` (one XOR) the unsigned side against `h`, whose excess `128 Σ h` the input
//! carries per block ([`Bytes`]). So the sums are exactly those of the 16-bit products.
//!
//! **The layout** (made once at load, [`split_panel`]): rows go in panels of [`PANEL`] (16),
//! and 32-bit lane `i` of every 64-byte register holds values of the panel's row `i`, the
//! same four columns in every lane. So one block's products for 16 rows add up as integers
//! in 16 lanes, one lane per output row, against four input bytes broadcast to every lane,
//! and one conversion and one multiply-add by the 16 rows' scales finish the block; the
//! output needs no reduction across lanes. A panel is its blocks in order, each a unit of
//! 16 rows' bytes:
//! - 4-bit: four loads of 64 bytes, load `c` holding in lane `i` the file's packed bytes
//!   `4c..4c + 4` of row `i`'s block (byte `k` carries value `k` in its low half and
//!   `k + 16` in its high half), so a mask gives values `4c..4c + 4` and a shift and a mask
//!   values `16 + 4c..`;
//! - 8-bit: eight loads, load `j` holding values `4j..4j + 4` of each row;
//! - then the 16 rows' `f16` scales (32 bytes) and, for Q4_1, their `f16` minimums.
//!
//! A unit takes the bytes of 16 of the file's blocks, so a matrix takes as many bytes as in
//! the file. Every input's sums are formed in one order whatever the number of inputs, and
//! each block's integer sum is exact, so a product gives the same bits alone or batched.

use sieve_backend::quant::{GgmlType, f16_to_f32};

/// Rows per panel: one per 32-bit lane of a 64-byte register.
pub const PANEL: usize = 16;

/// Bytes of one block's values in a row (32 values).
pub(crate) fn value_bytes(dtype: GgmlType) -> usize {
    if dtype == GgmlType::Q8_0 { 32 } else { 16 }
}

/// Bytes of one unit: a block of each of a panel's rows.
pub(crate) fn unit_bytes(dtype: GgmlType) -> usize {
    PANEL * dtype.block_bytes()
}

/// The value bytes, scale and minimum bytes of GGUF block `block`.
fn gguf_block(dtype: GgmlType, block: &[u8]) -> (&[u8], [u8; 2], [u8; 2]) {
    match dtype {
        GgmlType::Q4_1 => (&block[4..20], [block[0], block[1]], [block[2], block[3]]),
        GgmlType::Q8_0 => (&block[2..34], [block[0], block[1]], [0, 0]),
        _ => (&block[2..18], [block[0], block[1]], [0, 0]),
    }
}

/// [`PANEL`] GGUF rows of `nb` blocks (`gguf`) into the layout above (`dst`, the same
/// length).
pub fn split_panel(dtype: GgmlType, nb: usize, gguf: &[u8], dst: &mut [u8]) {
    let (bb, ub, vb) = (dtype.block_bytes(), unit_bytes(dtype), value_bytes(dtype));
    assert!(gguf.len() == PANEL * nb * bb && dst.len() == gguf.len());
    for (i, row) in gguf.chunks_exact(nb * bb).enumerate() {
        for (b, block) in row.chunks_exact(bb).enumerate() {
            let (qs, d, m) = gguf_block(dtype, block);
            let unit = &mut dst[ub * b..ub * (b + 1)];
            for (c, four) in qs.chunks_exact(4).enumerate() {
                unit[64 * c + 4 * i..64 * c + 4 * i + 4].copy_from_slice(four);
            }
            unit[PANEL * vb + 2 * i..PANEL * vb + 2 * i + 2].copy_from_slice(&d);
            if dtype == GgmlType::Q4_1 {
                unit[PANEL * vb + 32 + 2 * i..PANEL * vb + 32 + 2 * i + 2].copy_from_slice(&m);
            }
        }
    }
}

/// Decodes row `lane` of a panel in the layout above (`panel`, blocks of `nb`) to `f32`
/// (`d * (q - offset) + m` for 4 bits, `d * q` for 8, as
/// [`sieve_backend::quant::dequantize`] decodes the file's rows, bit for bit).
pub fn dequantize_row(dtype: GgmlType, nb: usize, panel: &[u8], lane: usize, dst: &mut [f32]) {
    let (ub, vb) = (unit_bytes(dtype), value_bytes(dtype));
    assert!(lane < PANEL && panel.len() == nb * ub && dst.len() == 32 * nb);
    for (unit, out) in panel.chunks_exact(ub).zip(dst.chunks_exact_mut(32)) {
        let half = |at: usize| f16_to_f32(u16::from_le_bytes([unit[at], unit[at + 1]]));
        let d = half(PANEL * vb + 2 * lane);
        let mut qs = [0u8; 32];
        for (c, four) in qs[..vb].chunks_exact_mut(4).enumerate() {
            four.copy_from_slice(&unit[64 * c + 4 * lane..64 * c + 4 * lane + 4]);
        }
        if dtype == GgmlType::Q8_0 {
            #[cfg(target_arch = "x86_64")]
            if super::vnni::cpu() {
                // SAFETY: `cpu` detected avx512f; `out` holds 32 values.
                unsafe { x86::decode_q8(&qs, d, out) };
                continue;
            }
            for (o, &q) in out.iter_mut().zip(&qs) {
                *o = d * f32::from(q as i8);
            }
            continue;
        }
        let (offset, m) = if dtype == GgmlType::Q4_1 { (0.0, half(PANEL * vb + 32 + 2 * lane)) } else { (8.0, 0.0) };
        #[cfg(target_arch = "x86_64")]
        if super::vnni::cpu() {
            // SAFETY: `cpu` detected avx512f; `out` holds 32 values.
            unsafe { x86::decode_q4(&qs, d, offset, m, out) };
            continue;
        }
        for (k, &byte) in qs[..16].iter().enumerate() {
            out[k] = d * (f32::from(byte & 0xf) - offset) + m;
            out[k + 16] = d * (f32::from(byte >> 4) - offset) + m;
        }
    }
}

/// A 16-bit input split into high and low bytes (the input's order), with `128 Σ h` per
/// block for the 8-bit weights.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Bytes {
    /// High bytes (`q >> 8`).
    hi: Vec<i8>,
    /// Low bytes (`q & 0xff`).
    lo: Vec<u8>,
    /// `128 Σ h` per block (the excess of `w + 128` against `h`).
    excess: Vec<i32>,
}

impl Bytes {
    /// `q` (blocks of 32 values) in bytes.
    pub fn new(q: &[i16]) -> Self {
        let (hi, lo) = q.iter().map(|&v| ((v >> 8) as i8, (v & 0xff) as u8)).unzip();
        let excess = q.chunks_exact(32).map(|b| 128 * b.iter().map(|&v| i32::from(v >> 8)).sum::<i32>()).collect();
        Self { hi, lo, excess }
    }

    /// Bytes made elsewhere in one pass with the values (the same as [`Self::new`] gives).
    pub(crate) fn from_parts(hi: Vec<i8>, lo: Vec<u8>, excess: Vec<i32>) -> Self {
        Self { hi, lo, excess }
    }

    /// The high bytes, in the input's order.
    pub(crate) fn hi(&self) -> &[i8] {
        &self.hi
    }

    /// The low bytes, in the input's order.
    pub(crate) fn lo(&self) -> &[u8] {
        &self.lo
    }
}

#[cfg(target_arch = "x86_64")]
pub mod x86 {
    use std::arch::x86_64::*;

    use super::super::vnni::Quantized;
    use super::{GgmlType, PANEL, unit_bytes, value_bytes};

    /// One 4-bit block's 16 packed bytes to 32 `f32` values, `d * (q - offset) + m` without
    /// a fused multiply-add (the scalar code's values, bit for bit).
    ///
    /// # Safety
    /// avx512f; `out` holds 32 values.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn decode_q4(qs: &[u8; 32], d: f32, offset: f32, m: f32, out: &mut [f32]) {
        assert!(out.len() == 32);
        // SAFETY: 16 bytes in `qs`.
        let v = _mm512_cvtepu8_epi32(unsafe { _mm_loadu_si128(qs.as_ptr().cast()) });
        let (d, offset, m) = (_mm512_set1_ps(d), _mm512_set1_ps(offset), _mm512_set1_ps(m));
        let lo = _mm512_cvtepi32_ps(_mm512_and_si512(v, _mm512_set1_epi32(0xf)));
        let hi = _mm512_cvtepi32_ps(_mm512_srli_epi32::<4>(v));
        // SAFETY: 32 values at `out`.
        unsafe {
            _mm512_storeu_ps(out.as_mut_ptr(), _mm512_add_ps(_mm512_mul_ps(d, _mm512_sub_ps(lo, offset)), m));
            _mm512_storeu_ps(out.as_mut_ptr().add(16), _mm512_add_ps(_mm512_mul_ps(d, _mm512_sub_ps(hi, offset)), m));
        }
    }

    /// One 8-bit block's 32 values to `f32`, `d * q`.
    ///
    /// # Safety
    /// avx512f; `out` holds 32 values.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn decode_q8(qs: &[u8; 32], d: f32, out: &mut [f32]) {
        assert!(out.len() == 32);
        let d = _mm512_set1_ps(d);
        for h in 0..2 {
            // SAFETY: 16 bytes at `qs + 16 h`; 16 values at `out + 16 h`.
            unsafe {
                let q = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(qs.as_ptr().add(16 * h).cast())));
                _mm512_storeu_ps(out.as_mut_ptr().add(16 * h), _mm512_mul_ps(d, q));
            }
        }
    }

    /// The format a kernel's `KIND` names: Q4_0 (0), Q4_1 (1) or Q8_0 (8).
    pub(crate) const fn kind_dtype(kind: u8) -> GgmlType {
        match kind {
            1 => GgmlType::Q4_1,
            8 => GgmlType::Q8_0,
            _ => GgmlType::Q4_0,
        }
    }

    /// A 4-bit unit's values as 8 registers, register `j` holding values `4j..4j + 4` of
    /// each of the 16 rows: the low halves of its four loads, then their high halves.
    ///
    /// # Safety
    /// avx512f and avx512bw; `unit` is one 4-bit unit of a panel.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw")]
    pub(crate) unsafe fn nibbles(unit: *const u8) -> [__m512i; 8] {
        let low = _mm512_set1_epi8(0x0f);
        let mut w = [_mm512_setzero_si512(); 8];
        for c in 0..4 {
            // SAFETY: four loads of 64 value bytes at `unit`.
            let v = unsafe { _mm512_loadu_si512(unit.add(64 * c).cast()) };
            w[c] = _mm512_and_si512(v, low);
            w[4 + c] = _mm512_and_si512(_mm512_srli_epi16::<4>(v), low);
        }
        w
    }

    /// A unit's 16 rows' scales `d` and what multiplies each input block's scaled sum:
    /// the minimums (Q4_1), `-8 d` (Q4_0) or nothing (Q8_0).
    ///
    /// # Safety
    /// avx512f and f16c; `unit` is one unit of a panel of format `KIND`.
    #[inline]
    #[target_feature(enable = "avx512f,f16c")]
    pub(crate) unsafe fn unit_scales<const KIND: u8>(unit: *const u8) -> (__m512, __m512) {
        let at = PANEL * value_bytes(kind_dtype(KIND));
        // SAFETY: the scales (and minimums) follow the unit's values.
        let d = _mm512_cvtph_ps(unsafe { _mm256_loadu_si256(unit.add(at).cast()) });
        let m = match KIND {
            1 => _mm512_cvtph_ps(unsafe { _mm256_loadu_si256(unit.add(at + 32).cast()) }),
            0 => _mm512_mul_ps(d, _mm512_set1_ps(-8.0)),
            _ => _mm512_setzero_ps(),
        };
        (d, m)
    }

    /// Block `b`'s integer sums `Σ w·h` (`h`) and `Σ w·l` (`l`) for 16 rows and input `x`,
    /// scaled into `acc`. Every kernel finishes a block with these operations in this
    /// order, so each gives the same bits.
    ///
    /// # Safety
    /// avx512f; `b` is a block of `x`.
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub(crate) unsafe fn finish_block<const KIND: u8>(
        acc: __m512,
        (h, l): (__m512i, __m512i),
        (d, m): (__m512, __m512),
        x: &Quantized,
        b: usize,
    ) -> __m512 {
        let sum = _mm512_add_epi32(_mm512_slli_epi32::<8>(h), l);
        let scale = _mm512_mul_ps(d, _mm512_set1_ps(x.d()[b]));
        let acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum), scale, acc);
        if KIND == 8 { acc } else { _mm512_fmadd_ps(m, _mm512_set1_ps(x.s()[b]), acc) }
    }

    /// A panel's 16 rows times each of `T` inputs: `out[t][i]` is row `i` · `xs[t]`. The
    /// weights' registers are made once per block for all inputs, and each input's sums
    /// are formed in the same order whatever `T`, so the results are those of `T`
    /// separate calls.
    ///
    /// `fetch`, a later panel of the same length, is prefetched into L2 a unit per block
    /// as this one is multiplied (see [`panel_of`]).
    ///
    /// With `vnni`, the products are VNNI's byte products ([`panel_of`]); without, the
    /// 16-bit products of AVX-512BW ([`panel_of_bw`]). Both form the same integer sums, so
    /// they give the same bits.
    ///
    /// # Safety
    /// avx512f, avx512bw, avx512vl and f16c, and avx512vnni if `vnni`; `panel` is one panel
    /// of the inputs' length in the layout of [`super::split_panel`].
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c")]
    pub unsafe fn panel_dots<const T: usize>(
        dtype: GgmlType,
        panel: &[u8],
        fetch: Option<&[u8]>,
        xs: [&Quantized; T],
        vnni: bool,
    ) -> [[f32; PANEL]; T] {
        // SAFETY: as this function's.
        let acc = unsafe {
            match (dtype, vnni) {
                (GgmlType::Q4_1, true) => panel_of::<T, 1>(panel, fetch, xs),
                (GgmlType::Q8_0, true) => panel_of::<T, 8>(panel, fetch, xs),
                (_, true) => panel_of::<T, 0>(panel, fetch, xs),
                (GgmlType::Q4_1, false) => panel_of_bw::<T, 1>(panel, fetch, xs),
                (GgmlType::Q8_0, false) => panel_of_bw::<T, 8>(panel, fetch, xs),
                (_, false) => panel_of_bw::<T, 0>(panel, fetch, xs),
            }
        };
        let mut out = [[0f32; PANEL]; T];
        for t in 0..T {
            // SAFETY: 16 values at `out[t]`.
            unsafe { _mm512_storeu_ps(out[t].as_mut_ptr(), acc[t]) };
        }
        out
    }

    /// [`panel_dots`] for Q4_0 (`KIND` 0), Q4_1 (1) or Q8_0 (8) rows.
    ///
    /// The panel being fetched gets its unit `b` requested while unit `b` of this one is
    /// multiplied, so that the requests to memory are spread over the arithmetic. Issued
    /// all at once before the panel (a panel is 90 lines of the default model's rows), they
    /// waited for free line-fill buffers, and the arithmetic waited behind them.
    ///
    /// # Safety
    /// As [`panel_dots`].
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,f16c")]
    unsafe fn panel_of<const T: usize, const KIND: u8>(
        panel: &[u8],
        fetch: Option<&[u8]>,
        xs: [&Quantized; T],
    ) -> [__m512; T] {
        let ub = unit_bytes(kind_dtype(KIND));
        let nb = xs[0].d().len();
        assert!(panel.len() == nb * ub && fetch.is_none_or(|f| f.len() == panel.len()));
        let (sign, zero) = (_mm512_set1_epi8(-128), _mm512_setzero_si512());
        let mut acc = [_mm512_setzero_ps(); T];
        for b in 0..nb {
            if let Some(f) = fetch {
                for line in (ub * b..ub * (b + 1)).step_by(64) {
                    // SAFETY: a prefetch has no observable effect; `line` is inside `f`.
                    unsafe { _mm_prefetch::<_MM_HINT_T1>(f.as_ptr().add(line).cast()) };
                }
            }
            // SAFETY (all reads below): unit `b` of the panel, block `b` of every input.
            let unit = unsafe { panel.as_ptr().add(ub * b) };
            // The weights against `h` (unsigned: 4-bit values, or 8-bit ones plus 128)
            // and against `l` (signed); register `j` holds values `4j..4j + 4`.
            let (mut wh, mut wl) = ([zero; 8], [zero; 8]);
            if KIND == 8 {
                for j in 0..8 {
                    wl[j] = unsafe { _mm512_loadu_si512(unit.add(64 * j).cast()) };
                    wh[j] = _mm512_xor_si512(wl[j], sign);
                }
            } else {
                wh = unsafe { nibbles(unit) };
                wl = wh;
            }
            let scales = unsafe { unit_scales::<KIND>(unit) };
            for t in 0..T {
                let bytes = xs[t].bytes();
                let (hi, lo) = unsafe {
                    (bytes.hi.as_ptr().add(32 * b).cast::<i32>(), bytes.lo.as_ptr().add(32 * b).cast::<i32>())
                };
                // Four chains of four, so that each waits less on the one before.
                let (mut ah, mut al) = ([zero; 2], [zero; 2]);
                for j in 0..8 {
                    unsafe {
                        let (h, l) = (
                            _mm512_set1_epi32(hi.add(j).read_unaligned()),
                            _mm512_set1_epi32(lo.add(j).read_unaligned()),
                        );
                        ah[j % 2] = _mm512_dpbusd_epi32(ah[j % 2], wh[j], h);
                        al[j % 2] = _mm512_dpbusd_epi32(al[j % 2], l, wl[j]);
                    }
                }
                let mut ah = _mm512_add_epi32(ah[0], ah[1]);
                if KIND == 8 {
                    ah = _mm512_sub_epi32(ah, _mm512_set1_epi32(bytes.excess[b]));
                }
                let sums = (ah, _mm512_add_epi32(al[0], al[1]));
                acc[t] = unsafe { finish_block::<KIND>(acc[t], sums, scales, xs[t], b) };
            }
        }
        acc
    }

    /// [`panel_of`] on CPUs without VNNI (AVX-512BW, as on Skylake-SP): each block's sum
    /// `Σ w·q` by `vpmaddwd`, 16-bit weights times the 16-bit input two values at a time.
    /// A lane's four weights are taken apart into two registers of 16-bit words (values
    /// `4j` and `4j + 2` of each row, then `4j + 1` and `4j + 3`), and the input's block is
    /// put in the same pair order once per block, so each lane still sums its own row. The
    /// sum is the integer `256 Σ w·h + Σ w·l` the VNNI kernel forms (no 16-bit product or
    /// pair of them overflows: `|w| ≤ 128`, `|q| ≤ 32767`), finished the same way: the
    /// same bits.
    ///
    /// # Safety
    /// avx512f, avx512bw, avx512vl and f16c; `panel` as in [`panel_dots`].
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c")]
    unsafe fn panel_of_bw<const T: usize, const KIND: u8>(
        panel: &[u8],
        fetch: Option<&[u8]>,
        xs: [&Quantized; T],
    ) -> [__m512; T] {
        /// Word `i` of a block in pair order is value `PAIR_ORDER[i]`: 0, 2, 1, 3, 4, 6, 5, 7...
        const PAIR_ORDER: [i16; 32] = {
            let mut order = [0i16; 32];
            let mut i = 0;
            while i < 32 {
                order[i] = (i - i % 4 + [0, 2, 1, 3][i % 4]) as i16;
                i += 1;
            }
            order
        };
        let ub = unit_bytes(kind_dtype(KIND));
        let nb = xs[0].d().len();
        assert!(panel.len() == nb * ub && fetch.is_none_or(|f| f.len() == panel.len()));
        assert!(xs.iter().all(|x| x.q().len() == 32 * nb));
        let zero = _mm512_setzero_si512();
        let nibble = _mm512_set1_epi16(0x0f);
        // SAFETY: 32 words.
        let order = unsafe { _mm512_loadu_si512(PAIR_ORDER.as_ptr().cast()) };
        let mut acc = [_mm512_setzero_ps(); T];
        for b in 0..nb {
            if let Some(f) = fetch {
                for line in (ub * b..ub * (b + 1)).step_by(64) {
                    // SAFETY: a prefetch has no observable effect; `line` is inside `f`.
                    unsafe { _mm_prefetch::<_MM_HINT_T1>(f.as_ptr().add(line).cast()) };
                }
            }
            // SAFETY (all reads below): unit `b` of the panel, block `b` of every input.
            let unit = unsafe { panel.as_ptr().add(ub * b) };
            // Register `j`'s values `4j, 4j + 2` (`even`) and `4j + 1, 4j + 3` (`odd`) of
            // each row, as 16-bit words.
            let (mut even, mut odd) = ([zero; 8], [zero; 8]);
            if KIND == 8 {
                for j in 0..8 {
                    let w = unsafe { _mm512_loadu_si512(unit.add(64 * j).cast()) };
                    even[j] = _mm512_srai_epi16::<8>(_mm512_slli_epi16::<8>(w));
                    odd[j] = _mm512_srai_epi16::<8>(w);
                }
            } else {
                // Load `c`'s low halves are values `4c..`, its high halves `16 + 4c..`.
                for c in 0..4 {
                    let v = unsafe { _mm512_loadu_si512(unit.add(64 * c).cast()) };
                    even[c] = _mm512_and_si512(v, nibble);
                    odd[c] = _mm512_and_si512(_mm512_srli_epi16::<8>(v), nibble);
                    even[4 + c] = _mm512_and_si512(_mm512_srli_epi16::<4>(v), nibble);
                    odd[4 + c] = _mm512_srli_epi16::<12>(v);
                }
            }
            let scales = unsafe { unit_scales::<KIND>(unit) };
            for t in 0..T {
                let mut pairs = [0i32; 16];
                unsafe {
                    let q = _mm512_loadu_si512(xs[t].q().as_ptr().add(32 * b).cast());
                    _mm512_storeu_si512(pairs.as_mut_ptr().cast(), _mm512_permutexvar_epi16(order, q));
                }
                // Four chains, so that each waits less on the one before.
                let (mut ae, mut ao) = ([zero; 2], [zero; 2]);
                for j in 0..8 {
                    let (e, o) = (_mm512_set1_epi32(pairs[2 * j]), _mm512_set1_epi32(pairs[2 * j + 1]));
                    ae[j % 2] = _mm512_add_epi32(ae[j % 2], _mm512_madd_epi16(even[j], e));
                    ao[j % 2] = _mm512_add_epi32(ao[j % 2], _mm512_madd_epi16(odd[j], o));
                }
                let sum = _mm512_add_epi32(_mm512_add_epi32(ae[0], ae[1]), _mm512_add_epi32(ao[0], ao[1]));
                acc[t] = unsafe { finish_block::<KIND>(acc[t], (zero, sum), scales, xs[t], b) };
            }
        }
        acc
    }
}
