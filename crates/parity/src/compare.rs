//! Pairwise comparison of two backends' runs of the suite, and the check of every measure
//! against its tolerance.

use serde::Serialize;

use crate::suite::CaseRun;
use crate::tolerances as tol;

/// The measures of one case for one pair of backends.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    /// `a vs b`.
    pub pair: String,
    pub prompt: String,
    pub policy: String,
    pub logits_max_abs: f64,
    pub logits_cosine: f64,
    /// Fraction of (layer, KV head) pairs whose kept positions are identical.
    pub kept_exact: f64,
    /// Mean Jaccard index of the kept positions per layer and KV head.
    pub kept_jaccard: f64,
    /// Greedy tokens that agree before the first difference.
    pub generation_prefix: usize,
    /// Where the greedy tokens first differ, how far apart each backend put the two tokens'
    /// logits (its own choice's minus the other's), the larger of the two; infinite when
    /// either token is not among the other backend's candidates. `None` when all agree.
    pub generation_gap: Option<f64>,
    /// Relative difference of the perplexity, where measured.
    pub perplexity_rel: Option<f64>,
    pub kv_bytes: [usize; 2],
    pub kv_bytes_end: [usize; 2],
}

/// A measure past its tolerance.
#[derive(Debug, Clone, Serialize)]
pub struct Violation {
    pub pair: String,
    pub prompt: String,
    pub policy: String,
    pub measure: &'static str,
    pub value: f64,
    pub tolerance: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {} is {} (tolerance {}) on prompt `{}` with policy `{}`",
            self.pair, self.measure, self.value, self.tolerance, self.prompt, self.policy
        )
    }
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let (mut ab, mut aa, mut bb) = (0f64, 0f64, 0f64);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (x as f64, y as f64);
        ab += x * y;
        aa += x * x;
        bb += y * y;
    }
    if aa == 0.0 || bb == 0.0 { if aa == bb { 1.0 } else { 0.0 } } else { ab / (aa.sqrt() * bb.sqrt()) }
}

fn jaccard(a: &[usize], b: &[usize]) -> f64 {
    // Both sorted and unique (cache positions increase).
    let (mut i, mut j, mut both) = (0, 0, 0usize);
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                both += 1;
                i += 1;
                j += 1;
            }
        }
    }
    let union = a.len() + b.len() - both;
    if union == 0 { 1.0 } else { both as f64 / union as f64 }
}

/// Compares the runs of backends `a` and `b` case by case (same suite, same order).
pub fn compare(names: [&str; 2], a: &[CaseRun], b: &[CaseRun]) -> Vec<Comparison> {
    a.iter()
        .zip(b)
        .map(|(x, y)| {
            let logits_max_abs = x.logits.iter().zip(&y.logits).map(|(p, q)| (p - q).abs() as f64).fold(0.0, f64::max);
            let layers = x.kept.len().max(1);
            let exact = x.kept.iter().zip(&y.kept).filter(|(p, q)| p == q).count();
            let jac: f64 = x.kept.iter().zip(&y.kept).map(|(p, q)| jaccard(p, q)).sum();
            let prefix = x.tokens.iter().zip(&y.tokens).take_while(|(p, q)| p == q).count();
            let generation_gap = (prefix < x.tokens.len().min(y.tokens.len())).then(|| {
                let (a, b) = (x.tokens[prefix], y.tokens[prefix]);
                let gap = |run: &CaseRun, chosen: u32, other: u32| {
                    let logit = |t: u32| run.candidates.get(prefix)?.iter().find(|c| c.0 == t).map(|c| f64::from(c.1));
                    logit(chosen).zip(logit(other)).map_or(f64::INFINITY, |(p, q)| p - q)
                };
                gap(x, a, b).max(gap(y, b, a))
            });
            let perplexity_rel = match (x.perplexity, y.perplexity) {
                (Some(p), Some(q)) => Some((p - q).abs() / q.abs().max(f64::MIN_POSITIVE)),
                _ => None,
            };
            Comparison {
                pair: format!("{} vs {}", names[0], names[1]),
                prompt: x.prompt.clone(),
                policy: x.policy.clone(),
                logits_max_abs: if x.logits.len() == y.logits.len() { logits_max_abs } else { f64::INFINITY },
                logits_cosine: cosine(&x.logits, &y.logits),
                kept_exact: if x.kept.len() == y.kept.len() { exact as f64 / layers as f64 } else { 0.0 },
                kept_jaccard: jac / layers as f64,
                generation_prefix: prefix,
                generation_gap,
                perplexity_rel,
                kv_bytes: [x.kv_bytes_prefill, y.kv_bytes_prefill],
                kv_bytes_end: [x.kv_bytes_end, y.kv_bytes_end],
            }
        })
        .collect()
}

