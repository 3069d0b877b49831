//! Weights kept as their file stores them: GGUF's block formats, and 16-bit floats.
//!
//! A [`Packed`] weight is rows of blocks (each row of `cols` values is `cols / block_len`
//! blocks). Every backend can turn one into `f32` with [`dequantize`]; a backend with kernels
//! for a format computes on the blocks directly and never holds the `f32` copy.

/// A storage format of weights (GGUF's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GgmlType {
    /// IEEE half precision.
    F16,
    /// bfloat16.
    BF16,
    /// 32 values: an f16 scale, 4-bit values offset by 8.
    Q4_0,
    /// 32 values: an f16 scale and minimum, 4-bit values.
    Q4_1,
    /// 32 values: an f16 scale, 5-bit values offset by 16.
    Q5_0,
    /// 32 values: an f16 scale and minimum, 5-bit values.
    Q5_1,
    /// 32 values: an f16 scale, 8-bit signed values.
    Q8_0,
    /// 256 values in 8 groups of 32, 6-bit group scales and minimums, 4-bit values.
    Q4K,
    /// 256 values in 8 groups of 32, 6-bit group scales and minimums, 5-bit values.
    Q5K,
    /// 256 values in 16 groups of 16, 8-bit group scales, 6-bit values offset by 32.
    Q6K,
}

impl GgmlType {
    /// Whether this is IEEE half precision or bfloat16.
    pub fn is_half(self) -> bool {
        matches!(self, GgmlType::F16 | GgmlType::BF16)
    }

    /// Every format.
    pub const ALL: [GgmlType; 10] = [
        GgmlType::F16,
        GgmlType::BF16,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
        GgmlType::Q4K,
        GgmlType::Q5K,
        GgmlType::Q6K,
    ];

    /// Values per block.
    pub fn block_len(self) -> usize {
        match self {
            GgmlType::F16 | GgmlType::BF16 => 1,
            GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q5_0 | GgmlType::Q5_1 | GgmlType::Q8_0 => 32,
            GgmlType::Q4K | GgmlType::Q5K | GgmlType::Q6K => 256,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            GgmlType::F16 | GgmlType::BF16 => 2,
            GgmlType::Q4_0 => 18,
            GgmlType::Q4_1 => 20,
            GgmlType::Q5_0 => 22,
            GgmlType::Q5_1 => 24,
            GgmlType::Q8_0 => 34,
            GgmlType::Q4K => 144,
            GgmlType::Q5K => 176,
            GgmlType::Q6K => 210,
        }
    }

    /// Bytes of a row of `cols` values (`cols` a multiple of [`GgmlType::block_len`]).
    pub fn row_bytes(self, cols: usize) -> usize {
        cols / self.block_len() * self.block_bytes()
    }

    /// GGUF's name of the format.
    pub fn name(self) -> &'static str {
        match self {
            GgmlType::F16 => "F16",
            GgmlType::BF16 => "BF16",
            GgmlType::Q4_0 => "Q4_0",
            GgmlType::Q4_1 => "Q4_1",
            GgmlType::Q5_0 => "Q5_0",
            GgmlType::Q5_1 => "Q5_1",
            GgmlType::Q8_0 => "Q8_0",
            GgmlType::Q4K => "Q4_K",
            GgmlType::Q5K => "Q5_K",
            GgmlType::Q6K => "Q6_K",
        }
    }

    /// The format GGUF calls `name`.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.name() == name)
    }
}

/// A weight matrix `[rows, cols]` as rows of blocks.
#[derive(Debug, Clone, PartialEq)]
pub struct Packed {
    /// The format.
    pub dtype: GgmlType,
    /// The blocks, row after row.
    pub bytes: Vec<u8>,
    /// Where the same bytes lie in the model file, when they were read from one unchanged:
    /// a backend that needs a few rows at a time (an embedding table) may read those from
    /// the file rather than hold the matrix.
    pub file: Option<FileRegion>,
}

impl Packed {
    /// Blocks of `dtype` that come from no file (made or converted in memory).
    pub fn new(dtype: GgmlType, bytes: Vec<u8>) -> Self {
        Self { dtype, bytes, file: None }
    }
}

/// A run of bytes in a file: `path`, from byte `offset`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRegion {
    /// The file.
    pub path: std::path::PathBuf,
    /// The first byte's offset.
    pub offset: u64,
}

