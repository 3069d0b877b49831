//! Policy files: round trips, defaults and rejections.

use sieve_core::policy::{PolicyFile, PrefillKeep, ScheduleKind};
use sieve_core::{Budget, Policy, ScorerSpec};

const FULL: &str = r#"
name = "combined"
description = "prefill pruning, SnapKV eviction and a decode budget"

[prefill]
layers = [8, 16]
keep = [0.6, 0.4]
sinks = 4
[prefill.scorer]
kind = "last-query"
aggregation = "max"

[kv]
keep = 0.25
schedule = "pyramid"
beta = 10
recent = 16
[kv.scorer]
kind = "snapkv"
window = 16
kernel = 7
pooling = "max"

[decode]
budget = 256
every = 8
sinks = 4
recent = 32
positions = "cache"
[decode.scorer]
kind = "h2o"
"#;

#[test]
fn a_full_policy_parses_and_round_trips() {
    let policy = Policy::from_toml(FULL).unwrap();
    let prefill = policy.prefill.as_ref().unwrap();
    assert_eq!(prefill.layers, vec![8, 16]);
    assert_eq!(prefill.keep, PrefillKeep::Fractions(vec![0.6, 0.4]));
    assert_eq!(prefill.selector.recent, 1, "the last token is always protected");
    let kv = policy.kv.as_ref().unwrap();
    assert_eq!(kv.budget, Budget::Ratio(0.25));
    assert_eq!(kv.schedule, ScheduleKind::Pyramid);
    assert_eq!(kv.beta, 10.0);
    assert_eq!(policy.decode.as_ref().unwrap().budget, 256);
    assert_eq!(policy.decode.as_ref().unwrap().positions, sieve_core::Positions::Cache);

    let text = policy.to_file().to_toml().unwrap();
    let again = Policy::from_toml(&text).unwrap();
    assert_eq!(policy, again, "round trip through:\n{text}");
}

#[test]
fn defaults_fill_in_the_scorers() {
    let p = Policy::from_toml("[kv]\nkeep = 0.5\n").unwrap();
    assert!(matches!(p.kv.unwrap().scorer, ScorerSpec::Snapkv { window: 32, kernel: 5, .. }));
    let p = Policy::from_toml("[decode]\nbudget = 64\n").unwrap();
    assert_eq!(p.decode.as_ref().unwrap().positions, sieve_core::Positions::Original);
    assert!(matches!(p.decode.unwrap().scorer, ScorerSpec::H2o { .. }));
    let p = Policy::from_toml("[prefill]\nlayers = [3]\nkeep = 0.5\n").unwrap();
    assert!(matches!(p.prefill.unwrap().scorer, ScorerSpec::LastQuery { .. }));
    assert!(Policy::from_toml("").unwrap().is_none());
}

#[test]
fn scorer_aliases_are_accepted() {
    for kind in ["tova", "lazyllm", "last-query"] {
        let p = Policy::from_toml(&format!("[kv]\nkeep = 0.5\n[kv.scorer]\nkind = \"{kind}\"\n")).unwrap();
        assert!(matches!(p.kv.unwrap().scorer, ScorerSpec::LastQuery { .. }), "{kind}");
    }
    let p = Policy::from_toml("[kv]\ntokens = 64\nsinks = 4\n[kv.scorer]\nkind = \"streaming\"\n").unwrap();
    assert_eq!(p.kv.unwrap().scorer, ScorerSpec::Recency {});
}

fn rejects(text: &str, needle: &str) {
    let err = Policy::from_toml(text).expect_err(text).to_string();
    assert!(err.contains(needle), "error for\n{text}\nwas `{err}`, expected it to mention `{needle}`");
}

