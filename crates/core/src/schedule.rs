//! Layer schedules: how the kept fraction of tokens varies with depth.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The fraction of tokens each layer keeps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Schedule {
    /// Every layer keeps the same fraction.
    Constant {
        /// Fraction in `(0, 1]`.
        keep: f64,
    },
    /// LazyLLM's progressive pruning: from `layers[i]` on, layers see `keep[i]` of the
    /// original tokens; layers before `layers[0]` see all of them. Layers strictly
    /// increase and fractions never increase, since pruned tokens do not come back.
    Progressive {
        /// First layer of each stage.
        layers: Vec<usize>,
        /// Fraction of the original tokens from that layer on.
        keep: Vec<f64>,
    },
    /// PyramidKV (Cai et al., 2024, "PyramidKV: Dynamic KV Cache Compression based on
    /// Pyramidal Information Funneling"): budgets fall linearly with depth, the last layer
    /// keeping `keep / beta`, so that the layers' mean fraction is `keep`. When the first
    /// layer would need more than everything it keeps everything and the slope flattens so
    /// that the mean is still `keep`.
    Pyramid {
        /// Mean fraction over the layers, in `(0, 1]`.
        keep: f64,
        /// Ratio of the mean to the last layer's fraction, at least 1.
        beta: f64,
    },
}

fn check_fraction(key: &str, f: f64) -> Result<()> {
    if f > 0.0 && f <= 1.0 { Ok(()) } else { Err(Error::out_of_range(key, f, "(0, 1]")) }
}

impl Schedule {
    /// Checks ranges and, when `n_layers` is known, that the named layers exist. `key`
    /// names the policy section in messages.
    pub fn validate(&self, key: &str, n_layers: Option<usize>) -> Result<()> {
        match self {
            Schedule::Constant { keep } => check_fraction(&format!("{key}.keep"), *keep),
            Schedule::Pyramid { keep, beta } => {
                check_fraction(&format!("{key}.keep"), *keep)?;
                if beta.is_nan() || *beta < 1.0 || beta.is_infinite() {
                    return Err(Error::out_of_range(format!("{key}.beta"), beta, "a finite number >= 1"));
                }
                Ok(())
            }
            Schedule::Progressive { layers, keep } => {
                if layers.is_empty() || layers.len() != keep.len() {
                    return Err(Error::InvalidPolicy(format!(
                        "{key}: `layers` ({} entries) and `keep` ({} entries) must be non-empty and of equal length",
                        layers.len(),
                        keep.len()
                    )));
                }
                for (i, &f) in keep.iter().enumerate() {
                    check_fraction(&format!("{key}.keep[{i}]"), f)?;
                    if i > 0 && f > keep[i - 1] {
                        return Err(Error::InvalidPolicy(format!(
                            "{key}.keep must not increase: keep[{i}] = {f} > keep[{}] = {}",
                            i - 1,
                            keep[i - 1]
                        )));
                    }
                    if i > 0 && layers[i] <= layers[i - 1] {
                        return Err(Error::InvalidPolicy(format!("{key}.layers must strictly increase: {layers:?}")));
                    }
                }
                if let Some(n) = n_layers
                    && let Some(&bad) = layers.iter().find(|&&l| l >= n)
                {
                    return Err(Error::out_of_range(
                        format!("{key}.layers"),
                        bad,
                        format!("0..{n} (the model has {n} layers)"),
                    ));
                }
                Ok(())
            }
        }
    }

    /// The fraction of tokens each of `n_layers` layers keeps.
    pub fn fractions(&self, n_layers: usize) -> Result<Vec<f64>> {
        self.validate("schedule", None)?;
        Ok(match self {
            Schedule::Constant { keep } => vec![*keep; n_layers],
            Schedule::Progressive { layers, keep } => (0..n_layers)
                .map(|l| {
                    layers
                        .iter()
                        .zip(keep)
                        .filter(|&(&start, _)| start <= l)
                        .map(|(_, &f)| f)
                        .next_back()
                        .unwrap_or(1.0)
                })
                .collect(),
            Schedule::Pyramid { keep, beta } => {
                if n_layers <= 1 {
                    return Ok(vec![*keep; n_layers]);
                }
                let (mut first, mut last) = (2.0 * keep - keep / beta, keep / beta);
                if first > 1.0 {
                    first = 1.0;
                    last = 2.0 * keep - 1.0;
                }
                let span = (n_layers - 1) as f64;
                (0..n_layers).map(|l| first + (last - first) * l as f64 / span).collect()
            }
        })
    }

