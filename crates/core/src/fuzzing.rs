//! The checks a fuzz target runs on one input, shared with the tests that stand in for
//! fuzzing in CI (`cargo xtask fuzz` runs the targets themselves).

use crate::Policy;

/// Any text handed to the policy parser gives a policy or an error, never a panic. A policy
/// that parses also computes its budgets and selects tokens with them on a few cache sizes,
/// and writes back to TOML that parses to the same policy; a failure of the round trip
/// panics. Returns whether `data` parsed.
pub fn policy_text(data: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(data) else { return false };
    let Ok(policy) = Policy::from_toml(text) else { return false };
    let scores: Vec<f32> = (0..1000).map(|i| ((i * 37) % 101) as f32 / 101.0).collect();
    for n_layers in [1, 30] {
        let _ = policy.check_model(n_layers);
        if let Some(kv) = &policy.kv {
            for n_tokens in [0, 1, 7, 1000] {
                if let Ok(budgets) = kv.layer_budgets(n_tokens, n_layers) {
                    for budget in budgets {
                        let _ = kv.selector.select_with(&scores[..n_tokens], budget);
                    }
                }
            }
        }
    }
    if let Some(prefill) = &policy.prefill {
        for stage in 0..prefill.layers.len() {
            for n_tokens in [1, 7, 1000] {
                let _ = prefill.selector.select_with(&scores[..n_tokens], prefill.budget(stage, n_tokens));
            }
        }
    }
    if let Some(decode) = &policy.decode {
        let _ = decode.selector.select(&scores[..decode.budget.min(scores.len())]);
    }
    let written = policy.to_file().to_toml().expect("a valid policy writes as TOML");
    let again = Policy::from_toml(&written).expect("a written policy parses");
    assert_eq!(policy, again, "round trip through\n{written}");
    true
}
