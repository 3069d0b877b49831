//! Integer dot products of quantized rows (Q4_0, Q4_1, Q8_0) with a 16-bit input, by
//! 8-bit VNNI (`vpdpbusd`, 64 byte products per instruction) without losing a bit.
//!
//! Each 16-bit input value `q` is split in bytes, `q = 256 h + l` (`h` signed, `l`
//! unsigned), and a block's integer sum is `256 Σ w·h + Σ w·l`. `vpdpbusd` multiplies
//! unsigned bytes by signed ones: a 4-bit weight (`0..=15`) is the unsigned side against `h`
//! and the signed side against `l`; an 8-bit weight is the signed side against `l`, and
//! `w + 128` (one XOR) the unsigned side against `h`, whose excess `128 Σ h` the input
//! carries per block ([`Bytes`]). So the sums are exactly those of the 16-bit products.
//!
//! The layout, made once at load ([`split_row`]), groups 16 blocks so that 32-bit lane `i`
//! of every 64-byte register holds only values of block `i`: a group's products add up as
//! integers per block across all its registers, and one conversion and one multiply-add by
//! a vector of 16 block scales finish 512 values. In a group, register `j` (`0..8`) holds
//! in lane `i` values `4c..4c + 4` of block `i` for `j = 2c`, and `16 + 4c..` for
//! `j = 2c + 1`:
//! - 4-bit: load `c` (`0..4`) is lane `i` ← the file's packed bytes `4c..4c + 4` of block
//!   `i` (byte `k` carries value `k` in its low half and `k + 16` in its high half), so a
//!   mask gives register `2c` and a shift and a mask register `2c + 1`;
//! - 8-bit: load `j` is register `j`, as stored.
//!
//! The blocks after the last full group go in pairs (lanes 0-7 the first block, 8-15 the
//! second), their values in order (4-bit: each block's 16 packed bytes as in the file). After
//! the values come the blocks' `f16` scales and (Q4_1) their `f16` minimums, so a row takes
//! as many bytes as in the file.

use sieve_backend::quant::{GgmlType, f16_to_f32};

/// Blocks per group.
const GROUP: usize = 16;

/// Bytes of one block's values in a row (32 values).
fn value_bytes(dtype: GgmlType) -> usize {
    if dtype == GgmlType::Q8_0 { 32 } else { 16 }
}

/// The value bytes, scale and minimum bytes of GGUF block `block`.
fn gguf_block(dtype: GgmlType, block: &[u8]) -> (&[u8], [u8; 2], [u8; 2]) {
    match dtype {
        GgmlType::Q4_1 => (&block[4..20], [block[0], block[1]], [block[2], block[3]]),
        GgmlType::Q8_0 => (&block[2..34], [block[0], block[1]], [0, 0]),
        _ => (&block[2..18], [block[0], block[1]], [0, 0]),
    }
}

/// Where value byte `k` of block `b` sits among a row's value bytes (`nb` blocks).
fn byte_at(dtype: GgmlType, nb: usize, b: usize, k: usize) -> usize {
    let (full, vb) = (nb / GROUP * GROUP, value_bytes(dtype));
    if b >= full {
        return vb * b + k;
    }
    let (g, i) = (b / GROUP, b % GROUP);
    // The register (or 4-bit load) and the byte within the lane.
    let load = if dtype == GgmlType::Q8_0 { 2 * (k % 16 / 4) + k / 16 } else { k / 4 };
    GROUP * vb * g + 64 * load + 4 * i + k % 4
}

/// One GGUF row of `nb` blocks (`gguf`) into the layout above (`dst`, the same length).
pub fn split_row(dtype: GgmlType, nb: usize, gguf: &[u8], dst: &mut [u8]) {
    assert!(nb.is_multiple_of(2));
    let (values, rest) = dst.split_at_mut(nb * value_bytes(dtype));
    let (scales, mins) = rest.split_at_mut(2 * nb);
    for (b, block) in gguf.chunks_exact(dtype.block_bytes()).enumerate() {
        let (qs, d, m) = gguf_block(dtype, block);
        for (k, &byte) in qs.iter().enumerate() {
            values[byte_at(dtype, nb, b, k)] = byte;
        }
        scales[2 * b..2 * b + 2].copy_from_slice(&d);
        if dtype == GgmlType::Q4_1 {
            mins[2 * b..2 * b + 2].copy_from_slice(&m);
        }
    }
}

