//! Integer dot products for 4-bit rows (Q4_0 and Q4_1) with 8-bit VNNI (`vpdpbusd`, 64
//! products per instruction) and no loss against the 16-bit input of [`super::vnni`]:
//! each 16-bit input value `q` is split into a signed high byte and an unsigned low byte,
//! `q = 256 h + l`, and a block's sum is `256 Σ w h + Σ w l`, both exact in integers
//! (`vpdpbusd` multiplies unsigned by signed bytes: the 4-bit weight, `0..=15`, is the
//! unsigned side against `h` and the signed side against `l`). So the results are those of
//! the 16-bit kernel, up to the order of the `f32` additions, with half its multiply
//! instructions.
//!
//! The other half of the saving is in the layout, made once at load ([`split_row`]): full
//! groups of 16 blocks are stored so that 32-bit lane `i` of every 64-byte load holds only
//! values of block `i`. A group's products then add up as integers per block across all
//! its loads, and one conversion and one multiply-add by a vector of 16 block scales finish
//! 512 values (the pair layout of [`super::vnni`] needs them per 64). Within a group, load
//! `c` (`0..4`) holds in lane `i` the packed bytes `4c..4c + 4` of block `i` as the GGUF
//! file stores them (byte `k` carries value `k` in its low half and value `k + 16` in its
//! high half), so a mask gives values `4c..4c + 4` of every block and a shift and a mask
//! values `16 + 4c..`. Blocks after the last full group go in pairs, each pair's 32 packed
//! bytes as in the file. After the values come the blocks' `f16` scales and (Q4_1) their
//! `f16` minimums, so a row takes as many bytes as in the file.

use sieve_backend::quant::GgmlType;

/// Blocks per group.
const GROUP: usize = 16;

/// Packed bytes of one block (32 values).
const BLOCK_BYTES: usize = 16;

/// Whether this module handles `dtype`.
pub fn handles(dtype: GgmlType) -> bool {
    matches!(dtype, GgmlType::Q4_0 | GgmlType::Q4_1)
}

/// The packed values, scale and minimum bytes of GGUF block `block`.
fn gguf_block(dtype: GgmlType, block: &[u8]) -> (&[u8], [u8; 2], [u8; 2]) {
    match dtype {
        GgmlType::Q4_1 => (&block[4..20], [block[0], block[1]], [block[2], block[3]]),
        _ => (&block[2..18], [block[0], block[1]], [0, 0]),
    }
}

/// Where byte `k` (`0..16`) of the packed values of block `b` sits among a row's value
/// bytes (`nb` blocks).
fn byte_at(nb: usize, b: usize, k: usize) -> usize {
    let full = nb / GROUP * GROUP;
    if b < full {
        let (g, i) = (b / GROUP, b % GROUP);
        GROUP * BLOCK_BYTES * g + 64 * (k / 4) + 4 * i + k % 4
    } else {
        full * BLOCK_BYTES + (b - full) * BLOCK_BYTES + k
    }
}

/// One GGUF row of `nb` blocks (`gguf`) into the layout above (`dst`, the same length).
pub fn split_row(dtype: GgmlType, nb: usize, gguf: &[u8], dst: &mut [u8]) {
    assert!(handles(dtype) && nb.is_multiple_of(2));
    let (values, rest) = dst.split_at_mut(nb * BLOCK_BYTES);
    let (scales, mins) = rest.split_at_mut(2 * nb);
    for (b, block) in gguf.chunks_exact(dtype.block_bytes()).enumerate() {
        let (qs, d, m) = gguf_block(dtype, block);
        for (k, &byte) in qs.iter().enumerate() {
            values[byte_at(nb, b, k)] = byte;
        }
        scales[2 * b..2 * b + 2].copy_from_slice(&d);
        if dtype == GgmlType::Q4_1 {
            mins[2 * b..2 * b + 2].copy_from_slice(&m);
        }
    }
}

