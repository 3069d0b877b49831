//! Dot products with the widest SIMD the CPU has, chosen at run time (AVX-512, else AVX2
//! with FMA, else plain Rust), never at build time: one binary runs on every x86-64.
//!
//! The kernels take four rows at a time against one vector, so that each load of the
//! vector serves four rows; rows are read once, in order, which is what a memory-bound
//! matrix–vector product needs.

/// Which instruction set the kernels use on this CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    /// 16 lanes of f32.
    Avx512,
    /// 8 lanes of f32 with fused multiply-add.
    Avx2,
    /// Plain Rust (the compiler may still vectorise).
    Scalar,
}

/// The instruction set of this CPU, detected once.
pub fn isa() -> Isa {
    use std::sync::OnceLock;
    static ISA: OnceLock<Isa> = OnceLock::new();
    *ISA.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            if std::env::var_os("SIEVE_NO_AVX512").is_none() && is_x86_feature_detected!("avx512f") {
                return Isa::Avx512;
            }
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                return Isa::Avx2;
            }
        }
        Isa::Scalar
    })
}

/// `out[r] = rows[r] · x` for four rows of `x.len()` values each.
#[inline]
pub fn dot4(rows: [&[f32]; 4], x: &[f32]) -> [f32; 4] {
    debug_assert!(rows.iter().all(|r| r.len() == x.len()));
    match isa() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `isa()` returned Avx512 only after detecting avx512f on this CPU, and every
        // row has `x.len()` values (checked by the callers, asserted above in debug builds).
        Isa::Avx512 => unsafe { x86::dot4_avx512(rows, x) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above, for avx2 and fma.
        Isa::Avx2 => unsafe { x86::dot4_avx2(rows, x) },
        _ => rows.map(|r| dot_scalar(r, x)),
    }
}

/// `a · b`.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    match isa() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: avx512f was detected; both slices have the same length.
        Isa::Avx512 => unsafe { x86::dot4_avx512([a, a, a, a], b)[0] },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: avx2 and fma were detected; both slices have the same length.
        Isa::Avx2 => unsafe { x86::dot4_avx2([a, a, a, a], b)[0] },
        _ => dot_scalar(a, b),
    }
}

/// `y += a * x`.
#[inline]
pub fn axpy(a: f32, x: &[f32], y: &mut [f32]) {
    assert_eq!(x.len(), y.len(), "axpy: lengths differ");
    match isa() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: avx512f was detected; both slices have the same length (asserted).
        Isa::Avx512 => unsafe { x86::axpy_avx512(a, x, y) },
        _ => {
            for (y, &x) in y.iter_mut().zip(x) {
                *y += a * x;
            }
        }
    }
}

/// `out += Σ_j p[j] · rows[j]` for the rows of `rows` (`p.len()` rows of `out.len()`
/// values), each row added as [`axpy`] would add it, in order: the same values as a loop of
/// `axpy`, with `out` held in registers instead of read and written for every row.
pub fn weighted_sum(p: &[f32], rows: &[f32], out: &mut [f32]) {
    let w = out.len();
    assert_eq!(rows.len(), p.len() * w, "weighted_sum: {} values are not {} rows of {w}", rows.len(), p.len());
    match isa() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: avx512f was detected; `rows` holds `p.len()` rows of `out.len()` (asserted).
        Isa::Avx512 => unsafe { x86::weighted_sum_avx512(p, rows, out) },
        _ => {
            for (&a, row) in p.iter().zip(rows.chunks_exact(w.max(1))) {
                axpy(a, row, out);
            }
        }
    }
}