#[test]
fn unknown_keys_are_rejected() {
    rejects("kepp = 0.5\n", "kepp");
    rejects("[kv]\nkeep = 0.5\nwindow = 3\n", "window");
    rejects("[kv]\nkeep = 0.5\n[kv.scorer]\nkind = \"knorm\"\nwindow = 4\n", "window");
    rejects("[kv]\nkeep = 0.5\n[kv.scorer]\nkind = \"magic\"\n", "magic");
    rejects("[prefetch]\n", "prefetch");
    rejects("[decode]\nbudget = 64\npositions = \"text\"\n", "original");
}

#[test]
fn out_of_range_values_name_key_and_range() {
    rejects("[kv]\nkeep = 1.5\n", "`kv.keep` = 1.5 is out of range: (0, 1]");
    rejects("[kv]\nkeep = 0.0\n", "`kv.keep` = 0");
    rejects("[kv]\nmass = -0.1\n", "`kv.mass` = -0.1");
    rejects("[kv]\ntokens = 0\n", "`kv.tokens` = 0");
    rejects("[kv]\ntokens = 8\nsinks = 4\nrecent = 8\n", "do not fit");
    rejects("[kv]\nkeep = 0.5\nmass = 0.5\n", "exactly one");
    rejects("[kv]\nkeep = 0.5\nschedule = \"pyramid\"\nbeta = 0.5\n", "`kv.beta` = 0.5");
    rejects("[kv]\nmass = 0.5\nschedule = \"pyramid\"\n", "pyramid");
    rejects("[kv]\nkeep = 0.5\nbeta = 4\n", "beta");
    rejects("[kv]\nkeep = 0.5\n[kv.scorer]\nkind = \"snapkv\"\nkernel = 4\n", "`kv.scorer.kernel` = 4");
    rejects("[prefill]\nlayers = [0]\nkeep = 0.5\n", "`prefill.layers` = 0");
    rejects("[prefill]\nlayers = [4, 2]\nkeep = [0.5, 0.4]\n", "strictly increase");
    rejects("[prefill]\nlayers = [2, 4]\nkeep = [0.5]\n", "equal length");
    rejects("[prefill]\nlayers = [2]\nkeep = [1.2]\n", "`prefill.keep[0]` = 1.2");
    rejects("[decode]\nbudget = 8\nsinks = 4\nrecent = 4\n", "`decode.budget` = 8");
    rejects("[decode]\nbudget = 64\nevery = 0\n", "`decode.every` = 0");
    rejects("[kv]\nkeep = \"half\"\n", "keep");
    rejects("[kv]\nkeep = 0.5\n[kv.scorer]\nkind = \"expected-attention\"\nfuture = 0\n", "`kv.scorer.future` = 0");
    rejects("[decode]\nbudget = 64\n[decode.scorer]\nkind = \"expected-attention\"\n", "use it in [kv]");
    rejects("[kv]\nkeep = 0.5\n[kv.scorer]\nkind = \"expected-attention\"\nwindow = 8\n", "window");
}

#[test]
fn layers_are_checked_against_the_model() {
    let p = Policy::from_toml("[prefill]\nlayers = [10, 40]\nkeep = [0.5, 0.3]\n").unwrap();
    let err = p.check_model(30).unwrap_err().to_string();
    assert!(err.contains("`prefill.layers` = 40") && err.contains("30 layers"), "{err}");
    assert!(p.check_model(41).is_ok());
}

#[test]
fn pyramid_layer_budgets_sum_to_the_uniform_total() {
    let p = Policy::from_toml("[kv]\nkeep = 0.25\nschedule = \"pyramid\"\n").unwrap();
    let budgets = p.kv.unwrap().layer_budgets(1000, 30).unwrap();
    let total: usize = budgets
        .iter()
        .map(|b| match b {
            Budget::Tokens(t) => *t,
            _ => panic!("{b:?}"),
        })
        .sum();
    assert_eq!(total, 7500);
}

#[test]
fn file_form_serialises_every_section() {
    let file = PolicyFile::from_toml(FULL).unwrap();
    let text = file.to_toml().unwrap();
    assert_eq!(PolicyFile::from_toml(&text).unwrap(), file);
}

