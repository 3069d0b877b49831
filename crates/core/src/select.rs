//! Deterministic selection of the tokens to keep from a 1-D score vector.
//!
//! Every selector ranks tokens the same way: protected tokens first (the first `sinks`
//! and the last `recent`), then the others by score, higher first, ties to the lower
//! index. The budget only decides how long a prefix of that ranking is kept, so the kept
//! set grows monotonically with the budget, and two backends that computed the same
//! scores keep the same tokens. Kept indices come out sorted and unique.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// How many tokens to keep.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Budget {
    /// Keep `ceil(ratio * n)` tokens; `ratio` in `(0, 1]`.
    Ratio(f64),
    /// Keep at most this many tokens.
    Tokens(usize),
    /// Adaptive: besides the protected tokens, keep the smallest set (in ranking order)
    /// whose share of the score mass of the unprotected tokens reaches `p`, in `(0, 1]`.
    /// The protected tokens' mass does not count: attention sinks draw most of a row's
    /// attention, and counting it would stop the selection after a handful of tokens.
    /// Scores are shifted so that the smallest is zero when any is negative; attention
    /// scores are used as they are. The kept count follows the input: a peaked score
    /// distribution keeps few tokens, a flat one many.
    Mass(f64),
}

impl Budget {
    /// Checks the value's range; `key` names the setting in messages.
    pub fn validate(&self, key: &str) -> Result<()> {
        match *self {
            Budget::Ratio(r) if !(r > 0.0 && r <= 1.0) => Err(Error::out_of_range(format!("{key}.keep"), r, "(0, 1]")),
            Budget::Mass(p) if !(p > 0.0 && p <= 1.0) => Err(Error::out_of_range(format!("{key}.mass"), p, "(0, 1]")),
            Budget::Tokens(0) => Err(Error::out_of_range(format!("{key}.tokens"), 0, "at least 1")),
            _ => Ok(()),
        }
    }
}

/// Chooses which tokens to keep. See the module documentation for the ranking.
#[derive(Debug, Clone, PartialEq)]
pub struct Selector {
    /// The budget.
    pub budget: Budget,
    /// The first `sinks` tokens are always kept (attention sinks, StreamingLLM).
    pub sinks: usize,
    /// The last `recent` tokens are always kept.
    pub recent: usize,
    /// Never keep fewer than this many tokens (or all of them, if there are fewer).
    pub min_keep: usize,
    /// Never keep more than this many tokens.
    pub max_keep: Option<usize>,
}

impl Selector {
    /// A selector with a budget and no protected tokens or clamps.
    pub fn new(budget: Budget) -> Self {
        Self { budget, sinks: 0, recent: 0, min_keep: 0, max_keep: None }
    }

    /// Protects the first `sinks` and the last `recent` tokens.
    pub fn protect(mut self, sinks: usize, recent: usize) -> Self {
        self.sinks = sinks;
        self.recent = recent;
        self
    }

    /// Clamps the kept count to `[min_keep, max_keep]`.
    pub fn clamp(mut self, min_keep: usize, max_keep: Option<usize>) -> Self {
        self.min_keep = min_keep;
        self.max_keep = max_keep;
        self
    }

    /// Checks that the budget is in range and that the protected tokens and clamps fit in
    /// it; `key` names the policy section in messages.
    pub fn validate(&self, key: &str) -> Result<()> {
        self.budget.validate(key)?;
        let protected = self.sinks + self.recent;
        if let Budget::Tokens(t) = self.budget {
            if protected > t {
                return Err(Error::InvalidPolicy(format!(
                    "{key}: sinks + recent = {protected} protected tokens do not fit in a budget of {t} tokens"
                )));
            }
            if self.min_keep > t {
                return Err(Error::out_of_range(
                    format!("{key}.min_keep"),
                    self.min_keep,
                    format!("at most the budget of {t} tokens"),
                ));
            }
        }
        if let Some(max) = self.max_keep
            && max < protected.max(self.min_keep).max(1)
        {
            return Err(Error::out_of_range(
                format!("{key}.max_keep"),
                max,
                format!("at least 1, min_keep ({}) and sinks + recent ({protected})", self.min_keep),
            ));
        }
        Ok(())
    }

    /// Selects the tokens to keep among `scores.len()` tokens; sorted, unique indices.
    pub fn select(&self, scores: &[f32]) -> Result<Vec<usize>> {
        self.select_with(scores, self.budget)
    }

    /// Like [`Selector::select`] with another budget (a layer schedule's per-layer budget).
    pub fn select_with(&self, scores: &[f32], budget: Budget) -> Result<Vec<usize>> {
        let this = Selector { budget, ..self.clone() };
        this.validate("selector")?;
        let order = rank_protected(scores, self.sinks, self.recent)?;
        let count = self.count(scores, &order, budget);
        let mut kept = order;
        kept.truncate(count);
        kept.sort_unstable();
        Ok(kept)
    }