/// The value bytes of block `b` as the file stores them (16 packed bytes for 4 bits, 32
/// for 8), from a row's values in the layout above.
fn file_block(dtype: GgmlType, values: &[u8], nb: usize, b: usize) -> [u8; 32] {
    let mut out = [0u8; 32];
    // Four bytes at a time: bytes `4m..4m + 4` of a block always sit together (one lane).
    for m in 0..value_bytes(dtype) / 4 {
        let at = byte_at(dtype, nb, b, 4 * m);
        out[4 * m..4 * m + 4].copy_from_slice(&values[at..at + 4]);
    }
    out
}

/// Decodes one row in the layout above to `f32` (`d * (q - offset) + m` for 4 bits,
/// `d * q` for 8, as [`sieve_backend::quant::dequantize`] decodes the file's rows, bit for
/// bit).
pub fn dequantize_row(dtype: GgmlType, nb: usize, row: &[u8], dst: &mut [f32]) {
    let (values, rest) = row.split_at(nb * value_bytes(dtype));
    let half = |at: usize| f16_to_f32(u16::from_le_bytes([rest[at], rest[at + 1]]));
    for (b, out) in dst.chunks_exact_mut(32).enumerate() {
        let d = half(2 * b);
        let qs = file_block(dtype, values, nb, b);
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
        let (offset, m) = if dtype == GgmlType::Q4_1 { (0.0, half(2 * nb + 2 * b)) } else { (8.0, 0.0) };
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

/// A 16-bit input (natural order) split into high and low bytes in the order of the
/// kernels' registers, with what the tail pairs and the 8-bit weights need per lane.
#[derive(Debug, Clone, Default)]
pub struct Bytes {
    /// High bytes (`q >> 8`): per group its 8 registers, then per tail pair its values.
    hi: Vec<i8>,
    /// Low bytes (`q & 0xff`), in the same order.
    lo: Vec<u8>,
    /// `128 Σ h` per block (the excess of `w + 128` against `h`): per group 16 lanes, per
    /// tail pair the first block's in lane 0 and the second's in lane 8.
    excess: Vec<i32>,
    /// Per tail pair, 16 lanes: the first block's input scale in lanes 0-7, the second's in
    /// 8-15.
    tail_d: Vec<f32>,
    /// Per tail pair, 16 lanes: the first block's scaled sum in lane 0, the second's in
    /// lane 8, zero elsewhere (each is added once).
    tail_s: Vec<f32>,
}

impl Bytes {
    /// `q` (natural order) with its per-block scales `d` and scaled sums `s`. Rows with an
    /// odd number of blocks have no kernel here (`supported` asks for a multiple of 64
    /// values); their bytes stay empty.
    pub fn new(q: &[i16], d: &[f32], s: &[f32]) -> Self {
        let nb = d.len();
        if !nb.is_multiple_of(2) {
            return Self::default();
        }
        let full = nb / GROUP * GROUP;
        let mut ordered = vec![0i16; q.len()];
        for g in 0..full / GROUP {
            for c in 0..4 {
                for i in 0..GROUP {
                    let (from, to) = (32 * (GROUP * g + i) + 4 * c, 512 * g + 128 * c + 4 * i);
                    ordered[to..to + 4].copy_from_slice(&q[from..from + 4]);
                    ordered[to + 64..to + 68].copy_from_slice(&q[from + 16..from + 20]);
                }
            }
        }
        ordered[32 * full..].copy_from_slice(&q[32 * full..]);
        let (hi, lo) = ordered.iter().map(|&v| ((v >> 8) as i8, (v & 0xff) as u8)).unzip();
        let h_sum = |b: usize| 128 * q[32 * b..32 * b + 32].iter().map(|&v| i32::from(v >> 8)).sum::<i32>();
        let mut excess: Vec<i32> = (0..full).map(h_sum).collect();
        let (mut tail_d, mut tail_s) = (Vec::new(), Vec::new());
        for b in (full..nb).step_by(2) {
            let mut lanes = [0i32; 16];
            (lanes[0], lanes[8]) = (h_sum(b), h_sum(b + 1));
            excess.extend_from_slice(&lanes);
            let mut dl = [d[b]; 16];
            dl[8..].fill(d[b + 1]);
            let mut sl = [0f32; 16];
            (sl[0], sl[8]) = (s[b], s[b + 1]);
            tail_d.extend_from_slice(&dl);
            tail_s.extend_from_slice(&sl);
        }
        Self { hi, lo, excess, tail_d, tail_s }
    }
}

#[cfg(target_arch = "x86_64")]
pub mod x86 {
    use std::arch::x86_64::*;

    use super::super::vnni::Quantized;
    use super::{Bytes, GROUP, GgmlType, value_bytes};

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

    /// `rows[r] · xs[t]` for four rows in the layout of [`super::split_row`] and `T` inputs:
    /// each row's registers are made once for all inputs, and each input's sums are formed
    /// in the same order whatever `T`, so the results are those of `T` separate calls.
    ///
    /// # Safety
    /// avx512f, avx512bw, avx512vl, avx512vnni and f16c; every row is one row of the inputs'
    /// length (a multiple of 64) in that layout.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,f16c")]
    pub unsafe fn dots<const T: usize>(dtype: GgmlType, rows: [&[u8]; 4], xs: [&Quantized; T]) -> [[f32; 4]; T] {
        // SAFETY: as this function's.
        unsafe {
            match dtype {
                GgmlType::Q4_1 => dots_of::<T, 1>(rows, xs),
                GgmlType::Q8_0 => dots_of::<T, 8>(rows, xs),
                _ => dots_of::<T, 0>(rows, xs),
            }
        }
    }

    /// [`dots`] for Q4_0 (`KIND` 0), Q4_1 (1) or Q8_0 (8) rows.
    ///
    /// # Safety
    /// As [`dots`].
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,f16c")]
    unsafe fn dots_of<const T: usize, const KIND: u8>(rows: [&[u8]; 4], xs: [&Quantized; T]) -> [[f32; 4]; T] {
        let dtype = match KIND {
            1 => GgmlType::Q4_1,
            8 => GgmlType::Q8_0,
            _ => GgmlType::Q4_0,
        };
        let nb = xs[0].d().len();
        let (groups, vb) = (nb / GROUP, value_bytes(dtype));
        let values = rows.map(<[u8]>::as_ptr);
        let scales = rows.map(|r| r[nb * vb..].as_ptr());
        let bytes: [&Bytes; T] = xs.map(Quantized::bytes);
        let (low, sign, zero) = (_mm512_set1_epi8(0x0f), _mm512_set1_epi8(-128), _mm512_setzero_si512());
        let mut acc = [[_mm512_setzero_ps(); 4]; T];
        for g in 0..groups {
            for r in 0..4 {
                // SAFETY (all reads below): group `g` of row `r` and of every input.
                let base = unsafe { values[r].add(GROUP * vb * g) };
                // The weights against `h` (unsigned: 4-bit values, or 8-bit ones plus 128)
                // and against `l` (signed).
                let (mut wh, mut wl) = ([zero; 8], [zero; 8]);
                if KIND == 8 {
                    for j in 0..8 {
                        wl[j] = unsafe { _mm512_loadu_si512(base.add(64 * j).cast()) };
                        wh[j] = _mm512_xor_si512(wl[j], sign);
                    }
                } else {
                    for c in 0..4 {
                        let v = unsafe { _mm512_loadu_si512(base.add(64 * c).cast()) };
                        wh[2 * c] = _mm512_and_si512(v, low);
                        wh[2 * c + 1] = _mm512_and_si512(_mm512_srli_epi16::<4>(v), low);
                    }
                    wl = wh;
                }
                let d = _mm512_cvtph_ps(unsafe { _mm256_loadu_si256(scales[r].add(2 * GROUP * g).cast()) });
                let m = match KIND {
                    1 => _mm512_cvtph_ps(unsafe { _mm256_loadu_si256(scales[r].add(2 * (nb + GROUP * g)).cast()) }),
                    0 => _mm512_mul_ps(d, _mm512_set1_ps(-8.0)),
                    _ => _mm512_setzero_ps(),
                };
                for t in 0..T {
                    let (hi, lo) = (bytes[t].hi[512 * g..].as_ptr(), bytes[t].lo[512 * g..].as_ptr());
                    // Four chains of four, so that each waits less on the one before.
                    let (mut ah, mut al) = ([zero; 2], [zero; 2]);
                    for j in 0..8 {
                        unsafe {
                            ah[j % 2] =
                                _mm512_dpbusd_epi32(ah[j % 2], wh[j], _mm512_loadu_si512(hi.add(64 * j).cast()));
                            al[j % 2] =
                                _mm512_dpbusd_epi32(al[j % 2], _mm512_loadu_si512(lo.add(64 * j).cast()), wl[j]);
                        }
                    }
                    let mut ah = _mm512_add_epi32(ah[0], ah[1]);
                    if KIND == 8 {
                        ah = _mm512_sub_epi32(ah, unsafe {
                            _mm512_loadu_si512(bytes[t].excess[GROUP * g..].as_ptr().cast())
                        });
                    }
                    let sum = _mm512_add_epi32(_mm512_slli_epi32::<8>(ah), _mm512_add_epi32(al[0], al[1]));
                    let (dx, sx) = unsafe {
                        (
                            _mm512_loadu_ps(xs[t].d()[GROUP * g..].as_ptr()),
                            _mm512_loadu_ps(xs[t].s()[GROUP * g..].as_ptr()),
                        )
                    };
                    acc[t][r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum), _mm512_mul_ps(d, dx), acc[t][r]);
                    if KIND != 8 {
                        acc[t][r] = _mm512_fmadd_ps(m, sx, acc[t][r]);
                    }
                }
            }
        }
        // The tail: pairs of blocks, the first in lanes 0-7, the second in 8-15.
        let spread = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
        let full = groups * GROUP;
        for (p, b) in (full..nb).step_by(2).enumerate() {
            for r in 0..4 {
                // SAFETY (all reads below): pair `p` of the tail of row `r` and every input.
                let (wh, wl) = if KIND == 8 {
                    let w = unsafe { _mm512_loadu_si512(values[r].add(vb * b).cast()) };
                    (_mm512_xor_si512(w, sign), w)
                } else {
                    let raw = unsafe { _mm256_loadu_si256(values[r].add(vb * b).cast()) };
                    // [first, second] -> [first, first, second, second], the high halves of
                    // the second and fourth copies shifted down: the pair's 64 values in
                    // order.
                    let both = _mm512_broadcast_i64x4(raw);
                    let v = _mm512_shuffle_i64x2::<0x50>(both, both);
                    let w = _mm512_and_si512(_mm512_mask_srli_epi16(v, 0xff00_ff00, v, 4), low);
                    (w, w)
                };
                // SAFETY: both blocks' scales (and minimums) are inside the row.
                let d = unsafe { two_halves(scales[r].add(2 * b), spread) };
                let m = match KIND {
                    1 => unsafe { two_halves(scales[r].add(2 * (nb + b)), spread) },
                    0 => _mm512_mul_ps(d, _mm512_set1_ps(-8.0)),
                    _ => _mm512_setzero_ps(),
                };
                for t in 0..T {
                    let at = 512 * groups + 64 * p;
                    let (mut ah, al, dx, sx) = unsafe {
                        (
                            _mm512_dpbusd_epi32(zero, wh, _mm512_loadu_si512(bytes[t].hi[at..].as_ptr().cast())),
                            _mm512_dpbusd_epi32(zero, _mm512_loadu_si512(bytes[t].lo[at..].as_ptr().cast()), wl),
                            _mm512_loadu_ps(bytes[t].tail_d[16 * p..].as_ptr()),
                            _mm512_loadu_ps(bytes[t].tail_s[16 * p..].as_ptr()),
                        )
                    };
                    if KIND == 8 {
                        let excess = unsafe { _mm512_loadu_si512(bytes[t].excess[full + 16 * p..].as_ptr().cast()) };
                        ah = _mm512_sub_epi32(ah, excess);
                    }
                    let sum = _mm512_add_epi32(_mm512_slli_epi32::<8>(ah), al);
                    acc[t][r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum), _mm512_mul_ps(d, dx), acc[t][r]);
                    if KIND != 8 {
                        acc[t][r] = _mm512_fmadd_ps(m, sx, acc[t][r]);
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

    /// Two `f16` values at `at`, the first in lanes 0-7 and the second in 8-15 (`spread`).
    ///
    /// # Safety
    /// avx512f and f16c; four bytes at `at`.
    #[inline]
    #[target_feature(enable = "avx512f,f16c")]
    unsafe fn two_halves(at: *const u8, spread: __m512i) -> __m512 {
        // SAFETY: four bytes at `at`.
        let h = _mm_cvtsi32_si128(i32::from_le_bytes(unsafe { at.cast::<[u8; 4]>().read_unaligned() }));
        _mm512_permutexvar_ps(spread, _mm512_castps128_ps512(_mm_cvtph_ps(h)))
    }
}