#[test]
fn command_line_overrides_change_the_same_fields() {
    let mut file = PolicyFile::from_toml("[kv]\ntokens = 64\n").unwrap();
    file.override_keep(0.25);
    file.override_scorer("knorm").unwrap();
    let p = file.validate().unwrap();
    let kv = p.kv.unwrap();
    assert_eq!(kv.budget, Budget::Ratio(0.25));
    assert_eq!(kv.scorer, ScorerSpec::Knorm {});

    let mut none = PolicyFile::default();
    none.override_keep(0.5);
    assert_eq!(none.validate().unwrap().kv.unwrap().budget, Budget::Ratio(0.5));

    let mut staged = PolicyFile::from_toml("[prefill]\nlayers = [4, 8]\nkeep = [0.8, 0.4]\n").unwrap();
    staged.override_keep(0.2);
    assert_eq!(staged.validate().unwrap().prefill.unwrap().keep, PrefillKeep::Fractions(vec![0.4, 0.2]));

    let mut bad = PolicyFile::default();
    assert!(bad.override_scorer("magic").unwrap_err().to_string().contains("magic"));
    let mut out_of_range = PolicyFile::default();
    out_of_range.override_keep(2.0);
    assert!(out_of_range.validate().unwrap_err().to_string().contains("`kv.keep` = 2"));
}

#[test]
fn pyramid_budgets_never_drop_below_the_protected_tokens() {
    let p = Policy::from_toml("[kv]\nkeep = 0.25\nschedule = \"pyramid\"\nsinks = 4\nrecent = 32\n").unwrap();
    let budgets = p.kv.unwrap().layer_budgets(400, 30).unwrap();
    assert!(budgets.iter().all(|b| matches!(b, Budget::Tokens(t) if *t >= 36)), "{budgets:?}");
}

/// The pyramid is built over the budget left after the protected tokens, which every
/// layer adds on top: the last layer of 30 at keep 0.25 of 2,048 still chooses tokens by
/// score, and the total stays the uniform one.
#[test]
fn pyramid_spreads_the_unprotected_budget_and_adds_the_protected_on_top() {
    let p = Policy::from_toml("[kv]\nkeep = 0.25\nschedule = \"pyramid\"\nsinks = 4\nrecent = 32\n").unwrap();
    let budgets: Vec<usize> =
        p.kv.unwrap()
            .layer_budgets(2048, 30)
            .unwrap()
            .into_iter()
            .map(|b| match b {
                Budget::Tokens(t) => t,
                other => panic!("{other:?}"),
            })
            .collect();
    // (512 - 36) / 20 = 23.8 chosen by score in the last layer, 36 protected.
    assert!((59..=60).contains(&budgets[29]), "{budgets:?}");
    assert!(budgets.windows(2).all(|w| w[0] >= w[1]), "{budgets:?}");
    let total: usize = budgets.iter().sum();
    assert!(total.abs_diff(512 * 30) <= 1, "{total}");
}

/// `--keep` alone builds SnapKV with its default window of 32, and the window is
/// protected even though the policy's `recent` is 0: the last prompt tokens (the final one
/// included) are never evicted.
#[test]
fn snapkv_policies_protect_the_observation_window() {
    let mut file = PolicyFile::default();
    file.override_keep(0.25);
    let kv = file.validate().unwrap().kv.unwrap();
    assert_eq!(kv.selector.recent, 32);
    let kept = kv
        .selector
        .select_with(&[1.0f32; 100].iter().enumerate().map(|(i, _)| 100.0 - i as f32).collect::<Vec<_>>(), kv.budget)
        .unwrap();
    assert!((68..100).all(|i| kept.contains(&i)), "{kept:?}");
    // A larger `recent` stays; other scorers keep theirs.
    let p = Policy::from_toml("[kv]\nkeep = 0.5\nrecent = 40\n").unwrap();
    assert_eq!(p.kv.unwrap().selector.recent, 40);
    let p = Policy::from_toml("[kv]\nkeep = 0.5\nrecent = 3\n[kv.scorer]\nkind = \"knorm\"\n").unwrap();
    assert_eq!(p.kv.unwrap().selector.recent, 3);
}