/// An f16 value as `f32`.
#[inline]
pub fn f16_to_f32(bits: u16) -> f32 {
    let sign = u32::from(bits >> 15) << 31;
    let exp = u32::from((bits >> 10) & 0x1f);
    let man = u32::from(bits & 0x3ff);
    let v = match (exp, man) {
        (0, 0) => sign,
        // Subnormal: the value is man * 2^-24.
        (0, _) => {
            let v = man as f32 * f32::from_bits(0x3380_0000);
            return if sign != 0 { -v } else { v };
        }
        (31, 0) => sign | 0x7f80_0000,
        (31, _) => sign | 0x7fc0_0000 | (man << 13),
        _ => sign | ((exp + 112) << 23) | (man << 13),
    };
    f32::from_bits(v)
}

/// An `f32` as f16 (round to nearest even; overflow to infinity).
pub fn f32_to_f16(x: f32) -> u16 {
    let bits = x.to_bits();
    let sign = ((bits >> 16) & 0x8000) as u16;
    let exp = ((bits >> 23) & 0xff) as i32;
    let man = bits & 0x7f_ffff;
    if exp == 0xff {
        return sign | 0x7c00 | if man != 0 { 0x200 } else { 0 };
    }
    let e = exp - 127 + 15;
    if e >= 31 {
        return sign | 0x7c00;
    }
    if e <= 0 {
        if e < -10 {
            return sign;
        }
        let m = man | 0x80_0000;
        let shift = (14 - e) as u32;
        let half = 1u32 << (shift - 1);
        let rounded = (m + half - 1 + ((m >> shift) & 1)) >> shift;
        return sign | rounded as u16;
    }
    let rounded = man + 0xfff + ((man >> 13) & 1);
    let (e, rounded) = if rounded & 0x80_0000 != 0 { (e + 1, 0) } else { (e, rounded) };
    if e >= 31 {
        return sign | 0x7c00;
    }
    sign | ((e as u16) << 10) | (rounded >> 13) as u16
}

/// A bfloat16 value as `f32`.
#[inline]
pub fn bf16_to_f32(bits: u16) -> f32 {
    f32::from_bits(u32::from(bits) << 16)
}

/// An `f32` as bfloat16 (round to nearest even).
pub fn f32_to_bf16(x: f32) -> u16 {
    let bits = x.to_bits();
    if x.is_nan() {
        return ((bits >> 16) | 0x40) as u16;
    }
    ((bits + 0x7fff + ((bits >> 16) & 1)) >> 16) as u16
}

fn half(b: &[u8], at: usize) -> f32 {
    f16_to_f32(u16::from_le_bytes([b[at], b[at + 1]]))
}

/// The two 6-bit values (scale, minimum) of group `j` of a Q4_K/Q5_K block's 12 bytes.
fn scale_min(j: usize, q: &[u8]) -> (f32, f32) {
    if j < 4 {
        (f32::from(q[j] & 63), f32::from(q[j + 4] & 63))
    } else {
        (f32::from((q[j + 4] & 0xf) | ((q[j - 4] >> 6) << 4)), f32::from((q[j + 4] >> 4) | ((q[j] >> 6) << 4)))
    }
}