    /// How many of `scores.len()` tokens ranked in `order` the budget keeps.
    fn count(&self, scores: &[f32], order: &[usize], budget: Budget) -> usize {
        let n = scores.len();
        let protected = protected_count(n, self.sinks, self.recent);
        let target = match budget {
            Budget::Ratio(r) => ((r * n as f64) - 1e-9).ceil().max(0.0) as usize,
            Budget::Tokens(t) => t,
            Budget::Mass(p) => protected + mass_count(scores, &order[protected..], p),
        };
        let mut count = target.max(protected).max(self.min_keep);
        if let Some(max) = self.max_keep {
            count = count.min(max);
        }
        count.min(n)
    }

    /// Ada-KV (Feng et al., 2024): one layer's selection over its KV heads, `rows[h]` the
    /// scores of head `h` (every row as long). The layer keeps what [`Selector::select_with`]
    /// would keep in all heads together, `heads × count`, but splits it by score: each head
    /// first keeps its protected tokens and its best `safeguard` share of the rest of its
    /// nominal count; the remainder of the layer's budget then goes to the highest scores
    /// left in any head (ties: lower head, then lower index). Heads end with different
    /// counts. Sorted, unique indices per head.
    pub fn select_ada(&self, rows: &[&[f32]], budget: Budget, safeguard: f64) -> Result<Vec<Vec<usize>>> {
        let this = Selector { budget, ..self.clone() };
        this.validate("selector")?;
        if !(0.0..=1.0).contains(&safeguard) {
            return Err(Error::out_of_range("kv.safeguard", safeguard, "[0, 1]"));
        }
        let Some(n) = rows.first().map(|r| r.len()) else { return Ok(Vec::new()) };
        if rows.iter().any(|r| r.len() != n) {
            return Err(Error::InvalidPolicy("ada: every head must score the same tokens".into()));
        }
        if let Budget::Mass(_) = budget {
            return Err(Error::InvalidPolicy("ada: a layer budget needs `keep` or `tokens`, not `mass`".into()));
        }
        let protected = protected_count(n, self.sinks, self.recent);
        let mut kept: Vec<Vec<usize>> = Vec::with_capacity(rows.len());
        let mut pool: Vec<(f32, usize, usize)> = Vec::new();
        let mut total = 0;
        for (h, row) in rows.iter().enumerate() {
            let order = rank_protected(row, self.sinks, self.recent)?;
            let count = self.count(row, &order, budget);
            total += count;
            let safe = protected + (safeguard * count.saturating_sub(protected) as f64).floor() as usize;
            let safe = safe.min(count);
            kept.push(order[..safe].to_vec());
            pool.extend(order[safe..].iter().map(|&i| (row[i], h, i)));
        }
        let left = total - kept.iter().map(Vec::len).sum::<usize>();
        pool.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
        for &(_, h, i) in pool.iter().take(left) {
            kept[h].push(i);
        }
        for k in &mut kept {
            k.sort_unstable();
        }
        Ok(kept)
    }
}

/// How many distinct tokens the first `sinks` and last `recent` of `n` cover.
pub fn protected_count(n: usize, sinks: usize, recent: usize) -> usize {
    (sinks + recent).min(n)
}

/// All token indices ranked by score, higher first, ties to the lower index. Errors on a
/// NaN or infinite score.
pub fn rank_by_score(scores: &[f32]) -> Result<Vec<usize>> {
    check_finite(scores)?;
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    Ok(order)
}

/// The ranking with protected tokens first (in index order), then the rest by score.
fn rank_protected(scores: &[f32], sinks: usize, recent: usize) -> Result<Vec<usize>> {
    let n = scores.len();
    let is_protected = |i: usize| i < sinks || i + recent >= n;
    let mut order: Vec<usize> = (0..n).filter(|&i| is_protected(i)).collect();
    order.extend(rank_by_score(scores)?.into_iter().filter(|&i| !is_protected(i)));
    Ok(order)
}

fn check_finite(scores: &[f32]) -> Result<()> {
    match scores.iter().position(|s| !s.is_finite()) {
        Some(index) => Err(Error::NonFiniteScore { index, value: scores[index] }),
        None => Ok(()),
    }
}

/// Normalised score mass of each token: shifted to be non-negative, summing to one
/// (uniform when every score is equal).
pub fn mass_weights(scores: &[f32]) -> Vec<f64> {
    let min = scores.iter().copied().fold(f32::INFINITY, f32::min) as f64;
    let shift = if min < 0.0 { -min } else { 0.0 };
    let w: Vec<f64> = scores.iter().map(|&s| s as f64 + shift).collect();
    let total: f64 = w.iter().sum();
    if total > 0.0 {
        w.iter().map(|x| x / total).collect()
    } else {
        vec![1.0 / scores.len().max(1) as f64; scores.len()]
    }
}

/// Slack in the mass comparison: scores are `f32`, so a set whose mass is `p` in decimal
/// may sum to a hair less.
pub const MASS_TOLERANCE: f64 = 1e-6;

