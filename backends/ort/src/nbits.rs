//! GGUF blocks as the inputs of ONNX Runtime's `MatMulNBits` (contrib domain), so that a
//! quantized file's matrices stay quantized in the layer graphs (`--dtype native`).
//!
//! `MatMulNBits` multiplies by a matrix of 4-bit values in blocks of 32 along the input
//! dimension, each block with an `f32` scale and a zero point: `w = scale · (q - zero)`,
//! and with `accuracy_level` 0 it computes in `f32` on the decoded values. Every conversion
//! here is exact, so the graphs compute with the file's values:
//! - Q4_0 (`d · (q - 8)`) is one product with the default zero point 8; only the nibble
//!   order changes (GGUF puts values `j` and `j + 16` in byte `j`, `MatMulNBits` values `2i`
//!   and `2i + 1` in byte `i`).
//! - Q4_1 (`d · q + m`) is one product with zero point 0, and its offsets are added as a
//!   second, small product: `Σ_k w_k x_k = Σ_b d_b Σ_{k∈b} q_k x_k + Σ_b m_b Σ_{k∈b} x_k`,
//!   the input's sums per block times an `[blocks, rows]` matrix of the `m_b`. (A zero
//!   point that is not an integer would be exact too, but ONNX Runtime then decodes the
//!   whole matrix at every call.)
//! - Q8_0 (`d · q`, `q` a signed byte) is two 4-bit products: `q = 16 h + l` with
//!   `h = q >> 4` (-8..7, stored `h + 8` under the default zero point, scale `16 d`) and
//!   `l = q & 15` (zero point 0, scale `d`). `MatMulNBits` has 8-bit weights too, but ONNX
//!   Runtime 1.31 on x86 computes them either with the input quantized to 8 bits (the
//!   default model's logits then move by 0.3) or by decoding the whole matrix at every call
//!   (5x slower for the LM head than the whole decode step). Q5_0 converts to Q8_0 exactly
//!   first.
//!
//! Other formats (the k-quants, f16, bf16) are decoded to `f32` by the caller.

use sieve_backend::HostWeight;
use sieve_backend::quant::{GgmlType, f16_to_f32, q5_0_to_q8_0};

/// Values per block, the only block size used.
pub const BLOCK: usize = 32;

/// Bytes of one block's 4-bit values.
pub const BLOCK_BYTES: usize = BLOCK / 2;

/// `MatMulNBits`' `accuracy_level`: `f32` arithmetic on the decoded blocks (4 would quantize
/// the input to 8 bits per block, as llama.cpp's CPU path does, and measured no faster on
/// a decode step here).
pub const ACCURACY_LEVEL: i64 = 0;

/// One 4-bit `MatMulNBits` product's constant inputs for a `[rows, cols]` matrix.
#[derive(Debug, Clone, PartialEq)]
pub struct Part {
    /// `[rows, blocks, BLOCK_BYTES]`.
    pub data: Vec<u8>,
    /// `[rows * blocks]`.
    pub scales: Vec<f32>,
    /// Packed 4-bit zero points, `[rows * ceil(blocks / 2)]`, when not the default 8.
    pub zero_points: Option<Vec<u8>>,
}

/// A `[rows, cols]` matrix as the sum of 4-bit products (one or two) and, for Q4_1, a
/// product of the input's block sums by the block offsets.
#[derive(Debug, Clone, PartialEq)]
pub struct NBits {
    pub rows: usize,
    pub cols: usize,
    pub parts: Vec<Part>,
    /// Q4_1's block offsets, `[blocks, rows]`.
    pub mins: Option<Vec<f32>>,
}

impl NBits {
    /// Blocks per row.
    pub fn blocks(&self) -> usize {
        self.cols / BLOCK
    }

    /// The matrix decoded to `f32`, `[rows, cols]`, summing the parts as the graph does
    /// (for tests).
    pub fn to_f32(&self) -> Vec<f32> {
        let nb = self.blocks();
        let mut out = vec![0f32; self.rows * self.cols];
        for (r, row) in out.chunks_exact_mut(self.cols).enumerate() {
            for (b, values) in row.chunks_exact_mut(BLOCK).enumerate() {
                let at = r * nb + b;
                for (k, v) in values.iter_mut().enumerate() {
                    let decoded = self.parts.iter().map(|p| {
                        let q = (p.data[at * BLOCK_BYTES + k / 2] >> (4 * (k % 2))) & 0xf;
                        let zero = p
                            .zero_points
                            .as_ref()
                            .map_or(8, |z| (z[r * nb.div_ceil(2) + b / 2] >> (4 * (b % 2))) & 0xf);
                        p.scales[at] * (f32::from(q) - f32::from(zero))
                    });
                    *v = decoded.sum::<f32>() + self.mins.as_ref().map_or(0.0, |m| m[b * self.rows + r]);
                }
            }
        }
        out
    }
}

fn half(b: &[u8], at: usize) -> f32 {
    f16_to_f32(u16::from_le_bytes([b[at], b[at + 1]]))
}

/// 32 4-bit values (`q(j)` for `j` in `0..32`) in `MatMulNBits`' order: values `2i` and
/// `2i + 1` in byte `i`, low first.
fn pack(q: impl Fn(usize) -> u8, out: &mut Vec<u8>) {
    out.extend((0..BLOCK_BYTES).map(|i| (q(2 * i) & 0xf) | (q(2 * i + 1) << 4)));
}

