//! `sieve bench` and `sieve passkey` end to end on the default model (CI fetches it first)
//! and WikiText-2 (`$SIEVE_DATA`, else `shared/data` beside the workspace).

mod common;

use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};

use assert_cmd::Command;
use common::{TempPath as TempDir, sieve, wikitext};
use serde_json::Value;

/// One model run at a time: the timing comparison must not share the cores with another test.
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn run_ok(cmd: &mut Command) -> std::process::Output {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    out
}

fn within_factor(a: f64, b: f64, factor: f64) -> bool {
    a > 0.0 && b > 0.0 && a / b <= factor && b / a <= factor
}

#[test]
fn unpruned_bench_agrees_with_generate() {
    let _serial = serial();
    // The text: WikiText-2's first paragraphs. Its first 128 tokens, decoded, make the
    // prompt of `generate`; they must encode back to the same 128 tokens.
    let text: String = wikitext().chars().take(4000).collect();
    let model_path = common::default_model();
    let model = sieve_engine::Model::load(&model_path).unwrap();
    let ids = model.tokenizer.encode(&text).unwrap();
    assert!(ids.len() > 128 + 64, "{} tokens", ids.len());
    let prompt = model.tokenizer.decode(&ids[..128]).unwrap();
    assert_eq!(model.tokenizer.encode(&prompt).unwrap(), ids[..128], "the prompt does not round-trip");

    let dir = TempDir::dir("bench");
    let (text_file, prompt_file, out) = (dir.0.join("text.txt"), dir.0.join("prompt.txt"), dir.0.join("results"));
    std::fs::write(&text_file, &text).unwrap();
    std::fs::write(&prompt_file, &prompt).unwrap();

    run_ok(
        sieve()
            .args(["bench", "--policies", "none", "--keeps", "1.0", "--lengths", "128", "--decode-tokens", "16"])
            .arg("--file")
            .arg(&text_file)
            .arg("--out")
            .arg(&out),
    );
    let results: Value = serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    let points = results["points"].as_array().unwrap();
    assert_eq!(points.len(), 1, "{results}");
    let bench = &points[0];
    assert_eq!(bench["policy"], "none");

    let generated =
        run_ok(sieve().args(["generate", "--raw", "--json", "-n", "16", "--prompt-file"]).arg(&prompt_file));
    let generated: Value = serde_json::from_slice(&generated.stdout).expect("one JSON record");

    assert_eq!(bench["prompt_tokens"], 128);
    for key in ["prompt_tokens", "generated_tokens", "kv_bytes", "kv_bytes_unpruned"] {
        assert_eq!(bench[key], generated[key], "{key}: bench {bench} generate {generated}");
    }
    // Unpruned: the cache holds every token, after the prefill and at the end.
    assert_eq!(bench["kv_bytes"], bench["kv_bytes_unpruned"]);
    let (prefill, end) = (bench["kv_bytes_prefill"].as_u64().unwrap(), bench["kv_bytes"].as_u64().unwrap());
    assert!(prefill > 0 && prefill % 128 == 0 && end % (prefill / 128) == 0 && end > prefill, "{bench}");
    for key in ["ttft_ms", "decode_tok_s"] {
        let (b, g) = (bench[key].as_f64().unwrap(), generated[key].as_f64().unwrap());
        eprintln!("{key}: bench {b:.1}, generate {g:.1}");
        assert!(within_factor(b, g, 3.0), "{key}: bench {b} vs generate {g}");
    }
    assert!(bench["perplexity"].as_f64().unwrap() > 1.0);
    assert_eq!(bench["ttft_speedup"], 1.0);
    assert!(results["peak_rss_bytes"].as_u64().unwrap() > 0);

    let md = std::fs::read_to_string(out.join("results.md")).unwrap();
    assert!(md.contains("| length | policy | keep | TTFT ms |") && md.contains("| 128 | none | 1.0 |"), "{md}");
    for svg in ["quality.svg", "speedup.svg"] {
        let body = std::fs::read_to_string(out.join(svg)).unwrap();
        assert!(body.contains("<svg") && body.contains("</svg>"), "{svg}: {body}");
        assert!(body.contains("kept fraction"), "{svg} has no axis label");
    }
}

/// One passkey trial per policy: 256 tokens, the key in the middle.
const PASSKEY_256: [&str; 7] = ["passkey", "--lengths", "256", "--depths", "0.5", "--seeds", "1"];