    /// Token budgets per layer for `n_tokens` tokens. Constant and progressive schedules
    /// round each layer up (`ceil(f * n)`); a pyramid distributes `round(keep * n * layers)`
    /// tokens by largest remainder, so its budgets sum to that total. Every layer keeps at
    /// least one token and at most `n_tokens`.
    pub fn budgets(&self, n_tokens: usize, n_layers: usize) -> Result<Vec<usize>> {
        let fractions = self.fractions(n_layers)?;
        let n = n_tokens as f64;
        let clamp = |b: usize| b.clamp(1.min(n_tokens), n_tokens);
        match self {
            Schedule::Pyramid { keep, .. } => {
                let total = (keep * n * n_layers as f64).round() as usize;
                let ideal: Vec<f64> = fractions.iter().map(|f| f * n).collect();
                let mut budgets: Vec<usize> = ideal.iter().map(|x| x.floor() as usize).collect();
                let mut order: Vec<usize> = (0..n_layers).collect();
                order.sort_by(|&a, &b| {
                    (ideal[b] - ideal[b].floor()).total_cmp(&(ideal[a] - ideal[a].floor())).then(a.cmp(&b))
                });
                let mut missing = total.saturating_sub(budgets.iter().sum());
                for &l in order.iter().cycle().take(n_layers * 2) {
                    if missing == 0 {
                        break;
                    }
                    if budgets[l] < n_tokens {
                        budgets[l] += 1;
                        missing -= 1;
                    }
                }
                Ok(budgets.into_iter().map(clamp).collect())
            }
            _ => Ok(fractions.iter().map(|f| clamp(((f * n) - 1e-9).ceil() as usize)).collect()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progressive_steps_down_at_named_layers() {
        let s = Schedule::Progressive { layers: vec![2, 4], keep: vec![0.5, 0.25] };
        assert_eq!(s.fractions(6).unwrap(), vec![1.0, 1.0, 0.5, 0.5, 0.25, 0.25]);
        assert_eq!(s.budgets(100, 6).unwrap(), vec![100, 100, 50, 50, 25, 25]);
    }

    #[test]
    fn pyramid_decreases_and_sums_to_the_total() {
        let s = Schedule::Pyramid { keep: 0.25, beta: 20.0 };
        let f = s.fractions(30).unwrap();
        assert!(f.windows(2).all(|w| w[0] > w[1]));
        assert!((f.iter().sum::<f64>() / 30.0 - 0.25).abs() < 1e-12);
        let b = s.budgets(2048, 30).unwrap();
        assert_eq!(b.iter().sum::<usize>(), (0.25f64 * 2048.0 * 30.0).round() as usize);
        assert!(b.windows(2).all(|w| w[0] >= w[1]));
    }

    #[test]
    fn steep_pyramid_is_capped_at_everything() {
        let f = Schedule::Pyramid { keep: 0.75, beta: 20.0 }.fractions(5).unwrap();
        assert_eq!(f[0], 1.0);
        assert!((f.iter().sum::<f64>() / 5.0 - 0.75).abs() < 1e-12);
    }

    #[test]
    fn invalid_schedules_name_their_key() {
        let err =
            Schedule::Progressive { layers: vec![4, 2], keep: vec![0.5, 0.4] }.validate("prefill", None).unwrap_err();
        assert!(err.to_string().contains("prefill.layers"), "{err}");
        let err =
            Schedule::Progressive { layers: vec![2, 4], keep: vec![0.4, 0.5] }.validate("prefill", None).unwrap_err();
        assert!(err.to_string().contains("must not increase"), "{err}");
        let err = Schedule::Constant { keep: 0.0 }.validate("kv", None).unwrap_err();
        assert!(err.to_string().contains("`kv.keep` = 0"), "{err}");
        let err =
            Schedule::Progressive { layers: vec![40], keep: vec![0.5] }.validate("prefill", Some(30)).unwrap_err();
        assert!(err.to_string().contains("the model has 30 layers"), "{err}");
        assert!(Schedule::Pyramid { keep: 0.5, beta: 0.5 }.validate("kv", None).is_err());
    }
}