#[test]
fn prefill_budgets_of_short_prompts_cover_the_protected_tokens() {
    let p = Policy::from_toml("[prefill]\nlayers = [2]\nkeep = 0.4\nsinks = 4\nrecent = 16\n").unwrap();
    let prefill = p.prefill.unwrap();
    assert_eq!(prefill.budget(0, 37), Budget::Tokens(20));
    assert_eq!(prefill.budget(0, 1000), Budget::Tokens(400));
    let scores = vec![0.5f32; 37];
    let kept = prefill.selector.select_with(&scores, prefill.budget(0, 37)).unwrap();
    assert_eq!(kept.len(), 20);
}

#[test]
fn syntax_errors_are_one_line_with_line_column_and_text() {
    let err = Policy::from_toml("[kv]\nkeep = 0.5\nwindow = 3\n").unwrap_err().to_string();
    assert!(err.starts_with("policy file, line 3, column 1 (`window = 3`): unknown field `window`"), "{err}");
    let err = Policy::from_toml("[kv]\nkeep = \n").unwrap_err().to_string();
    assert!(err.contains("line 2, column 8 (`keep =`)") && !err.contains('\n'), "{err}");
    // Columns count characters, not bytes.
    let err = Policy::from_toml("name = \"é\"\nkeep = 1\n").unwrap_err().to_string();
    assert!(err.contains("line 2, column 1") && !err.contains('\n'), "{err}");
    let err = sieve_core::policy::PolicyFile::default().override_scorer("magic").unwrap_err().to_string();
    assert!(err.contains("scorer `magic`: unknown variant `magic`") && !err.contains('\n'), "{err}");
}

#[test]
fn novelty_budgets_follow_repetition() {
    use sieve_core::policy::{PrefillKeep, novelty};
    let repeated: Vec<u32> = (0..400).map(|i| i % 10).collect();
    let fresh: Vec<u32> = (0..400).collect();
    assert!(novelty(&repeated, 4) < 0.05, "{}", novelty(&repeated, 4));
    assert_eq!(novelty(&fresh, 4), 1.0);
    let p = PolicyFile::from_toml("[prefill]\nlayers = [4, 12]\nnovelty = [0.3, 0.7]\n").unwrap().validate().unwrap();
    let prefill = p.prefill.unwrap();
    let fractions = |tokens: &[u32]| match prefill.for_prompt(tokens).keep {
        PrefillKeep::Fractions(f) => f,
        other => panic!("{other:?}"),
    };
    assert_eq!(fractions(&fresh), vec![0.85, 0.7]);
    let r = fractions(&repeated);
    assert!(r[1] < 0.32 && r[1] >= 0.3 && r[0] > r[1], "{r:?}");
    for bad in ["[0.0, 0.5]", "[0.6, 0.5]", "[0.2, 1.5]"] {
        let err = PolicyFile::from_toml(&format!("[prefill]\nlayers = [4]\nnovelty = {bad}\n"))
            .unwrap()
            .validate()
            .unwrap_err();
        assert!(err.to_string().contains("prefill.novelty"), "{err}");
    }
    let err = PolicyFile::from_toml("[prefill]\nlayers = [4]\nkeep = 0.5\nnovelty = [0.3, 0.6]\n")
        .unwrap()
        .validate()
        .unwrap_err();
    assert!(err.to_string().contains("exactly one of `keep`, `mass` or `novelty`"), "{err}");
}