/// The packed bytes of block `b` as the file stores them, from a row in the layout above.
fn packed_block(values: &[u8], nb: usize, b: usize) -> [u8; BLOCK_BYTES] {
    let full = nb / GROUP * GROUP;
    if b >= full {
        let at = BLOCK_BYTES * b;
        return values[at..at + BLOCK_BYTES].try_into().expect("16 bytes");
    }
    let base = GROUP * BLOCK_BYTES * (b / GROUP) + 4 * (b % GROUP);
    let mut out = [0u8; BLOCK_BYTES];
    for c in 0..4 {
        out[4 * c..4 * c + 4].copy_from_slice(&values[base + 64 * c..base + 64 * c + 4]);
    }
    out
}

/// Decodes one row in the layout above to `f32` (`d * (q - offset) + m`, as
/// [`sieve_backend::quant::dequantize`] decodes the file's rows, bit for bit).
pub fn dequantize_row(dtype: GgmlType, nb: usize, row: &[u8], dst: &mut [f32]) {
    let (values, rest) = row.split_at(nb * BLOCK_BYTES);
    let half = |at: usize| sieve_backend::quant::f16_to_f32(u16::from_le_bytes([rest[at], rest[at + 1]]));
    for (b, out) in dst.chunks_exact_mut(32).enumerate() {
        let d = half(2 * b);
        let (offset, m) = if dtype == GgmlType::Q4_1 { (0.0, half(2 * nb + 2 * b)) } else { (8.0, 0.0) };
        let qs = packed_block(values, nb, b);
        #[cfg(target_arch = "x86_64")]
        if super::vnni::cpu() {
            // SAFETY: `cpu` detected avx512f; `out` holds 32 values.
            unsafe { x86::decode_block(&qs, d, offset, m, out) };
            continue;
        }
        for (k, &byte) in qs.iter().enumerate() {
            out[k] = d * (f32::from(byte & 0xf) - offset) + m;
            out[k + 16] = d * (f32::from(byte >> 4) - offset) + m;
        }
    }
}

/// A 16-bit input (natural order, `nb` blocks) split into high and low bytes in the layout
/// above, with the scales the tail pairs need per lane.
#[derive(Debug, Clone, Default)]
pub struct Bytes {
    /// High bytes (`q >> 8`), in the order of the weight values.
    hi: Vec<i8>,
    /// Low bytes (`q & 0xff`), in the same order.
    lo: Vec<u8>,
    /// Per tail pair, 16 lanes: the first block's input scale in lanes 0-7, the second's in
    /// 8-15.
    tail_d: Vec<f32>,
    /// Per tail pair, 16 lanes: the first block's scaled sum in lane 0, the second's in
    /// lane 8, zero elsewhere (each is added once).
    tail_s: Vec<f32>,
}

impl Bytes {
    /// `q` (natural order) with its per-block scales `d` and scaled sums `s`.
    pub fn new(q: &[i16], d: &[f32], s: &[f32]) -> Self {
        let nb = d.len();
        let mut out = Self { hi: vec![0; q.len()], lo: vec![0; q.len()], ..Self::default() };
        if !nb.is_multiple_of(2) {
            // No 4-bit row has an odd number of blocks (`supported` asks for a multiple of
            // 64 values): leave the bytes unused.
            return out;
        }
        let full = nb / GROUP * GROUP;
        // The values in the order the kernel's registers take them: in a group, load `c`
        // of the weights unpacks to two registers, lane `i` of the first holding values
        // `4c..4c + 4` of block `i` and of the second values `16 + 4c..`; the tail pairs
        // unpack to the values in order.
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
        for ((h, l), &v) in out.hi.iter_mut().zip(&mut out.lo).zip(&ordered) {
            (*h, *l) = ((v >> 8) as i8, (v & 0xff) as u8);
        }
        for b in (full..nb).step_by(2) {
            let mut dl = [0f32; 16];
            let mut sl = [0f32; 16];
            dl[..8].fill(d[b]);
            dl[8..].fill(d[b + 1]);
            (sl[0], sl[8]) = (s[b], s[b + 1]);
            out.tail_d.extend_from_slice(&dl);
            out.tail_s.extend_from_slice(&sl);
        }
        out
    }
}