/// `out[j] = rows[j] · x` for consecutive rows of `x.len()` values (a head's attention
/// scores against a run of its cached keys). With AVX-512 and rows a whole number of
/// 16-value registers, sixteen rows at a time: each row's products summed in a register,
/// and the sixteen registers summed across their lanes together into one register of
/// sixteen results (a transpose by shuffles), instead of one horizontal sum per row.
pub fn row_dots(rows: &[f32], x: &[f32], out: &mut [f32]) {
    let w = x.len();
    assert_eq!(rows.len(), out.len() * w, "row_dots: {} values are not {} rows of {w}", rows.len(), out.len());
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if isa() == Isa::Avx512 && w > 0 && w.is_multiple_of(16) {
        done = out.len() / 16 * 16;
        // SAFETY: avx512f was detected; `rows` holds `out.len()` rows of `w` (asserted),
        // a whole number of registers each.
        unsafe { x86::row_dots16_avx512(&rows[..done * w], x, &mut out[..done]) };
    }
    let row = |j: usize| &rows[j * w..(j + 1) * w];
    let mut quads = out[done..].chunks_exact_mut(4);
    let mut j = done;
    for four in quads.by_ref() {
        four.copy_from_slice(&dot4([row(j), row(j + 1), row(j + 2), row(j + 3)], x));
        j += 4;
    }
    for v in quads.into_remainder() {
        *v = dot(row(j), x);
        j += 1;
    }
}

/// [`weighted_sum`] for several heads over the same rows: `outs[h] += Σ_j ps[h][j] ·
/// rows[j]`, each row read once for up to four heads. Each head gets the values
/// [`weighted_sum`] would give it, bit for bit.
pub fn weighted_sums(ps: &[&[f32]], rows: &[f32], outs: &mut [&mut [f32]]) {
    assert_eq!(ps.len(), outs.len(), "weighted_sums: {} weights for {} outputs", ps.len(), outs.len());
    let Some(w) = outs.first().map(|o| o.len()) else { return };
    let n = ps[0].len();
    assert!(ps.iter().all(|p| p.len() == n) && outs.iter().all(|o| o.len() == w), "weighted_sums: uneven heads");
    assert_eq!(rows.len(), n * w, "weighted_sums: {} values are not {n} rows of {w}", rows.len());
    for (ps, outs) in ps.chunks(4).zip(outs.chunks_mut(4)) {
        match isa() {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: avx512f was detected; `rows` holds `n` rows of `w` and every weight
            // vector has `n` values and every output `w` (asserted).
            Isa::Avx512 => unsafe {
                match ps.len() {
                    1 => x86::weighted_sums_avx512::<1>(ps, rows, outs),
                    2 => x86::weighted_sums_avx512::<2>(ps, rows, outs),
                    3 => x86::weighted_sums_avx512::<3>(ps, rows, outs),
                    _ => x86::weighted_sums_avx512::<4>(ps, rows, outs),
                }
            },
            _ => {
                for (p, out) in ps.iter().zip(outs.iter_mut()) {
                    weighted_sum(p, rows, out);
                }
            }
        }
    }
}