/// Length of the shortest prefix of `order` whose share of the mass of the tokens in
/// `order` reaches `p`.
fn mass_count(scores: &[f32], order: &[usize], p: f64) -> usize {
    let among: Vec<f32> = order.iter().map(|&i| scores[i]).collect();
    let mut acc = 0.0;
    for (taken, w) in mass_weights(&among).into_iter().enumerate() {
        if acc >= p - MASS_TOLERANCE {
            return taken;
        }
        acc += w;
    }
    among.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratio_keeps_the_best_and_sorts() {
        let s = [0.1, 0.9, 0.3, 0.8, 0.2];
        let kept = Selector::new(Budget::Ratio(0.4)).select(&s).unwrap();
        assert_eq!(kept, vec![1, 3]);
    }

    #[test]
    fn ties_go_to_the_lower_index() {
        let s = [0.5, 0.5, 0.5, 0.5];
        assert_eq!(Selector::new(Budget::Tokens(2)).select(&s).unwrap(), vec![0, 1]);
        assert_eq!(rank_by_score(&[1.0, 2.0, 2.0]).unwrap(), vec![1, 2, 0]);
    }

    /// Ada-KV: the layer keeps heads × count entries; each head its protected tokens and
    /// safeguard share, the rest to the best scores of any head.
    #[test]
    fn ada_splits_the_layer_budget_by_score() {
        // Head 0 is peaked (two high scores), head 1 flat and low.
        let h0 = [0.0, 0.9, 0.8, 0.7, 0.6, 0.0, 0.0, 0.0];
        let h1 = [0.0, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1];
        let sel = Selector::new(Budget::Tokens(4)).protect(1, 1);
        // Count 4 per head, 8 in all: each head keeps sinks + recent (2) and 0.5 x 2 = 1
        // more; the other 2 go to head 0's next best.
        let kept = sel.select_ada(&[&h0, &h1], Budget::Tokens(4), 0.5).unwrap();
        assert_eq!(kept, vec![vec![0, 1, 2, 3, 7], vec![0, 1, 7]]);
        assert_eq!(kept.iter().map(Vec::len).sum::<usize>(), 8);
        // Safeguard 1: every head keeps its own count, as per-head selection does.
        let even = sel.select_ada(&[&h0, &h1], Budget::Tokens(4), 1.0).unwrap();
        assert_eq!(even, vec![sel.select(&h0).unwrap(), sel.select(&h1).unwrap()]);
        // Safeguard 0 and no protection: the best 8 scores of the layer.
        let free = Selector::new(Budget::Ratio(0.5)).select_ada(&[&h0, &h1], Budget::Ratio(0.5), 0.0).unwrap();
        assert_eq!(free, vec![vec![1, 2, 3, 4], vec![1, 2, 3, 4]]);
        assert!(sel.select_ada(&[&h0, &h1], Budget::Tokens(4), 1.5).is_err());
        assert!(sel.select_ada(&[&h0, &h1[..4]], Budget::Tokens(4), 0.2).is_err());
    }

    #[test]
    fn protected_tokens_come_first() {
        let s = [0.0, 0.9, 0.8, 0.7, 0.0];
        let kept = Selector::new(Budget::Tokens(3)).protect(1, 1).select(&s).unwrap();
        assert_eq!(kept, vec![0, 1, 4]);
    }

    #[test]
    fn mass_keeps_the_smallest_sufficient_set() {
        let s = [0.5, 0.3, 0.15, 0.05];
        assert_eq!(Selector::new(Budget::Mass(0.8)).select(&s).unwrap(), vec![0, 1]);
        assert_eq!(Selector::new(Budget::Mass(0.81)).select(&s).unwrap(), vec![0, 1, 2]);
        assert_eq!(Selector::new(Budget::Mass(1.0)).select(&s).unwrap().len(), 4);
    }

    /// A sink that draws most of the attention does not count towards the mass: the
    /// target applies to the tokens being chosen.
    #[test]
    fn protected_mass_does_not_count() {
        let s = [10.0, 0.5, 0.3, 0.15, 0.05];
        let kept = Selector::new(Budget::Mass(0.8)).protect(1, 0).select(&s).unwrap();
        assert_eq!(kept, vec![0, 1, 2]);
    }

    #[test]
    fn ratio_rounding_is_not_fooled_by_float_error() {
        // 0.1 * 30 is 3.0000000000000004 in f64.
        let s = vec![1.0; 30];
        assert_eq!(Selector::new(Budget::Ratio(0.1)).select(&s).unwrap().len(), 3);
    }

    #[test]
    fn bad_input_is_an_error() {
        assert!(matches!(
            Selector::new(Budget::Ratio(0.5)).select(&[0.1, f32::NAN]),
            Err(Error::NonFiniteScore { index: 1, .. })
        ));
        assert!(Selector::new(Budget::Ratio(1.5)).select(&[0.1]).is_err());
        assert!(Selector::new(Budget::Mass(0.0)).select(&[0.1]).is_err());
        assert!(Selector::new(Budget::Tokens(2)).protect(2, 1).select(&[0.1; 8]).is_err());
        assert!(Selector::new(Budget::Ratio(0.5)).clamp(4, Some(2)).select(&[0.1; 8]).is_err());
    }

    #[test]
    fn empty_input_keeps_nothing() {
        assert!(Selector::new(Budget::Ratio(0.5)).select(&[]).unwrap().is_empty());
    }
}
