//! Expected Attention (Devoto et al., 2025, arXiv 2510.00636): the attention that queries
//! yet to come are expected to pay each cached token, from the statistics of the prompt's
//! queries, without any attention probabilities.
//!
//! Per query head, the mean `μ` and covariance `Σ` of the prompt's queries before the
//! rotary embedding (the first `sinks` positions left out) are moved by the rotary
//! rotation averaged over the next `future` positions, `R̄`: `μ' = R̄μ`, `Σ' = R̄ΣR̄ᵀ`. If a
//! future query is Gaussian, `E[exp(q·k/√d)] = exp(μ'·k/√d + ½ kᵀΣ'k/d)`; the scores are
//! those logits through a softmax over the cached tokens (sinks aside), averaged over the
//! heads of a GQA group and multiplied by the value's norm. Sinks score above everything.
//!
//! Computed on the host in `f64` (the statistics are `head_dim²` per head, the keys are read
//! once); only the score vector goes back to the device.

use crate::error::{Error, Result};
use crate::scorer::{Needs, Observation, Scorer};
use crate::tensor::Tensor;

/// The Expected Attention scorer; see the module documentation.
#[derive(Debug, Clone, Copy)]
pub struct ExpectedAttention {
    /// Future positions the rotation is averaged over.
    pub future: usize,
    /// Leading positions left out of the statistics and scored above every other token.
    pub sinks: usize,
    /// Whether the covariance term is added.
    pub covariance: bool,
    /// Whether scores are multiplied by the value's L2 norm.
    pub value_norm: bool,
}

/// `cos` and `sin` of `p · θ_j` averaged over `p` in `from..from + n`, for each frequency.
fn averaged_rotation(inv_freq: &[f64], from: usize, n: usize) -> Vec<(f64, f64)> {
    inv_freq
        .iter()
        .map(|&f| {
            let (mut c, mut s) = (0.0, 0.0);
            for p in from..from + n {
                let a = p as f64 * f;
                c += a.cos();
                s += a.sin();
            }
            (c / n as f64, s / n as f64)
        })
        .collect()
}

/// `R̄ x` for the half-split layout (pairs `j`, `j + d/2`).
fn rotate(x: &[f64], rot: &[(f64, f64)]) -> Vec<f64> {
    let half = rot.len();
    let mut y = vec![0.0; 2 * half];
    for (j, &(c, s)) in rot.iter().enumerate() {
        y[j] = c * x[j] - s * x[j + half];
        y[j + half] = c * x[j + half] + s * x[j];
    }
    y
}