/// `v <= max`, false for NaN.
fn at_most(v: f64, max: f64) -> bool {
    v <= max
}

/// `v >= min`, false for NaN.
fn at_least(v: f64, min: f64) -> bool {
    v >= min
}

/// The measures of `c` past the bounds `b` (see [`tol::Bounds::of`]).
pub fn violations(c: &Comparison, b: &tol::Bounds) -> Vec<Violation> {
    let mut out = Vec::new();
    let mut check = |failed: bool, measure: &'static str, value: f64, tolerance: String| {
        if failed {
            out.push(Violation {
                pair: c.pair.clone(),
                prompt: c.prompt.clone(),
                policy: c.policy.clone(),
                measure,
                value,
                tolerance,
            });
        }
    };
    // NaN fails every check.
    check(
        !at_most(c.logits_max_abs, b.logits_max_abs),
        "logits max abs difference",
        c.logits_max_abs,
        format!("<= {:e}", b.logits_max_abs),
    );
    check(
        !at_least(c.logits_cosine, b.logits_cosine_min),
        "logits cosine",
        c.logits_cosine,
        format!(">= {}", b.logits_cosine_min),
    );
    check(
        !at_least(c.kept_exact, b.kept_exact_min),
        "kept-positions exact-match rate",
        c.kept_exact,
        format!(">= {}", b.kept_exact_min),
    );
    check(
        !at_least(c.kept_jaccard, b.kept_jaccard_min),
        "kept-positions Jaccard",
        c.kept_jaccard,
        format!(">= {}", b.kept_jaccard_min),
    );
    // Fewer agreeing tokens pass only where the two tokens tied within the logits' bound.
    let tied = c.generation_gap.is_some_and(|gap| at_most(gap, tol::TIE_LOGITS * b.logits_max_abs));
    check(
        c.generation_prefix < b.generation_prefix_min && !tied,
        "greedy tokens agreeing",
        c.generation_prefix as f64,
        format!(">= {}, or a tie within {:e}", b.generation_prefix_min, tol::TIE_LOGITS * b.logits_max_abs),
    );
    if let Some(r) = c.perplexity_rel {
        check(!at_most(r, b.perplexity_rel), "perplexity relative difference", r, format!("<= {:e}", b.perplexity_rel));
    }
    for (what, [p, q]) in [("KV bytes after prefill", c.kv_bytes), ("KV bytes after generation", c.kv_bytes_end)] {
        let apart = p.abs_diff(q) as f64 > b.kv_bytes_rel * p.max(q) as f64;
        let tolerance =
            if b.kv_bytes_rel == 0.0 { "difference 0".into() } else { format!("relative <= {:e}", b.kv_bytes_rel) };
        check(apart, what, p as f64 - q as f64, tolerance);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jaccard_and_cosine_of_known_sets() {
        assert_eq!(jaccard(&[1, 2, 3], &[1, 2, 3]), 1.0);
        assert_eq!(jaccard(&[1, 2, 3], &[2, 3, 4]), 0.5);
        assert_eq!(jaccard(&[], &[]), 1.0);
        assert!((cosine(&[1.0, 0.0], &[0.0, 1.0])).abs() < 1e-12);
        assert!((cosine(&[1.0, 2.0], &[2.0, 4.0]) - 1.0).abs() < 1e-12);
    }

    fn run(logits: Vec<f32>, kept: Vec<Vec<usize>>, tokens: Vec<u32>) -> CaseRun {
        CaseRun {
            prompt: "p".into(),
            policy: "q".into(),
            logits,
            kept,
            candidates: tokens.iter().map(|&t| vec![(t, 1.0)]).collect(),
            tokens,
            kv_bytes_prefill: 10,
            kv_bytes_end: 12,
            perplexity: Some(20.0),
        }
    }

    #[test]
    fn each_measure_past_its_tolerance_is_named() {
        let a = run(vec![1.0, 2.0], vec![vec![0, 1, 2]; 2], (0..32).collect());
        let same = compare(["a", "b"], std::slice::from_ref(&a), std::slice::from_ref(&a));
        assert!(violations(&same[0], &tol::Bounds::of(false, false)).is_empty());
        let mut b = run(vec![1.0, 2.01], vec![vec![0, 1, 3], vec![0, 1, 2]], (0..32).map(|t| t.min(20)).collect());
        b.perplexity = Some(20.1);
        b.kv_bytes_end = 8;
        let c = compare(["a", "b"], &[a], &[b]);
        let found: Vec<&str> = violations(&c[0], &tol::Bounds::of(false, false)).iter().map(|v| v.measure).collect();
        assert_eq!(
            found,
            [
                "logits max abs difference",
                "logits cosine",
                "kept-positions exact-match rate",
                "kept-positions Jaccard",
                "greedy tokens agreeing",
                "perplexity relative difference",
                "KV bytes after generation"
            ]
        );
        let line = violations(&c[0], &tol::Bounds::of(false, false))[0].to_string();
        assert!(line.starts_with("a vs b: logits max abs difference is 0.0"), "{line}");
    }

    #[test]
    fn generations_may_part_only_at_a_tie() {
        let a = run(vec![1.0, 2.0], vec![vec![0, 1, 2]], (0..32).collect());
        let mut b = a.clone();
        // From token 5 on, `b` continues with token 99 where `a` chose 5.
        b.tokens[5..].fill(99);
        let parted = |a_gap: f32, b_gap: f32| {
            let (mut a, mut b) = (a.clone(), b.clone());
            a.candidates[5] = vec![(5, 10.0), (99, 10.0 - a_gap)];
            b.candidates[5] = vec![(99, 10.0), (5, 10.0 - b_gap)];
            let c = compare(["a", "b"], &[a], &[b]);
            (c[0].generation_gap, violations(&c[0], &tol::Bounds::of(true, false)).len())
        };
        // Within twice the packed bound (4e-3) on both sides: a tie, no violation.
        let (gap, found) = parted(1e-3, 3e-3);
        assert!((gap.unwrap() - 3e-3).abs() < 1e-6 && found == 0, "{gap:?} {found}");
        // One side 1e-1 apart: a real difference.
        assert_eq!(parted(1e-3, 1e-1).1, 1);
        // The other token not among a backend's candidates: a real difference.
        let mut far = b.clone();
        far.candidates[5] = vec![(99, 10.0)];
        let c = compare(["a", "b"], &[a], &[far]);
        assert_eq!(c[0].generation_gap, Some(f64::INFINITY));
        assert_eq!(violations(&c[0], &tol::Bounds::of(true, false)).len(), 1);
    }

    #[test]
    fn half_products_have_their_own_bounds() {
        let logits: Vec<f32> = (0..100).map(|i| (i as f32 * 0.37).sin() * 10.0).collect();
        let a = run(logits.clone(), vec![(0..100).collect(); 2], (0..32).collect());
        // What bf16 inputs do: logits a few tenths apart, one kept position of 100
        // swapped, greedy tokens apart after 10, perplexity 1% apart, KV bytes 0.5% apart.
        let mut b = run(
            logits.iter().enumerate().map(|(i, v)| v + 0.3 * ((i % 3) as f32 - 1.0)).collect(),
            vec![(1..101).collect(), (0..100).collect()],
            (0..32).map(|t| if t < 10 { t } else { 99 }).collect(),
        );
        b.perplexity = Some(20.2);
        (b.kv_bytes_prefill, b.kv_bytes_end) = (1000, 1005);
        let mut a = a;
        (a.kv_bytes_prefill, a.kv_bytes_end) = (1000, 1000);
        let c = compare(["a", "b"], std::slice::from_ref(&a), std::slice::from_ref(&b));
        assert!(violations(&c[0], &tol::Bounds::of(true, true)).is_empty());
        assert!(violations(&c[0], &tol::Bounds::of(true, false)).len() >= 5);
        // A wrong layout: logits of another shape altogether.
        let wrong = run(logits.iter().rev().copied().collect(), b.kept.clone(), b.tokens.clone());
        let c = compare(["a", "b"], &[a], &[wrong]);
        let found: Vec<&str> = violations(&c[0], &tol::Bounds::of(true, true)).iter().map(|v| v.measure).collect();
        assert!(found.contains(&"logits cosine"), "{found:?}");
    }
}