/// `--ppl-windows`: the first window's perplexity and the pooled one over every window are
/// exactly what `sieve perplexity` reports for the same policy, windows and text.
#[test]
fn bench_perplexity_windows_match_sieve_perplexity() {
    let _serial = serial();
    let text: String = wikitext().chars().take(30_000).collect();
    let dir = TempDir::dir("bench-windows");
    let (text_file, out) = (dir.0.join("text.txt"), dir.0.join("results"));
    std::fs::write(&text_file, &text).unwrap();
    let policy = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../configs/lazy-prefill.toml");
    run_ok(
        sieve()
            .args(["bench", "--keeps", "0.5", "--lengths", "256", "--continuation", "32", "--ppl-windows", "3"])
            .args(["--decode-tokens", "2", "--policies"])
            .arg(&policy)
            .arg("--file")
            .arg(&text_file)
            .arg("--out")
            .arg(&out),
    );
    let results: Value = serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    assert_eq!(results["ppl_windows"], 3);
    let points = results["points"].as_array().unwrap();
    assert_eq!(points.len(), 2, "{results}");
    for (point, policy) in points.iter().zip([None, Some(&policy)]) {
        let mut cmd = sieve();
        cmd.args(["perplexity", "--context", "256", "--continuation", "32", "--windows", "3", "--json", "--file"])
            .arg(&text_file);
        if let Some(p) = policy {
            cmd.arg("--policy").arg(p).args(["--keep", "0.5"]);
        }
        let report: Value = serde_json::from_slice(&run_ok(&mut cmd).stdout).unwrap();
        let first = &report["windows"][0];
        let first = (first["nll"].as_f64().unwrap() / first["scored"].as_f64().unwrap()).exp();
        let pooled = report["perplexity"].as_f64().unwrap();
        let close = |a: &Value, b: f64| (a.as_f64().unwrap() - b).abs() <= 1e-9 * b;
        assert!(close(&point["perplexity"], first), "first window: bench {point}, perplexity {report}");
        assert!(close(&point["perplexity_windows"], pooled), "pooled: bench {point}, perplexity {report}");
        // The windows differ, so the pooled figure is not the first window's.
        assert!((first - pooled).abs() > 1e-3 * pooled, "{report}");
    }
    // Each point's speedups are against the unpruned runs timed alternately with it; the
    // baseline's own are its runs.
    let ms = |p: &Value, key: &str| p[key].as_f64().unwrap();
    assert_eq!(ms(&points[0], "baseline_ttft_ms"), ms(&points[0], "ttft_ms"), "{results}");
    assert_eq!(ms(&points[0], "baseline_decode_tok_s"), ms(&points[0], "decode_tok_s"), "{results}");
    let pruned = &points[1];
    assert!(ms(pruned, "baseline_ttft_ms") > 0.0 && ms(pruned, "baseline_decode_tok_s") > 0.0, "{pruned}");
    let speedup = ms(pruned, "baseline_ttft_ms") / ms(pruned, "ttft_ms");
    assert!((ms(pruned, "ttft_speedup") - speedup).abs() <= 1e-9 * speedup, "{pruned}");
    let decode = ms(pruned, "decode_tok_s") / ms(pruned, "baseline_decode_tok_s");
    assert!((ms(pruned, "decode_speedup") - decode).abs() <= 1e-9 * decode, "{pruned}");
    let md = std::fs::read_to_string(out.join("results.md")).unwrap();
    assert!(md.contains("| ppl, 3 windows | change |"), "{md}");
    let frontier = std::fs::read_to_string(out.join("frontier.svg")).unwrap();
    assert!(frontier.contains("perplexity change over all windows"), "{frontier}");
}

#[test]
fn unpruned_model_finds_the_passkey() {
    let _serial = serial();
    let out = run_ok(sieve().args(PASSKEY_256).args(["--policies", "none", "--json"]));
    let report: Value = serde_json::from_slice(&out.stdout).expect("one JSON document");
    let trials = report["trials"].as_array().unwrap();
    assert_eq!(trials.len(), 1, "{report}");
    let t = &trials[0];
    assert_eq!((t["policy"].as_str(), t["prompt_tokens"].as_u64()), (Some("none"), Some(256)));
    let key = t["passkey"].as_str().unwrap();
    assert_eq!(key.len(), 5);
    assert_eq!(t["found"], true, "the unpruned model missed the key: {t}");
    assert!(t["answer"].as_str().unwrap().contains(key));
    assert_eq!(report["by_length"][0]["found"], 1);
}

#[test]
fn passkey_tables_put_the_baseline_beside_each_policy() {
    let _serial = serial();
    // Policy names resolve to configs/<name>.toml in the current directory.
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = run_ok(sieve().current_dir(&root).args(PASSKEY_256).args(["--policies", "snapkv"]));
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("| policy | length | accuracy | unpruned accuracy |"), "{table}");
    assert!(table.contains("| none | 256 | 100% (1/1) | 100% (1/1) |"), "{table}");
    assert!(table.contains("| snapkv | 256 |") && table.contains("| snapkv | 0.5 |"), "{table}");
}

#[test]
fn bad_grids_are_clear_errors() {
    let _serial = serial();
    let cases: &[(&[&str], &str)] = &[
        (&["bench", "--keeps", "1.5"], "--keeps: 1.5"),
        (&["bench", "--policies", "nosuch"], "configs/nosuch.toml does not exist"),
        (&["bench", "--ppl-windows", "0"], "perplexity windows"),
        (&["passkey", "--depths", "2"], "depths: 2 is outside 0..=1"),
        (&["passkey", "--policies", "/nonexistent/p.toml"], "/nonexistent/p.toml"),
        (&["passkey", "--lengths", "10", "--policies", "none"], "too short"),
    ];
    for (args, needle) in cases {
        let out = sieve().args(*args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: expected `{needle}` in `{err}`");
    }
}