impl<T: Tensor + Send> Scorer<T> for ExpectedAttention {
    fn name(&self) -> &'static str {
        "expected-attention"
    }

    fn needs(&self) -> Needs {
        Needs { keys: true, values: self.value_norm, queries: true, ..Needs::default() }
    }

    fn score(&mut self, obs: &Observation<'_, T>) -> Result<T> {
        let missing = |what| Error::MissingInput { scorer: "expected-attention", what };
        let q = obs.queries.as_ref().ok_or(missing("the prompt's queries"))?;
        let keys = obs.keys.ok_or(missing("keys"))?;
        let (qs, ks) = (q.queries.shape(), keys.shape());
        let k = obs.tokens();
        if qs.len() != 3 || ks.len() != 3 || qs[2] != ks[2] || ks[1] != k || q.positions.len() != qs[1] {
            return Err(Error::Shape {
                op: "expected-attention",
                detail: format!("queries {qs:?} at {} positions, keys {ks:?} for {k} tokens", q.positions.len()),
            });
        }
        let (heads, n, d) = (qs[0], qs[1], qs[2]);
        let kv = ks[0];
        if kv == 0 || heads % kv != 0 || 2 * q.rope_inv_freq.len() != d {
            return Err(Error::Shape {
                op: "expected-attention",
                detail: format!(
                    "{heads} heads over {kv} KV heads, {} rotary frequencies for dim {d}",
                    q.rope_inv_freq.len()
                ),
            });
        }
        let group = heads / kv;
        let queries = q.queries.to_host()?;
        let keys = keys.to_host()?;
        let rows: Vec<usize> = (0..n).filter(|&r| q.positions[r] >= self.sinks).collect();
        let count = rows.len().max(1) as f64;
        let next = q.positions.iter().chain(obs.positions).copied().max().map_or(0, |p| p + 1);
        let rot = averaged_rotation(q.rope_inv_freq, next, self.future.max(1));
        let value_norms: Option<Vec<f64>> = match (self.value_norm, obs.values) {
            (false, _) => None,
            (true, None) => return Err(missing("values")),
            (true, Some(v)) => Some(
                v.to_host()?
                    .chunks_exact(d)
                    .map(|x| x.iter().map(|&a| f64::from(a) * f64::from(a)).sum::<f64>().sqrt())
                    .collect(),
            ),
        };
        let scored: Vec<usize> = (0..k).filter(|&i| obs.positions[i] >= self.sinks).collect();
        let sqrt_d = (d as f64).sqrt();
        let mut out = vec![0f32; heads * k];
        for h in 0..heads {
            let head = |r: usize| &queries[(h * n + r) * d..(h * n + r + 1) * d];
            let mut mean = vec![0.0; d];
            for &r in &rows {
                mean.iter_mut().zip(head(r)).for_each(|(m, &x)| *m += f64::from(x));
            }
            mean.iter_mut().for_each(|m| *m /= count);
            let mean_rot = rotate(&mean, &rot);
            // Σ' = R̄ Σ R̄ᵀ = (1/count) Σ_r (R̄ c_r)(R̄ c_r)ᵀ for the centred rows c_r.
            let mut cov = vec![0.0; if self.covariance { d * d } else { 0 }];
            if self.covariance {
                for &r in &rows {
                    let centred: Vec<f64> = head(r).iter().zip(&mean).map(|(&x, m)| f64::from(x) - m).collect();
                    let c = rotate(&centred, &rot);
                    for (row, &ci) in cov.chunks_exact_mut(d).zip(&c) {
                        row.iter_mut().zip(&c).for_each(|(v, &cj)| *v += ci * cj);
                    }
                }
                cov.iter_mut().for_each(|v| *v /= count);
            }
            let kvh = h / group;
            let mut logits = Vec::with_capacity(scored.len());
            for &i in &scored {
                let key: Vec<f64> =
                    keys[(kvh * k + i) * d..(kvh * k + i + 1) * d].iter().map(|&x| f64::from(x)).collect();
                let mut z = key.iter().zip(&mean_rot).map(|(a, b)| a * b).sum::<f64>() / sqrt_d;
                if self.covariance {
                    let quad: f64 = cov
                        .chunks_exact(d)
                        .zip(&key)
                        .map(|(row, &ka)| ka * row.iter().zip(&key).map(|(c, kb)| c * kb).sum::<f64>())
                        .sum();
                    z += 0.5 * quad / d as f64;
                }
                logits.push(z);
            }
            let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let total: f64 = logits.iter().map(|&z| (z - max).exp()).sum();
            for (&i, &z) in scored.iter().zip(&logits) {
                let p = (z - max).exp() / total;
                let norm = value_norms.as_ref().map_or(1.0, |v| v[kvh * k + i]);
                out[h * k + i] = (p * norm) as f32;
            }
        }
        // Sinks above every scored token.
        let top = out.iter().copied().fold(0f32, f32::max) + 1.0;
        for h in 0..heads {
            for i in (0..k).filter(|&i| obs.positions[i] < self.sinks) {
                out[h * k + i] = top;
            }
        }
        T::from_host(&out, &[heads, k], &obs.device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_averaged_rotation_of_one_position_is_that_rotation() {
        let rot = averaged_rotation(&[0.5, 0.01], 3, 1);
        assert!((rot[0].0 - 1.5f64.cos()).abs() < 1e-12 && (rot[0].1 - 1.5f64.sin()).abs() < 1e-12);
        // Rotating by it is the rotary embedding at that position.
        let y = rotate(&[1.0, 0.0, 0.0, 1.0], &rot);
        assert!((y[0] - 1.5f64.cos()).abs() < 1e-12 && (y[2] - 1.5f64.sin()).abs() < 1e-12);
    }

    #[test]
    fn averaging_over_many_positions_shrinks_fast_frequencies() {
        let rot = averaged_rotation(&[1.0, 1e-4], 0, 512);
        let len = |(c, s): (f64, f64)| (c * c + s * s).sqrt();
        assert!(len(rot[0]) < 0.01, "{:?}", rot[0]);
        assert!(len(rot[1]) > 0.99, "{:?}", rot[1]);
    }
}
