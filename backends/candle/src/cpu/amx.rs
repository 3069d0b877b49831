//! The integer kernels' panels ([`super::intdot`]) times several inputs at once with AMX
//! tiles (`tdpbssd`/`tdpbusd`): a decode step of several sequences.
//!
//! A panel's block is already half a tile: its 16 rows' values, four columns per 32-bit
//! lane, are 8 rows of the `K x N` operand of a tile product (8-bit weights as stored,
//! 4-bit ones split into their two halves). Two consecutive blocks make one `K = 64`
//! operand. The inputs' high and low bytes are the `M x K` operands, one row per input and
//! block: the rows of the first block hold its 32 bytes and zeros, those of the second
//! zeros and its bytes. So one product gives, for up to 8 inputs, each input's, row's and
//! block's integer sum, `Σ w·h` (signed by signed), and a second `Σ w·l` (unsigned by
//! signed). Those are the integers the VNNI kernel forms, and each block is finished with
//! the same `f32` operations in the same order, so every input gets, bit for bit, what it
//! gets alone.
//!
//! Linux hands out the tiles' state on request ([`available`] asks once per process), and
//! each thread loads a tile configuration before its first product ([`Tiles`]).

#[cfg(target_arch = "x86_64")]
use sieve_backend::quant::GgmlType;

#[cfg(target_arch = "x86_64")]
use super::intdot::PANEL;
#[cfg(target_arch = "x86_64")]
use super::vnni::{self, Quantized};

/// The most inputs of one tile product: two blocks' rows each.
pub const GROUP: usize = 8;

/// Whether this CPU and kernel run the tile kernels: AMX-INT8 and the VNNI kernels' own
/// instructions, and Linux granted the process the tiles' state. Detected once; set
/// `SIEVE_NO_AMX` to use the VNNI kernels for every batch.
pub fn available() -> bool {
    use std::sync::OnceLock;
    static AMX: OnceLock<bool> = OnceLock::new();
    *AMX.get_or_init(|| {
        #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
        {
            // CPUID leaf 7: EDX bit 24 AMX-TILE, bit 25 AMX-INT8.
            let edx = std::arch::x86_64::__cpuid_count(7, 0).edx;
            let cpu = edx & (1 << 24) != 0 && edx & (1 << 25) != 0;
            // ARCH_REQ_XCOMP_PERM for XFEATURE_XTILEDATA: 0 once granted.
            const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
            const XFEATURE_XTILEDATA: libc::c_long = 18;
            cpu && vnni::vnni()
                && std::env::var_os("SIEVE_NO_AMX").is_none()
                // SAFETY: a request for a permission; it touches no memory of ours.
                && unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) } == 0
        }
        #[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
        false
    })
}

/// Up to [`GROUP`] inputs as tile rows: per pair of blocks, 16 rows of 64 bytes for the
/// high bytes and 16 for the low (input `t`'s first block in row `t`, its second in row
/// `m + t`, zeros elsewhere).
#[cfg(target_arch = "x86_64")]
pub struct Batch<'a> {
    inputs: &'a [Quantized],
    hi: Vec<i8>,
    lo: Vec<u8>,
    blocks: usize,
}

#[cfg(target_arch = "x86_64")]
impl<'a> Batch<'a> {
    /// `inputs` (1 to [`GROUP`], of one length) as tile rows.
    ///
    /// # Panics
    /// On more than [`GROUP`] inputs or inputs of different lengths.
    pub fn new(inputs: &'a [Quantized]) -> Self {
        let m = inputs.len();
        assert!(m <= GROUP, "{m} inputs: a tile product takes {GROUP}");
        let blocks = inputs.first().map_or(0, |x| x.d().len());
        assert!(inputs.iter().all(|x| x.d().len() == blocks), "inputs of different lengths");
        let pairs = blocks.div_ceil(2);
        let (mut hi, mut lo) = (vec![0i8; pairs * 1024], vec![0u8; pairs * 1024]);
        for (t, x) in inputs.iter().enumerate() {
            for b in 0..blocks {
                // Pair `b / 2`, row `t` (first block) or `m + t` (second), half `b % 2`.
                let at = 1024 * (b / 2) + 64 * (t + m * (b % 2)) + 32 * (b % 2);
                hi[at..at + 32].copy_from_slice(&x.bytes().hi()[32 * b..32 * b + 32]);
                lo[at..at + 32].copy_from_slice(&x.bytes().lo()[32 * b..32 * b + 32]);
            }
        }
        Self { inputs, hi, lo, blocks }
    }

    /// The number of inputs.
    pub fn len(&self) -> usize {
        self.inputs.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.inputs.is_empty()
    }
}