/// A part with room for `rows * blocks` blocks; `zero` packs all-zero zero points.
fn part(rows: usize, nb: usize, zero: bool) -> Part {
    Part {
        data: Vec::with_capacity(rows * nb * BLOCK_BYTES),
        scales: Vec::with_capacity(rows * nb),
        zero_points: zero.then(|| vec![0u8; rows * nb.div_ceil(2)]),
    }
}

/// `w` as `MatMulNBits` products, or `None` when it is not a packed matrix in a format with
/// an exact conversion (Q4_0, Q4_1, Q5_0, Q8_0) or its rows are not whole blocks.
pub fn from_packed(w: &HostWeight) -> Option<NBits> {
    let packed = w.packed.as_ref()?;
    let [rows, cols] = w.shape[..] else { return None };
    if !cols.is_multiple_of(BLOCK) || packed.dtype.block_len() != BLOCK {
        return None;
    }
    let nb = cols / BLOCK;
    let converted;
    let (dtype, bytes) = match packed.dtype {
        GgmlType::Q5_0 => {
            converted = q5_0_to_q8_0(&packed.bytes);
            (GgmlType::Q8_0, &converted[..])
        }
        d @ (GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q8_0) => (d, &packed.bytes[..]),
        _ => return None,
    };
    let blocks = bytes.chunks_exact(dtype.block_bytes());
    let nibble = |qs: &[u8], j: usize| if j < 16 { qs[j] & 0xf } else { qs[j - 16] >> 4 };
    let (parts, mins) = match dtype {
        GgmlType::Q4_0 => {
            let mut p = part(rows, nb, false);
            for block in blocks {
                p.scales.push(half(block, 0));
                pack(|j| nibble(&block[2..18], j), &mut p.data);
            }
            (vec![p], None)
        }
        GgmlType::Q4_1 => {
            let (mut p, mut mins) = (part(rows, nb, true), vec![0f32; nb * rows]);
            for (i, block) in blocks.enumerate() {
                p.scales.push(half(block, 0));
                mins[(i % nb) * rows + i / nb] = half(block, 2);
                pack(|j| nibble(&block[4..20], j), &mut p.data);
            }
            (vec![p], Some(mins))
        }
        _ => {
            // Q8_0: q = 16 h + l.
            let (mut high, mut low) = (part(rows, nb, false), part(rows, nb, true));
            for block in blocks {
                let (d, q) = (half(block, 0), &block[2..34]);
                high.scales.push(16.0 * d);
                pack(|j| ((q[j] as i8 >> 4) + 8) as u8, &mut high.data);
                low.scales.push(d);
                pack(|j| q[j] & 0xf, &mut low.data);
            }
            (vec![high, low], None)
        }
    };
    Some(NBits { rows, cols, parts, mins })
}

#[cfg(test)]
mod tests {
    use super::*;
    use sieve_backend::quant::quantize;

    fn values(n: usize) -> Vec<f32> {
        (0..n).map(|i| ((i * 37 % 101) as f32 - 50.0) / 17.0 + if i % 97 == 0 { 9.0 } else { 0.0 }).collect()
    }

    #[test]
    fn every_exact_format_decodes_to_the_files_values() {
        let (rows, cols) = (5, 96);
        for dtype in [GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q8_0, GgmlType::Q5_0] {
            let bytes = match dtype {
                // Q5_0 has no encoder here: its blocks are made from Q8_0's by hand below.
                GgmlType::Q5_0 => continue,
                d => quantize(d, &values(rows * cols)).unwrap(),
            };
            let w = HostWeight::packed(dtype, bytes, vec![rows, cols]);
            let q = from_packed(&w).unwrap();
            assert_eq!(q.parts.len(), if dtype == GgmlType::Q8_0 { 2 } else { 1 });
            assert!(q.parts.iter().all(|p| p.data.len() == rows * cols / 2));
            assert_eq!(q.to_f32(), w.to_f32(), "{dtype:?}");
        }
    }

    #[test]
    fn q5_0_goes_through_eight_bits_exactly_as_two_products() {
        // One block: d = 0.5, values j - 16 for j = 0..32 (5-bit values 0..31).
        let mut block = vec![0u8; 22];
        block[..2].copy_from_slice(&sieve_backend::quant::f32_to_f16(0.5).to_le_bytes());
        let mut qh = 0u32;
        for j in 0..32u32 {
            let q = j as u8;
            if j < 16 {
                block[6 + j as usize] |= q & 0xf;
            } else {
                block[6 + j as usize - 16] |= (q & 0xf) << 4;
            }
            qh |= u32::from(q >> 4) << j;
        }
        block[2..6].copy_from_slice(&qh.to_le_bytes());
        let w = HostWeight::packed(GgmlType::Q5_0, block, vec![1, 32]);
        let q = from_packed(&w).unwrap();
        assert_eq!(q.parts.len(), 2);
        let want: Vec<f32> = (0..32).map(|j| 0.5 * (j as f32 - 16.0)).collect();
        assert_eq!(q.to_f32(), want);
        assert_eq!(w.to_f32(), want);
    }

    #[test]
    fn other_formats_and_shapes_are_left_to_the_caller() {
        let f16 = HostWeight::packed(GgmlType::F16, vec![0; 2 * 64], vec![2, 32]);
        assert!(from_packed(&f16).is_none());
        assert!(from_packed(&HostWeight::f32(vec![0.0; 64], vec![2, 32])).is_none());
    }
}