fn dot_scalar(a: &[f32], b: &[f32]) -> f32 {
    // Eight partial sums, so that the compiler can keep them in one vector register.
    let mut acc = [0f32; 8];
    let chunks = a.len() / 8;
    for c in 0..chunks {
        for l in 0..8 {
            acc[l] += a[c * 8 + l] * b[c * 8 + l];
        }
    }
    let tail: f32 = a[chunks * 8..].iter().zip(&b[chunks * 8..]).map(|(x, y)| x * y).sum();
    acc.iter().sum::<f32>() + tail
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// # Safety
    /// The CPU has avx512f; every row has `x.len()` values.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn dot4_avx512(rows: [&[f32]; 4], x: &[f32]) -> [f32; 4] {
        let n = x.len();
        let (xp, rp) = (x.as_ptr(), rows.map(<[f32]>::as_ptr));
        let mut acc = [_mm512_setzero_ps(); 4];
        let mut i = 0;
        // SAFETY (all loads): `i + 16 <= n`, or a mask covers only the `n - i` values left.
        while i + 16 <= n {
            let xv = unsafe { _mm512_loadu_ps(xp.add(i)) };
            for r in 0..4 {
                acc[r] = _mm512_fmadd_ps(unsafe { _mm512_loadu_ps(rp[r].add(i)) }, xv, acc[r]);
            }
            i += 16;
        }
        if i < n {
            let mask: __mmask16 = (1u32 << (n - i)) as u16 - 1;
            let xv = unsafe { _mm512_maskz_loadu_ps(mask, xp.add(i)) };
            for r in 0..4 {
                acc[r] = _mm512_fmadd_ps(unsafe { _mm512_maskz_loadu_ps(mask, rp[r].add(i)) }, xv, acc[r]);
            }
        }
        acc.map(|a| _mm512_reduce_add_ps(a))
    }

    /// # Safety
    /// The CPU has avx512f; `x` and `y` have the same length.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn axpy_avx512(a: f32, x: &[f32], y: &mut [f32]) {
        let n = x.len();
        let (xp, yp, av) = (x.as_ptr(), y.as_mut_ptr(), _mm512_set1_ps(a));
        let mut i = 0;
        // SAFETY (all accesses): `i + 16 <= n`, or a mask covers only the `n - i` values left.
        while i + 16 <= n {
            unsafe {
                _mm512_storeu_ps(yp.add(i), _mm512_fmadd_ps(av, _mm512_loadu_ps(xp.add(i)), _mm512_loadu_ps(yp.add(i))))
            };
            i += 16;
        }
        if i < n {
            let mask: __mmask16 = (1u32 << (n - i)) as u16 - 1;
            unsafe {
                let v =
                    _mm512_fmadd_ps(av, _mm512_maskz_loadu_ps(mask, xp.add(i)), _mm512_maskz_loadu_ps(mask, yp.add(i)));
                _mm512_mask_storeu_ps(yp.add(i), mask, v);
            }
        }
    }

    /// # Safety
    /// The CPU has avx512f; `rows` holds `p.len()` rows of `out.len()` values.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn weighted_sum_avx512(p: &[f32], rows: &[f32], out: &mut [f32]) {
        let w = out.len();
        let (rp, op) = (rows.as_ptr(), out.as_mut_ptr());
        // Up to 64 columns at a time, in four registers, over every row.
        let mut c = 0;
        while c < w {
            let masks: [__mmask16; 4] = std::array::from_fn(|k| {
                let left = w.saturating_sub(c + 16 * k).min(16);
                ((1u32 << left) - 1) as u16
            });
            // SAFETY (all accesses): each mask covers only columns `c + 16 k ..` below `w`,
            // in `out` and in row `j < p.len()` of `rows`.
            let mut acc: [__m512; 4] =
                std::array::from_fn(|k| unsafe { _mm512_maskz_loadu_ps(masks[k], op.add(c + 16 * k)) });
            for (j, &a) in p.iter().enumerate() {
                let av = _mm512_set1_ps(a);
                let row = unsafe { rp.add(j * w + c) };
                for k in 0..4 {
                    acc[k] = _mm512_fmadd_ps(av, unsafe { _mm512_maskz_loadu_ps(masks[k], row.add(16 * k)) }, acc[k]);
                }
            }
            for k in 0..4 {
                unsafe { _mm512_mask_storeu_ps(op.add(c + 16 * k), masks[k], acc[k]) };
            }
            c += 64;
        }
    }

    /// [`super::row_dots`] sixteen rows at a time.
    ///
    /// # Safety
    /// The CPU has avx512f; `x.len()` is a multiple of 16, `out.len()` of 16, and `rows`
    /// holds `out.len()` rows of `x.len()` values.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn row_dots16_avx512(rows: &[f32], x: &[f32], out: &mut [f32]) {
        let w = x.len();
        for (r, o) in rows.chunks_exact(16 * w).zip(out.chunks_exact_mut(16)) {
            let mut acc = [_mm512_setzero_ps(); 16];
            for c in (0..w).step_by(16) {
                // SAFETY: `c + 16 <= w`, inside `x` and inside each of the 16 rows of `r`.
                let xv = unsafe { _mm512_loadu_ps(x.as_ptr().add(c)) };
                for (j, a) in acc.iter_mut().enumerate() {
                    *a = _mm512_fmadd_ps(unsafe { _mm512_loadu_ps(r.as_ptr().add(j * w + c)) }, xv, *a);
                }
            }
            // Pairs of rows: lanes summed in twos, interleaved.
            let t: [__m512; 8] = std::array::from_fn(|k| {
                let (a, b) = (acc[2 * k], acc[2 * k + 1]);
                _mm512_add_ps(_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b))
            });
            // Quads: each 128-bit lane holds four rows' partial sums, in row order.
            let u: [__m512; 4] = std::array::from_fn(|k| {
                let (a, b) = (_mm512_castps_pd(t[2 * k]), _mm512_castps_pd(t[2 * k + 1]));
                _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(a, b)), _mm512_castpd_ps(_mm512_unpackhi_pd(a, b)))
            });
            // The four 128-bit lanes of each quad summed: lane `m` of the result is quad `m`.
            let halves = |a: __m512, b: __m512| {
                _mm512_add_ps(_mm512_shuffle_f32x4::<0x88>(a, b), _mm512_shuffle_f32x4::<0xDD>(a, b))
            };
            let sums = halves(halves(u[0], u[1]), halves(u[2], u[3]));
            // SAFETY: 16 values at `o`.
            unsafe { _mm512_storeu_ps(o.as_mut_ptr(), sums) };
        }
    }

    /// [`super::weighted_sums`] for `H` heads (up to four), 64 columns at a time.
    ///
    /// # Safety
    /// The CPU has avx512f; `ps` and `outs` hold `H` heads, every `ps[h]` has `n` values
    /// and every `outs[h]` has `w`, and `rows` holds `n` rows of `w`.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn weighted_sums_avx512<const H: usize>(ps: &[&[f32]], rows: &[f32], outs: &mut [&mut [f32]]) {
        let w = outs[0].len();
        let rp = rows.as_ptr();
        let pp: [*const f32; H] = std::array::from_fn(|h| ps[h].as_ptr());
        let op: [*mut f32; H] = std::array::from_fn(|h| outs[h].as_mut_ptr());
        let n = ps[0].len();
        let mut c = 0;
        while c < w {
            let masks: [__mmask16; 4] = std::array::from_fn(|k| {
                let left = w.saturating_sub(c + 16 * k).min(16);
                ((1u32 << left) - 1) as u16
            });
            // SAFETY (all accesses): each mask covers only columns `c + 16 k ..` below `w`,
            // in each output and in row `j < n` of `rows`; `j < n` in each weight vector.
            let mut acc: [[__m512; 4]; H] = std::array::from_fn(|h| {
                std::array::from_fn(|k| unsafe { _mm512_maskz_loadu_ps(masks[k], op[h].add(c + 16 * k)) })
            });
            for j in 0..n {
                let row = unsafe { rp.add(j * w + c) };
                let r: [__m512; 4] =
                    std::array::from_fn(|k| unsafe { _mm512_maskz_loadu_ps(masks[k], row.add(16 * k)) });
                for h in 0..H {
                    let av = _mm512_set1_ps(unsafe { *pp[h].add(j) });
                    for k in 0..4 {
                        acc[h][k] = _mm512_fmadd_ps(av, r[k], acc[h][k]);
                    }
                }
            }
            for h in 0..H {
                for k in 0..4 {
                    unsafe { _mm512_mask_storeu_ps(op[h].add(c + 16 * k), masks[k], acc[h][k]) };
                }
            }
            c += 64;
        }
    }

    /// # Safety
    /// The CPU has avx2 and fma; every row has `x.len()` values.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot4_avx2(rows: [&[f32]; 4], x: &[f32]) -> [f32; 4] {
        let n = x.len();
        let (xp, rp) = (x.as_ptr(), rows.map(<[f32]>::as_ptr));
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        // SAFETY (all loads): `i + 8 <= n`.
        while i + 8 <= n {
            let xv = unsafe { _mm256_loadu_ps(xp.add(i)) };
            for r in 0..4 {
                acc[r] = _mm256_fmadd_ps(unsafe { _mm256_loadu_ps(rp[r].add(i)) }, xv, acc[r]);
            }
            i += 8;
        }
        let mut out = [0f32; 4];
        for r in 0..4 {
            let hi = _mm256_extractf128_ps(acc[r], 1);
            let s = _mm_add_ps(_mm256_castps256_ps128(acc[r]), hi);
            let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
            out[r] = _mm_cvtss_f32(s);
            // SAFETY: `j < n` for the values the vector loop left.
            for j in i..n {
                out[r] += unsafe { *rp[r].add(j) * *xp.add(j) };
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rows against a vector, sixteen at a time and the rest, and several heads' weighted
    /// sums of the same rows, against plain sums and against one head at a time.
    #[test]
    fn row_dots_and_weighted_sums_match_plain_sums() {
        for (n, w) in [(0, 64), (5, 64), (16, 64), (37, 64), (64, 256), (19, 48), (21, 20)] {
            let x: Vec<f32> = (0..w).map(|i| (i as f32 * 0.37).sin()).collect();
            let rows: Vec<f32> = (0..n * w).map(|i| (i as f32 * 0.11).cos()).collect();
            let mut got = vec![0f32; n];
            row_dots(&rows, &x, &mut got);
            for (j, &g) in got.iter().enumerate() {
                let want: f64 =
                    rows[j * w..(j + 1) * w].iter().zip(&x).map(|(&a, &b)| f64::from(a) * f64::from(b)).sum();
                assert!((f64::from(g) - want).abs() < 1e-4, "{n} rows of {w}: row {j} {g} vs {want}");
            }
            for heads in [1, 3, 4, 6] {
                let ps: Vec<Vec<f32>> =
                    (0..heads).map(|h| (0..n).map(|j| ((j * 7 + h) % 5) as f32 * 0.3 - 0.5).collect()).collect();
                let start: Vec<Vec<f32>> =
                    (0..heads).map(|h| (0..w).map(|i| (i + h) as f32 * 0.01).collect()).collect();
                let mut outs = start.clone();
                {
                    let pr: Vec<&[f32]> = ps.iter().map(Vec::as_slice).collect();
                    let mut or: Vec<&mut [f32]> = outs.iter_mut().map(Vec::as_mut_slice).collect();
                    weighted_sums(&pr, &rows, &mut or);
                }
                for h in 0..heads {
                    let mut one = start[h].clone();
                    weighted_sum(&ps[h], &rows, &mut one);
                    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                    assert_eq!(bits(&outs[h]), bits(&one), "{heads} heads over {n} rows of {w}: head {h}");
                }
            }
        }
    }

    #[test]
    fn dots_agree_with_plain_sums_at_every_length() {
        for n in [1, 7, 8, 15, 16, 17, 31, 64, 100, 576] {
            let x: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
            let rows: Vec<Vec<f32>> = (0..4).map(|r| (0..n).map(|i| ((i + r) as f32 * 0.11).cos()).collect()).collect();
            let got = dot4([&rows[0], &rows[1], &rows[2], &rows[3]], &x);
            for r in 0..4 {
                let want: f64 = rows[r].iter().zip(&x).map(|(&a, &b)| f64::from(a) * f64::from(b)).sum();
                assert!((f64::from(got[r]) - want).abs() < 1e-4, "n {n} row {r}: {} vs {want}", got[r]);
            }
            assert!((dot(&rows[1], &x) - got[1]).abs() < 1e-5);
            assert!((dot_scalar(&rows[2], &x) - got[2]).abs() < 1e-4);
            let mut y = rows[3].clone();
            axpy(0.5, &x, &mut y);
            // A weighted sum of rows equals a loop of `axpy`, bit for bit.
            let flat: Vec<f32> = rows.concat();
            let p = [0.25, -1.5, 0.0, 3.0];
            let (mut looped, mut summed) = (x.clone(), x.clone());
            for (&a, r) in p.iter().zip(&rows) {
                axpy(a, r, &mut looped);
            }
            weighted_sum(&p, &flat, &mut summed);
            assert_eq!(
                looped.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                summed.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                "weighted_sum at {n}"
            );
            assert!(y.iter().zip(&rows[3]).zip(&x).all(|((y, r), x)| (y - (r + 0.5 * x)).abs() < 1e-6), "axpy at {n}");
        }
    }
}