/// A thread's tiles configured for `m` inputs, released when dropped. Tile state is per
/// thread: make one per task, on the thread that multiplies.
#[cfg(target_arch = "x86_64")]
pub struct Tiles {
    m: usize,
}

/// The 64-byte tile configuration `ldtilecfg` reads.
#[cfg(target_arch = "x86_64")]
#[repr(C, align(64))]
struct Config([u8; 64]);

#[cfg(target_arch = "x86_64")]
impl Tiles {
    /// Tiles 0 and 1 hold a panel's sums (`2m` rows of 16 `i32`), 2 and 3 the inputs' high
    /// and low bytes (`2m` rows of 64), 4 the panel's pair of blocks (16 rows of 64 bytes);
    /// 5, 6 and 7 the same as 0, 1 and 4 for a second panel.
    ///
    /// # Panics
    /// If [`available`] is false, or `m` is not `1..=GROUP`.
    pub fn new(m: usize) -> Self {
        assert!(available(), "no AMX tiles on this CPU");
        assert!((1..=GROUP).contains(&m), "{m} inputs: a tile product takes 1 to {GROUP}");
        let mut c = Config([0; 64]);
        c.0[0] = 1; // palette 1
        for t in 0..8 {
            c.0[16 + 2 * t..18 + 2 * t].copy_from_slice(&64u16.to_le_bytes());
            c.0[48 + t] = if t == 4 || t == 7 { 16 } else { 2 * m as u8 };
        }
        // SAFETY: `available` found AMX-TILE and the process holds the tiles' state; the
        // configuration is 64 readable bytes.
        unsafe { std::arch::asm!("ldtilecfg [{}]", in(reg) c.0.as_ptr(), options(nostack, readonly)) };
        Self { m }
    }
}

#[cfg(target_arch = "x86_64")]
impl Drop for Tiles {
    fn drop(&mut self) {
        // SAFETY: this thread configured its tiles in `new`; releasing them returns the
        // state to its initial one.
        unsafe { std::arch::asm!("tilerelease", options(nostack, nomem)) };
    }
}

