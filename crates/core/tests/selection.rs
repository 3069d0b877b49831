//! Property tests of the selection invariants.

use proptest::prelude::*;
use sieve_core::select::{MASS_TOLERANCE, mass_weights, protected_count};
use sieve_core::{Budget, Selector};

fn scores() -> impl Strategy<Value = Vec<f32>> {
    // Coarse values so that ties are frequent.
    prop::collection::vec((0u8..16).prop_map(|x| x as f32 / 8.0), 0..96)
}

fn check_sorted_unique(kept: &[usize], n: usize) {
    assert!(kept.windows(2).all(|w| w[0] < w[1]), "not sorted and unique: {kept:?}");
    assert!(kept.iter().all(|&i| i < n));
}

proptest! {
    #[test]
    fn ratio_selection_invariants(s in scores(), r in 0.01f64..=1.0, sinks in 0usize..6, recent in 0usize..6, min_keep in 0usize..8) {
        let sel = Selector::new(Budget::Ratio(r)).protect(sinks, recent).clamp(min_keep, None);
        let kept = sel.select(&s).unwrap();
        let n = s.len();
        check_sorted_unique(&kept, n);
        let target = ((r * n as f64) - 1e-9).ceil() as usize;
        let expected = target.max(protected_count(n, sinks, recent)).max(min_keep).min(n);
        prop_assert_eq!(kept.len(), expected);
        for i in (0..sinks.min(n)).chain(n.saturating_sub(recent)..n) {
            prop_assert!(kept.contains(&i), "protected token {} dropped: {:?}", i, kept);
        }
    }

    #[test]
    fn fixed_budget_is_never_exceeded(s in scores(), budget in 1usize..40, sinks in 0usize..4, recent in 0usize..4, max in prop::option::of(8usize..40)) {
        prop_assume!(sinks + recent <= budget.min(max.unwrap_or(usize::MAX)));
        let sel = Selector::new(Budget::Tokens(budget)).protect(sinks, recent).clamp(0, max);
        let kept = sel.select(&s).unwrap();
        check_sorted_unique(&kept, s.len());
        prop_assert!(kept.len() <= budget);
        prop_assert!(kept.len() <= max.unwrap_or(usize::MAX));
        prop_assert_eq!(kept.len(), budget.min(max.unwrap_or(usize::MAX)).min(s.len()));
        let n = s.len();
        for i in (0..sinks.min(n)).chain(n.saturating_sub(recent)..n) {
            prop_assert!(kept.contains(&i));
        }
    }

    #[test]
    fn kept_tokens_outscore_dropped_ones(s in scores(), budget in 1usize..40) {
        let kept = Selector::new(Budget::Tokens(budget)).select(&s).unwrap();
        for (i, &x) in s.iter().enumerate() {
            if kept.contains(&i) { continue; }
            for &k in &kept {
                // a dropped token never beats a kept one, and on a tie the kept one is earlier
                prop_assert!(s[k] > x || (s[k] == x && k < i), "dropped {} ({}) over kept {} ({})", i, x, k, s[k]);
            }
        }
    }

    #[test]
    fn mass_selection_reaches_p_minimally(s in scores(), p in 0.05f64..=1.0) {
        prop_assume!(!s.is_empty());
        let kept = Selector::new(Budget::Mass(p)).select(&s).unwrap();
        check_sorted_unique(&kept, s.len());
        let w = mass_weights(&s);
        let mass: f64 = kept.iter().map(|&i| w[i]).sum();
        prop_assert!(mass >= p - MASS_TOLERANCE, "mass {} < p {}", mass, p);
        // minimal: dropping the weakest kept token falls below p
        if let Some(&weakest) = kept.iter().min_by(|&&a, &&b| w[a].total_cmp(&w[b]).then(b.cmp(&a))) {
            prop_assert!(mass - w[weakest] < p + 1e-9 || w[weakest] == 0.0);
        }
    }

    #[test]
    fn kept_set_is_monotone_in_the_ratio(s in scores(), a in 0.01f64..=1.0, b in 0.01f64..=1.0, sinks in 0usize..4, recent in 0usize..4) {
        let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
        let small = Selector::new(Budget::Ratio(lo)).protect(sinks, recent).select(&s).unwrap();
        let large = Selector::new(Budget::Ratio(hi)).protect(sinks, recent).select(&s).unwrap();
        prop_assert!(small.iter().all(|i| large.contains(i)), "{:?} not within {:?}", small, large);
    }

    #[test]
    fn adaptive_count_follows_the_input(peak in 0usize..64, n in 64usize..128) {
        // A peaked distribution needs far fewer tokens than a flat one for the same mass.
        let mut peaked = vec![0.001f32; n];
        peaked[peak] = 1.0;
        let flat = vec![1.0f32; n];
        let sel = Selector::new(Budget::Mass(0.9));
        let k_peaked = sel.select(&peaked).unwrap().len();
        let k_flat = sel.select(&flat).unwrap().len();
        prop_assert!(k_peaked < n / 4, "{}", k_peaked);
        prop_assert!(k_flat >= (0.9 * n as f64).floor() as usize);
    }
}
