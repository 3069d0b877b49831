//! A deliberately perturbed backend must fail parity, with a message that names the pair,
//! the measure and the number; the same run unperturbed passes.

use std::path::PathBuf;

use sieve_parity::Options;
use sieve_runtime::BackendKind;

fn options(perturb: Option<BackendKind>) -> Options {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let data = std::env::var_os("SIEVE_DATA").map_or_else(|| root.join("../shared/data"), PathBuf::from);
    Options {
        backends: vec![BackendKind::Candle, BackendKind::Ort],
        model: sieve_fetch::model::cached().expect("the default model (cargo xtask fetch-model)"),
        dtype: sieve_engine::Dtype::Native,
        text: data.join("wikitext-2/wiki.test.raw"),
        configs: root.join("configs"),
        prompts: vec!["chat".into()],
        policies: vec!["none".into(), "snapkv@".into()],
        perturb,
    }
}

#[test]
fn a_perturbed_backend_fails_parity_by_name() {
    let clean = sieve_parity::run(&options(None), &mut |_| {}).unwrap();
    assert_eq!(clean.comparisons.len(), 2);
    assert!(clean.violations.is_empty(), "{:?}", clean.violations);

    let bad = sieve_parity::run(&options(Some(BackendKind::Ort)), &mut |_| {}).unwrap();
    assert!(!bad.violations.is_empty());
    let v = &bad.violations[0];
    let line = v.to_string();
    assert_eq!(v.pair, "candle vs ort");
    assert_eq!(v.measure, "logits max abs difference");
    assert!(v.value > 1e-3, "{line}");
    assert!(line.starts_with("candle vs ort: logits max abs difference is "), "{line}");
    assert!(line.contains(&format!("{}", v.value)), "{line}");
}

#[test]
fn the_binary_exits_non_zero_and_names_the_failure() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let o = options(Some(BackendKind::Ort));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sieve-parity"))
        .args(["--backends", "candle,ort", "--prompts", "chat", "--policies", "none", "--perturb", "ort", "--text"])
        .arg(&o.text)
        .current_dir(&root)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("parity: candle vs ort: logits max abs difference is 0.0"), "{stderr}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("parity FAILED"));
}