#[test]
fn revival_is_a_lazy_option_that_round_trips_and_is_range_checked() {
    let p = Policy::from_toml("[prefill]\nlayers = [4, 12]\nkeep = [0.6, 0.4]\nrevive = 8\n").unwrap();
    assert_eq!(p.prefill.as_ref().unwrap().revive, 8);
    assert!(p.revives());
    let text = p.to_file().to_toml().unwrap();
    assert!(text.contains("revive = 8"), "{text}");
    assert_eq!(Policy::from_toml(&text).unwrap(), p);
    let off = Policy::from_toml("[prefill]\nlayers = [4]\nkeep = 0.5\n").unwrap();
    assert!(!off.revives());
    assert!(!off.to_file().to_toml().unwrap().contains("revive"), "the default is not written out");
    rejects("[prefill]\nlayers = [4]\nkeep = 0.5\nrevive = 5000\n", "`prefill.revive` = 5000");
    rejects("[prefill]\nkind = \"gemfilter\"\nlayers = [4]\nkeep = 0.5\nrevive = 4\n", "kind = \"lazy\"");
    rejects(
        "[prefill]\nlayers = [4]\nkeep = 0.5\nrevive = 4\n[decode]\nbudget = 64\nselection = \"head\"\n",
        "selection",
    );
    assert!(Policy::from_toml("[prefill]\nlayers = [4]\nkeep = 0.5\nrevive = 4\n[decode]\nbudget = 64\n").is_ok());
    rejects("[prefill]\nlayers = [4]\nkeep = 0.5\nrevive = 4\n[kv]\nkeep = 0.5\nselection = \"head\"\n", "selection");
    rejects("[prefill]\nlayers = [4]\nkeep = 0.5\nrevive = -1\n", "revive");
}

/// What CI runs in place of the `policy` fuzz target (`cargo xtask fuzz` runs that): every
/// preset of `configs/` with each line dropped, and with each number on a line replaced by
/// values at and past the edges of every range. Each text parses or is an error; one that
/// parses computes its budgets and round-trips (`sieve_core::fuzzing::policy_text`).
#[test]
fn every_preset_with_a_line_dropped_or_a_number_changed_parses_or_is_an_error() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs");
    let mut presets: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    presets.retain(|p| p.extension().is_some_and(|e| e == "toml"));
    presets.sort();
    assert!(presets.len() >= 10);
    let values = ["0", "-1", "1", "0.5", "1.5", "1e9", "-0.0", "nan", "inf", "4294967296", "\"x\"", "[]"];
    let (mut parsed, mut refused) = (0, 0);
    let mut count = |text: String| {
        if sieve_core::fuzzing::policy_text(text.as_bytes()) { parsed += 1 } else { refused += 1 }
    };
    for preset in presets {
        let text = std::fs::read_to_string(&preset).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let with = |replacement: &str| {
                let mut changed = lines.clone();
                changed[i] = replacement;
                changed.join("\n")
            };
            count(with(""));
            for (start, end) in numbers_in(line) {
                for value in values {
                    count(with(&format!("{}{value}{}", &line[..start], &line[end..])));
                }
            }
        }
    }
    eprintln!("{parsed} parsed, {refused} refused");
    assert!(parsed > 0 && refused > 0, "{parsed} parsed, {refused} refused");
}

/// The byte ranges of the numbers in `line` (digits with a sign, a point or an exponent),
/// outside quotes and comments.
fn numbers_in(line: &str) -> Vec<(usize, usize)> {
    let code = line.split('#').next().unwrap_or("");
    let bytes = code.as_bytes();
    let (mut out, mut quoted, mut i) = (Vec::new(), false, 0);
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'"' {
            quoted = !quoted;
        } else if !quoted && (b.is_ascii_digit() || (b == b'-' && bytes.get(i + 1).is_some_and(u8::is_ascii_digit))) {
            let start = i;
            i += 1;
            while i < bytes.len() && (bytes[i].is_ascii_digit() || matches!(bytes[i], b'.' | b'e' | b'E' | b'_')) {
                i += 1;
            }
            out.push((start, i));
            continue;
        }
        i += 1;
    }
    out
}