/// One or two panels' 16 rows (from [`vnni::split`]) times every input of `batch`:
/// `out[p][t]` gets what [`vnni::panel_dot`] gives for panel `p` and input `t`, bit for
/// bit. Two panels' products interleave, so each waits less on its own.
///
/// # Panics
/// If `tiles` was made for another number of inputs, the inputs have no integer kernel for
/// `dtype`, or a panel is not one panel of their length.
#[cfg(target_arch = "x86_64")]
pub fn panel_dots<const P: usize>(
    tiles: &Tiles,
    dtype: GgmlType,
    panels: [&[u8]; P],
    batch: &Batch,
    out: [&mut [[f32; PANEL]]; P],
) {
    let (m, cols) = (batch.len(), 32 * batch.blocks);
    assert!(P == 1 || P == 2, "one or two panels");
    assert!(tiles.m == m && out.iter().all(|o| o.len() == m), "tiles for {} inputs, {m} given", tiles.m);
    assert!(vnni::supported(dtype, PANEL, cols), "no integer kernel for {dtype:?} rows of {cols}");
    assert!(panels.iter().all(|p| p.len() == PANEL * dtype.row_bytes(cols)), "not panels of {cols} columns");
    // SAFETY: `Tiles::new` configured this thread's tiles for `m` inputs and found AMX;
    // `supported` detected the VNNI kernels' features; the panels and inputs have the
    // lengths asserted above.
    unsafe {
        match dtype {
            GgmlType::Q4_1 => x86::panels::<P, 1>(panels, batch, out),
            GgmlType::Q8_0 => x86::panels::<P, 8>(panels, batch, out),
            _ => x86::panels::<P, 0>(panels, batch, out),
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::asm;
    use std::arch::x86_64::*;

    use super::super::intdot::x86::{finish_block, kind_dtype, nibbles, unit_scales};
    use super::super::intdot::{PANEL, unit_bytes};
    use super::Batch;

    /// 64-byte aligned scratch for tiles stored and loaded.
    #[repr(C, align(64))]
    struct Aligned<T>(T);

    /// A unit's block of weights as 8 rows of 64 bytes (values `4j..4j + 4` of each of the
    /// 16 rows in row `j`) into `dst`: as stored for 8 bits, the two halves of the 4-bit
    /// values otherwise; zeros for a block past the row's end (`unit` null).
    ///
    /// # Safety
    /// avx512f and avx512bw; `unit` is null or one unit of a panel; `dst` has 512 bytes.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw")]
    unsafe fn block_weights<const KIND: u8>(unit: *const u8, dst: *mut u8) {
        // SAFETY (all below): 8 x 64 bytes at `dst`, the unit's value bytes at `unit`.
        unsafe {
            if unit.is_null() {
                for j in 0..8 {
                    _mm512_store_si512(dst.add(64 * j).cast(), _mm512_setzero_si512());
                }
            } else if KIND == 8 {
                for j in 0..8 {
                    _mm512_store_si512(dst.add(64 * j).cast(), _mm512_loadu_si512(unit.add(64 * j).cast()));
                }
            } else {
                for (j, w) in nibbles(unit).into_iter().enumerate() {
                    _mm512_store_si512(dst.add(64 * j).cast(), w);
                }
            }
        }
    }

    /// Finishes block `b` of a unit for every input: the integer sums in rows `first..` of
    /// `sums[0]` (`Σ w·h`) and `sums[1]` (`Σ w·l`) scaled into `acc` as the VNNI kernel
    /// does ([`finish_block`]).
    ///
    /// # Safety
    /// avx512f, avx512bw and f16c; `unit` is one unit of a panel; the sums hold a row per
    /// input from `first`.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,f16c")]
    unsafe fn finish<const KIND: u8>(
        unit: *const u8,
        b: usize,
        batch: &Batch,
        sums: [*const i32; 2],
        first: usize,
        acc: &mut [__m512; 8],
    ) {
        // SAFETY: `unit` is one unit of a panel.
        let scales = unsafe { unit_scales::<KIND>(unit) };
        for (t, acc) in acc.iter_mut().enumerate().take(batch.len()) {
            // SAFETY: row `first + t` of each sum tile; block `b` of input `t`.
            unsafe {
                let h = _mm512_load_si512(sums[0].add(PANEL * (first + t)).cast());
                let l = _mm512_load_si512(sums[1].add(PANEL * (first + t)).cast());
                *acc = finish_block::<KIND>(*acc, (h, l), scales, &batch.inputs[t], b);
            }
        }
    }

    /// [`super::panel_dots`] for Q4_0 (`KIND` 0), Q4_1 (1) or Q8_0 (8) rows.
    ///
    /// # Safety
    /// As [`super::panel_dots`]'s checks.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,f16c")]
    pub unsafe fn panels<const P: usize, const KIND: u8>(
        panels: [&[u8]; P],
        batch: &Batch,
        out: [&mut [[f32; PANEL]]; P],
    ) {
        let ub = unit_bytes(kind_dtype(KIND));
        let (m, nb) = (batch.len(), batch.blocks);
        let mut acc = [[_mm512_setzero_ps(); 8]; P];
        let mut weights = [Aligned([0u8; 1024]), Aligned([0u8; 1024])];
        let mut sums = [(); 4].map(|()| Aligned([0i32; PANEL * PANEL]));
        for pair in 0..nb.div_ceil(2) {
            let (b0, b1) = (2 * pair, 2 * pair + 1);
            // SAFETY (all below): units `b0` and (if inside the row) `b1` of every panel,
            // pair `pair` of the inputs' tile rows.
            let unit =
                |p: usize, b: usize| if b < nb { unsafe { panels[p].as_ptr().add(ub * b) } } else { std::ptr::null() };
            for (p, w) in weights.iter_mut().enumerate().take(P) {
                unsafe {
                    block_weights::<KIND>(unit(p, b0), w.0.as_mut_ptr());
                    block_weights::<KIND>(unit(p, b1), w.0.as_mut_ptr().add(512));
                }
            }
            let (hi, lo) = unsafe { (batch.hi.as_ptr().add(1024 * pair), batch.lo.as_ptr().add(1024 * pair)) };
            let s = sums.each_mut().map(|s| s.0.as_mut_ptr());
            // SAFETY: tiles configured as `Tiles::new` says for `m` inputs; the inputs'
            // rows and the weights are 16 rows of 64 bytes; each sum tile is stored into
            // 16 x 16 `i32`.
            unsafe {
                if P == 2 {
                    asm!(
                        "tilezero tmm0",
                        "tilezero tmm1",
                        "tilezero tmm5",
                        "tilezero tmm6",
                        "tileloadd tmm2, [{hi} + {row} * 1]",
                        "tileloadd tmm3, [{lo} + {row} * 1]",
                        "tileloadd tmm4, [{w0} + {row} * 1]",
                        "tileloadd tmm7, [{w1} + {row} * 1]",
                        "tdpbssd tmm0, tmm2, tmm4",
                        "tdpbusd tmm1, tmm3, tmm4",
                        "tdpbssd tmm5, tmm2, tmm7",
                        "tdpbusd tmm6, tmm3, tmm7",
                        "tilestored [{s0} + {row} * 1], tmm0",
                        "tilestored [{s1} + {row} * 1], tmm1",
                        "tilestored [{s2} + {row} * 1], tmm5",
                        "tilestored [{s3} + {row} * 1], tmm6",
                        hi = in(reg) hi,
                        lo = in(reg) lo,
                        w0 = in(reg) weights[0].0.as_ptr(),
                        w1 = in(reg) weights[1].0.as_ptr(),
                        row = in(reg) 64usize,
                        s0 = in(reg) s[0],
                        s1 = in(reg) s[1],
                        s2 = in(reg) s[2],
                        s3 = in(reg) s[3],
                        options(nostack),
                    );
                } else {
                    asm!(
                        "tilezero tmm0",
                        "tilezero tmm1",
                        "tileloadd tmm2, [{hi} + {row} * 1]",
                        "tileloadd tmm3, [{lo} + {row} * 1]",
                        "tileloadd tmm4, [{w0} + {row} * 1]",
                        "tdpbssd tmm0, tmm2, tmm4",
                        "tdpbusd tmm1, tmm3, tmm4",
                        "tilestored [{s0} + {row} * 1], tmm0",
                        "tilestored [{s1} + {row} * 1], tmm1",
                        hi = in(reg) hi,
                        lo = in(reg) lo,
                        w0 = in(reg) weights[0].0.as_ptr(),
                        row = in(reg) 64usize,
                        s0 = in(reg) s[0],
                        s1 = in(reg) s[1],
                        options(nostack),
                    );
                }
                for (p, acc) in acc.iter_mut().enumerate() {
                    let tile = [s[2 * p].cast_const(), s[2 * p + 1].cast_const()];
                    finish::<KIND>(unit(p, b0), b0, batch, tile, 0, acc);
                    if b1 < nb {
                        finish::<KIND>(unit(p, b1), b1, batch, tile, m, acc);
                    }
                }
            }
        }
        for (out, acc) in out.into_iter().zip(&acc) {
            for (o, acc) in out.iter_mut().zip(acc) {
                // SAFETY: 16 values at `o`.
                unsafe { _mm512_storeu_ps(o.as_mut_ptr(), *acc) };
            }
        }
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use sieve_backend::quant::quantize;

    use super::*;

    /// Every batch size from 1 to 8, one panel or two, gives bit for bit the VNNI kernel's
    /// values for each input alone, in each format, at lengths of one block (half a pair),
    /// an odd number and an even number of blocks.
    #[test]
    fn tiles_equal_the_vnni_kernel_bit_for_bit() {
        if !available() {
            eprintln!("skipped: no AMX tiles on this CPU");
            return;
        }
        for dtype in [GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q8_0] {
            for cols in [32, 96, 576, 1536] {
                let panel = |seed: usize| {
                    let values: Vec<f32> =
                        (0..PANEL * cols).map(|i| ((i * 7 + i / cols * 31 + seed) % 23) as f32 / 5.0 - 2.1).collect();
                    vnni::split(dtype, cols, &quantize(dtype, &values).unwrap())
                };
                let panels = [panel(0), panel(5)];
                let inputs: Vec<Quantized> = (0..GROUP)
                    .map(|t| {
                        let x: Vec<f32> =
                            (0..cols).map(|i| ((i * (29 + t) % 17) as f32 - 8.0) / (3.0 + t as f32)).collect();
                        Quantized::new(&x)
                    })
                    .collect();
                for m in 1..=GROUP {
                    let batch = Batch::new(&inputs[..m]);
                    let tiles = Tiles::new(m);
                    let mut one = vec![[0f32; PANEL]; m];
                    panel_dots(&tiles, dtype, [&panels[0]], &batch, [&mut one]);
                    let (mut first, mut second) = (vec![[0f32; PANEL]; m], vec![[0f32; PANEL]; m]);
                    panel_dots(&tiles, dtype, [&panels[0], &panels[1]], &batch, [&mut first, &mut second]);
                    for t in 0..m {
                        for (got, p) in [(&one[t], 0), (&first[t], 0), (&second[t], 1)] {
                            let alone = vnni::panel_dot(dtype, &panels[p], &inputs[t]);
                            assert_eq!(
                                got.map(f32::to_bits),
                                alone.map(f32::to_bits),
                                "{dtype:?} {cols}: {m} inputs, input {t}, panel {p}"
                            );
                        }
                    }
                }
            }
        }
    }
}