/// Decodes one block of `dtype` into `out` (`block_len` values).
pub fn dequantize_block(dtype: GgmlType, b: &[u8], out: &mut [f32]) {
    match dtype {
        GgmlType::F16 => out[0] = half(b, 0),
        GgmlType::BF16 => out[0] = bf16_to_f32(u16::from_le_bytes([b[0], b[1]])),
        GgmlType::Q4_0 => {
            let d = half(b, 0);
            for j in 0..16 {
                out[j] = d * (f32::from(b[2 + j] & 0xf) - 8.0);
                out[j + 16] = d * (f32::from(b[2 + j] >> 4) - 8.0);
            }
        }
        GgmlType::Q4_1 => {
            let (d, m) = (half(b, 0), half(b, 2));
            for j in 0..16 {
                out[j] = d * f32::from(b[4 + j] & 0xf) + m;
                out[j + 16] = d * f32::from(b[4 + j] >> 4) + m;
            }
        }
        GgmlType::Q5_0 | GgmlType::Q5_1 => {
            let (d, m, at) = if dtype == GgmlType::Q5_0 { (half(b, 0), -16.0, 2) } else { (half(b, 0), 0.0, 4) };
            let min = if dtype == GgmlType::Q5_1 { half(b, 2) } else { 0.0 };
            let qh = u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
            for j in 0..16 {
                let lo = u32::from(b[at + 4 + j] & 0xf) | (((qh >> j) & 1) << 4);
                let hi = u32::from(b[at + 4 + j] >> 4) | (((qh >> (j + 16)) & 1) << 4);
                out[j] = d * (lo as f32 + m) + min;
                out[j + 16] = d * (hi as f32 + m) + min;
            }
        }
        GgmlType::Q8_0 => {
            let d = half(b, 0);
            for j in 0..32 {
                out[j] = d * f32::from(b[2 + j] as i8);
            }
        }
        GgmlType::Q4K | GgmlType::Q5K => {
            let (d, dmin) = (half(b, 0), half(b, 2));
            let scales = &b[4..16];
            let (qh, qs) = if dtype == GgmlType::Q5K { (&b[16..48], &b[48..176]) } else { (&b[0..0], &b[16..144]) };
            for group in 0..4 {
                let (s1, m1) = scale_min(2 * group, scales);
                let (s2, m2) = scale_min(2 * group + 1, scales);
                let q = &qs[group * 32..group * 32 + 32];
                for l in 0..32 {
                    let (mut lo, mut hi) = (f32::from(q[l] & 0xf), f32::from(q[l] >> 4));
                    if dtype == GgmlType::Q5K {
                        lo += f32::from(((qh[l] >> (2 * group)) & 1) << 4);
                        hi += f32::from(((qh[l] >> (2 * group + 1)) & 1) << 4);
                    }
                    out[group * 64 + l] = d * s1 * lo - dmin * m1;
                    out[group * 64 + 32 + l] = d * s2 * hi - dmin * m2;
                }
            }
        }
        GgmlType::Q6K => {
            let (ql, qh, sc) = (&b[0..128], &b[128..192], &b[192..208]);
            let d = half(b, 208);
            for half_block in 0..2 {
                let (ql, qh, sc) = (&ql[half_block * 64..], &qh[half_block * 32..], &sc[half_block * 8..]);
                let y = &mut out[half_block * 128..];
                for l in 0..32 {
                    let is = l / 16;
                    let q1 = i32::from((ql[l] & 0xf) | ((qh[l] & 3) << 4)) - 32;
                    let q2 = i32::from((ql[l + 32] & 0xf) | (((qh[l] >> 2) & 3) << 4)) - 32;
                    let q3 = i32::from((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
                    let q4 = i32::from((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
                    let s = |k: usize| d * f32::from(sc[is + k] as i8);
                    y[l] = s(0) * q1 as f32;
                    y[l + 32] = s(2) * q2 as f32;
                    y[l + 64] = s(4) * q3 as f32;
                    y[l + 96] = s(6) * q4 as f32;
                }
            }
        }
    }
}

/// Q5_0 blocks as Q8_0 blocks of the same values: both hold 32 values and one f16 scale, and
/// a 5-bit value minus 16 fits a byte, so the conversion is exact. Kernels with integer
/// products for Q8_0 then serve Q5_0 weights (at 34 bytes a block instead of 22).
pub fn q5_0_to_q8_0(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() / 22 * 34);
    for b in bytes.chunks_exact(22) {
        out.extend_from_slice(&b[..2]);
        let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
        let value = |j: usize| {
            let nibble = if j < 16 { b[6 + j] & 0xf } else { b[6 + j - 16] >> 4 };
            let q = u32::from(nibble) | (((qh >> j) & 1) << 4);
            (q as i32 - 16) as i8 as u8
        };
        out.extend((0..32).map(value));
    }
    out
}

/// Decodes consecutive blocks of `dtype` in `bytes` into `out` (as many values as the
/// blocks hold).
pub fn dequantize(dtype: GgmlType, bytes: &[u8], out: &mut [f32]) {
    let (len, size) = (dtype.block_len(), dtype.block_bytes());
    debug_assert_eq!(bytes.len() / size * len, out.len());
    for (b, o) in bytes.chunks_exact(size).zip(out.chunks_exact_mut(len)) {
        dequantize_block(dtype, b, o);
    }
}

/// Encodes `values` (a multiple of 32) as Q8_0, Q4_0 or Q4_1 blocks, or as F16/BF16: the
/// formats that tests and synthetic models need (files bring their own blocks).
pub fn quantize(dtype: GgmlType, values: &[f32]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(values.len() / dtype.block_len() * dtype.block_bytes());
    match dtype {
        GgmlType::F16 => values.iter().for_each(|&v| out.extend(f32_to_f16(v).to_le_bytes())),
        GgmlType::BF16 => values.iter().for_each(|&v| out.extend(f32_to_bf16(v).to_le_bytes())),
        GgmlType::Q8_0 => {
            for b in values.chunks_exact(32) {
                let amax = b.iter().fold(0f32, |m, v| m.max(v.abs()));
                let d = amax / 127.0;
                let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
                out.extend(f32_to_f16(d).to_le_bytes());
                out.extend(b.iter().map(|v| (v * inv).round() as i8 as u8));
            }
        }
        GgmlType::Q4_0 => {
            for b in values.chunks_exact(32) {
                let max = b.iter().copied().fold(0f32, |m, v| if v.abs() > m.abs() { v } else { m });
                let d = max / -8.0;
                let inv = if d != 0.0 { 1.0 / d } else { 0.0 };
                out.extend(f32_to_f16(d).to_le_bytes());
                let q = |v: f32| ((v * inv + 8.5) as i32).clamp(0, 15) as u8;
                out.extend((0..16).map(|j| q(b[j]) | (q(b[j + 16]) << 4)));
            }
        }
        GgmlType::Q4_1 => {
            for b in values.chunks_exact(32) {
                let (min, max) = b.iter().fold((f32::MAX, f32::MIN), |(lo, hi), &v| (lo.min(v), hi.max(v)));
                let d = (max - min) / 15.0;
                let inv = if d != 0.0 { 1.0 / d } else { 0.0 };
                out.extend(f32_to_f16(d).to_le_bytes());
                out.extend(f32_to_f16(min).to_le_bytes());
                let q = |v: f32| (((v - min) * inv + 0.5) as i32).clamp(0, 15) as u8;
                out.extend((0..16).map(|j| q(b[j]) | (q(b[j + 16]) << 4)));
            }
        }
        _ => return None,
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_floats_round_trip() {
        for x in [0.0f32, -0.0, 1.0, -2.5, 65504.0, 6.1e-5, 5.96e-8, 0.333_333_34, 1e-9, 1e6] {
            let h = f16_to_f32(f32_to_f16(x));
            let want = if x.abs() > 65504.0 { f32::INFINITY.copysign(x) } else { x };
            assert!(h == want || (h - want).abs() <= want.abs() * 1e-3 + 6e-8, "{x} -> {h}");
            assert!((bf16_to_f32(f32_to_bf16(x)) - x).abs() <= x.abs() * 4e-3, "bf16 {x}");
        }
        for bits in [0x0001u16, 0x03ff, 0x0400, 0x3c00, 0x7bff, 0x8001, 0xfbff] {
            assert_eq!(f32_to_f16(f16_to_f32(bits)), bits, "{bits:#x}");
        }
    }

    #[test]
    fn q5_0_blocks_become_q8_0_blocks_of_the_same_values() {
        // Every byte pattern of qh and qs, with a few scales.
        let mut bytes = Vec::new();
        for i in 0..64u32 {
            bytes.extend_from_slice(&f32_to_f16(0.01 + i as f32 * 0.003).to_le_bytes());
            bytes.extend_from_slice(&(i.wrapping_mul(0x9e37_79b9)).to_le_bytes());
            bytes.extend((0..16).map(|j| (i as u8).wrapping_mul(31).wrapping_add(j * 17)));
        }
        let q8 = q5_0_to_q8_0(&bytes);
        assert_eq!(q8.len(), 64 * 34);
        let (mut a, mut b) = (vec![0f32; 64 * 32], vec![0f32; 64 * 32]);
        dequantize(GgmlType::Q5_0, &bytes, &mut a);
        dequantize(GgmlType::Q8_0, &q8, &mut b);
        assert_eq!(a, b);
    }

    #[test]
    fn quantized_blocks_decode_near_their_values() {
        let values: Vec<f32> = (0..256).map(|i| ((i * 37 % 101) as f32 - 50.0) / 17.0).collect();
        for (dtype, tol) in
            [(GgmlType::Q8_0, 0.03), (GgmlType::Q4_0, 0.5), (GgmlType::Q4_1, 0.25), (GgmlType::F16, 0.002)]
        {
            let bytes = quantize(dtype, &values).unwrap();
            assert_eq!(bytes.len(), dtype.row_bytes(256));
            let mut out = vec![0f32; 256];
            dequantize(dtype, &bytes, &mut out);
            for (a, b) in out.iter().zip(&values) {
                assert!((a - b).abs() <= tol, "{dtype:?}: {a} vs {b}");
            }
        }
    }
}