#[cfg(target_arch = "x86_64")]
pub mod x86 {
    use std::arch::x86_64::*;

    use super::super::vnni::Quantized;
    use super::{BLOCK_BYTES, Bytes, GROUP, GgmlType};

    /// One block's 16 packed bytes to 32 `f32` values, `d * (q - offset) + m` without a
    /// fused multiply-add (the scalar code's values, bit for bit).
    ///
    /// # Safety
    /// avx512f; `out` holds 32 values.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn decode_block(qs: &[u8; BLOCK_BYTES], d: f32, offset: f32, m: f32, out: &mut [f32]) {
        assert!(out.len() == 32);
        // SAFETY: 16 bytes in `qs`.
        let v = _mm512_cvtepu8_epi32(unsafe { _mm_loadu_si128(qs.as_ptr().cast()) });
        let (d, offset, m) = (_mm512_set1_ps(d), _mm512_set1_ps(offset), _mm512_set1_ps(m));
        let decode = |q: __m512i| _mm512_add_ps(_mm512_mul_ps(d, _mm512_sub_ps(_mm512_cvtepi32_ps(q), offset)), m);
        // SAFETY: 32 values at `out`.
        unsafe {
            _mm512_storeu_ps(out.as_mut_ptr(), decode(_mm512_and_si512(v, _mm512_set1_epi32(0xf))));
            _mm512_storeu_ps(out.as_mut_ptr().add(16), decode(_mm512_srli_epi32::<4>(v)));
        }
    }

    /// `rows[r] · xs[t]` for four rows in the layout of [`super::split_row`] and `T` inputs:
    /// each row's values are unpacked once for all inputs, and each input's sums are formed
    /// in the same order whatever `T`, so the results are those of `T` separate calls.
    ///
    /// # Safety
    /// avx512f, avx512bw, avx512vl, avx512vnni and f16c; every row is one row of the inputs'
    /// length (a multiple of 64) in that layout, and the inputs' [`Bytes`] were made for it.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,f16c")]
    pub unsafe fn dots<const T: usize>(dtype: GgmlType, rows: [&[u8]; 4], xs: [&Quantized; T]) -> [[f32; 4]; T] {
        // SAFETY: as this function's.
        unsafe { if dtype == GgmlType::Q4_1 { dots_of::<T, true>(rows, xs) } else { dots_of::<T, false>(rows, xs) } }
    }

    /// [`dots`] for Q4_1 (`MIN`) or Q4_0 rows.
    ///
    /// # Safety
    /// As [`dots`].
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,f16c")]
    unsafe fn dots_of<const T: usize, const MIN: bool>(rows: [&[u8]; 4], xs: [&Quantized; T]) -> [[f32; 4]; T] {
        let nb = xs[0].d().len();
        let groups = nb / GROUP;
        let values = rows.map(<[u8]>::as_ptr);
        let scales = rows.map(|r| r[nb * BLOCK_BYTES..].as_ptr());
        let bytes: [&Bytes; T] = xs.map(Quantized::bytes);
        let low = _mm512_set1_epi8(0x0f);
        let zero = _mm512_setzero_si512();
        let mut acc = [[_mm512_setzero_ps(); 4]; T];
        for g in 0..groups {
            for r in 0..4 {
                // SAFETY: group `g` of row `r` is inside the row.
                let base = unsafe { values[r].add(GROUP * BLOCK_BYTES * g) };
                let mut w = [zero; 8];
                for c in 0..4 {
                    // SAFETY (all reads below): group `g` of row `r` and of every input.
                    let v = unsafe { _mm512_loadu_si512(base.add(64 * c).cast()) };
                    w[2 * c] = _mm512_and_si512(v, low);
                    w[2 * c + 1] = _mm512_and_si512(_mm512_srli_epi16::<4>(v), low);
                }
                let d = _mm512_cvtph_ps(unsafe { _mm256_loadu_si256(scales[r].add(2 * GROUP * g).cast()) });
                let m = if MIN {
                    _mm512_cvtph_ps(unsafe { _mm256_loadu_si256(scales[r].add(2 * (nb + GROUP * g)).cast()) })
                } else {
                    _mm512_mul_ps(d, _mm512_set1_ps(-8.0))
                };
                for t in 0..T {
                    let (hi, lo) = (bytes[t].hi[512 * g..].as_ptr(), bytes[t].lo[512 * g..].as_ptr());
                    // Four chains of four, so that each waits less on the one before.
                    let (mut ah, mut al) = ([zero; 2], [zero; 2]);
                    for (k, &wk) in w.iter().enumerate() {
                        unsafe {
                            ah[k % 2] = _mm512_dpbusd_epi32(ah[k % 2], wk, _mm512_loadu_si512(hi.add(64 * k).cast()));
                            al[k % 2] = _mm512_dpbusd_epi32(al[k % 2], _mm512_loadu_si512(lo.add(64 * k).cast()), wk);
                        }
                    }
                    let (ah, al) = (_mm512_add_epi32(ah[0], ah[1]), _mm512_add_epi32(al[0], al[1]));
                    let sum = _mm512_add_epi32(_mm512_slli_epi32::<8>(ah), al);
                    let (dx, sx) = unsafe {
                        (
                            _mm512_loadu_ps(xs[t].d().as_ptr().add(GROUP * g)),
                            _mm512_loadu_ps(xs[t].s().as_ptr().add(GROUP * g)),
                        )
                    };
                    acc[t][r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum), _mm512_mul_ps(d, dx), acc[t][r]);
                    acc[t][r] = _mm512_fmadd_ps(m, sx, acc[t][r]);
                }
            }
        }
        // The tail: pairs of blocks, the first in lanes 0-7, the second in 8-15.
        let spread = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
        let full = groups * GROUP;
        for (p, b) in (full..nb).step_by(2).enumerate() {
            for r in 0..4 {
                // SAFETY (all reads below): pair `p` of the tail of row `r` and every input.
                let raw = unsafe { _mm256_loadu_si256(values[r].add(BLOCK_BYTES * b).cast()) };
                // [first, second] -> [first, first, second, second], the high halves of the
                // second and fourth copies shifted down: the pair's 64 values in order.
                let both = _mm512_broadcast_i64x4(raw);
                let v = _mm512_shuffle_i64x2::<0x50>(both, both);
                let w = _mm512_and_si512(_mm512_mask_srli_epi16(v, 0xff00_ff00, v, 4), low);
                // SAFETY: both blocks' scales (and minimums) are inside the row.
                let d = unsafe { two_halves(scales[r].add(2 * b), spread) };
                let m = if MIN {
                    unsafe { two_halves(scales[r].add(2 * (nb + b)), spread) }
                } else {
                    _mm512_mul_ps(d, _mm512_set1_ps(-8.0))
                };
                for t in 0..T {
                    let at = 2 * full * BLOCK_BYTES + 64 * p;
                    let (ah, al, dx, sx) = unsafe {
                        (
                            _mm512_dpbusd_epi32(zero, w, _mm512_loadu_si512(bytes[t].hi.as_ptr().add(at).cast())),
                            _mm512_dpbusd_epi32(zero, _mm512_loadu_si512(bytes[t].lo.as_ptr().add(at).cast()), w),
                            _mm512_loadu_ps(bytes[t].tail_d.as_ptr().add(16 * p)),
                            _mm512_loadu_ps(bytes[t].tail_s.as_ptr().add(16 * p)),
                        )
                    };
                    let sum = _mm512_add_epi32(_mm512_slli_epi32::<8>(ah), al);
                    acc[t][r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum), _mm512_mul_ps(d, dx), acc[t][r]);
                    acc[t][r] = _mm512_fmadd_ps(m, sx, acc[t][r]);
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
