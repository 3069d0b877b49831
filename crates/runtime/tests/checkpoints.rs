//! Hugging Face checkpoints as transformers writes them, one per architecture sieve claims:
//! tiny, randomly initialised models saved by transformers itself (configuration files,
//! safetensors, tokenizer, chat template, generation config) beside the token ids and
//! logits transformers computes for a fixed prompt (`tests/fixtures/hf/*/expected.json`,
//! written by `benches/scripts/hf-fixtures.sh`). Every backend of this build, and the host
//! reference, must reproduce those logits, so a misread key (rotary base or scaling, head
//! size, tied or untied head, biases, norm epsilon) fails here.

use std::path::{Path, PathBuf};

use sieve_backend::reference::HostBackend;
use sieve_backend::{Backend, DeviceSpec};
use sieve_engine::template::Message;
use sieve_engine::{Logits, Model, Policy, Session};
use sieve_runtime::{BackendKind, Runtime};

/// Both sides compute in `f32`; on models this small their logits (magnitudes up to ~10)
/// differ by rounding, about 1e-6. A misread configuration value moves them by 1e-2 or
/// more.
const ATOL: f32 = 1e-4;
/// Relative part of the tolerance (`|a - b| <= ATOL + RTOL * |b|`).
const RTOL: f32 = 1e-4;

fn fixtures() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hf");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("{}: {e}", root.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("config.json").is_file())
        .collect();
    dirs.sort();
    dirs
}

struct Expected {
    prompt: String,
    ids: Vec<u32>,
    chat: String,
    eos: Vec<u32>,
    logits: Vec<Vec<f32>>,
}

fn expected(dir: &Path) -> Expected {
    let text = std::fs::read_to_string(dir.join("expected.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let ids = |key: &str| v[key].as_array().unwrap().iter().map(|i| i.as_u64().unwrap() as u32).collect();
    Expected {
        prompt: v["prompt"].as_str().unwrap().to_string(),
        ids: ids("ids"),
        chat: v["chat"].as_str().unwrap().to_string(),
        eos: ids("eos"),
        logits: v["logits"]
            .as_array()
            .unwrap()
            .iter()
            .map(|row| row.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect())
            .collect(),
    }
}

/// The logits of every prompt position on `backend`, against transformers'.
fn check<B: Backend>(name: &str, backend: &B, want: &Expected) {
    let mut session = Session::new(backend, Policy::none()).unwrap();
    let out = session.prefill(&want.ids, Logits::All).unwrap();
    assert_eq!(out.logits.len(), want.ids.len() * out.vocab, "{name}: logits shape");
    for (t, row) in want.logits.iter().enumerate() {
        for (i, (&a, &b)) in out.row(t).iter().zip(row).enumerate() {
            assert!((a - b).abs() <= ATOL + RTOL * b.abs(), "{name}: position {t}, token {i}: {a} vs transformers {b}");
        }
    }
}

#[test]
fn every_architecture_computes_what_transformers_computes() {
    let dirs = fixtures();
    let names: Vec<String> = dirs.iter().map(|d| d.file_name().unwrap().to_string_lossy().into_owned()).collect();
    assert_eq!(
        names,
        ["gemma3", "llama", "llama3", "mistral", "qwen2"],
        "the fixtures of every architecture sieve claims"
    );
    for dir in dirs {
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let want = expected(&dir);
        let mut model = Model::load(&dir).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(model.tokenizer.encode(&want.prompt).unwrap(), want.ids, "{name}: token ids");
        assert_eq!(model.tokenizer.eos, want.eos, "{name}: end of sequence (generation_config.json)");
        let chat = model.render_chat(&[Message::new("user", "the cat")]).unwrap();
        assert_eq!(chat, want.chat, "{name}: chat template (chat_template.jinja)");
        let weights = model.take_weights();
        check(
            &format!("{name} on the host reference"),
            &HostBackend::new(&model.config, weights.clone()).unwrap(),
            &want,
        );
        for kind in BackendKind::ALL.into_iter().filter(|k| k.compiled()) {
            let runtime = Runtime::load(kind, DeviceSpec::Cpu, &model.config, weights.clone())
                .unwrap_or_else(|e| panic!("{name} on {kind}: {e}"));
            check(&format!("{name} on {kind}"), &runtime, &want);
        }
    }
}

/// A copy of the fixture `source` in a temporary directory named after `what`.
fn copy_of(source: &Path, what: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sieve-checkpoint-{what}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for entry in std::fs::read_dir(source).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.join(path.file_name().unwrap())).unwrap();
    }
    dir
}

/// A configuration value sieve does not implement is an error naming the file and the key.
#[test]
fn an_unsupported_value_names_the_file_and_key() {
    let rope = |kind: &str| serde_json::json!({"full_attention": {"rope_type": kind, "factor": 8.0}});
    let cases = [
        ("llama", "hidden_act", serde_json::json!("gelu"), "hidden_act = \"gelu\" is not supported"),
        ("llama", "mlp_bias", serde_json::json!(true), "mlp_bias = true is not supported"),
        ("llama", "model_type", serde_json::json!("gpt2"), "gpt2"),
        ("gemma3", "hidden_activation", serde_json::json!("gelu"), "hidden_activation = \"gelu\" is not supported"),
        (
            "gemma3",
            "final_logit_softcapping",
            serde_json::json!(30.0),
            "final_logit_softcapping = 30.0 is not supported",
        ),
        ("gemma3", "use_bidirectional_attention", serde_json::json!(true), "use_bidirectional_attention = true"),
        ("gemma3", "layer_types", serde_json::json!(["sliding_attention", "chunked"]), "layer_types = \"chunked\""),
        ("gemma3", "rope_parameters", rope("linear"), "rope_parameters.full_attention.rope_type = \"linear\""),
    ];
    for (fixture, key, value, message) in cases {
        let source = fixtures().into_iter().find(|d| d.ends_with(fixture)).unwrap();
        let dir = copy_of(&source, key);
        let path = dir.join("config.json");
        let mut config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        config[key] = value;
        std::fs::write(&path, config.to_string()).unwrap();
        let err = Model::load(&dir).map(|_| ()).unwrap_err().to_string();
        assert!(err.contains(message), "{key}: {err}");
        if key != "model_type" {
            assert!(err.contains("config.json"), "{key}: {err}");
        }
        std::fs::remove_dir_all(&dir).ok();
    }
}

/// A sliding window shorter than the positions bounds the context: beyond it attention would
/// be local, which sieve does not compute.
#[test]
fn a_sliding_window_bounds_the_context() {
    let source = fixtures().into_iter().find(|d| d.ends_with("mistral")).unwrap();
    let dir = copy_of(&source, "window");
    let path = dir.join("config.json");
    let mut config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    config["sliding_window"] = 16.into();
    std::fs::write(&path, config.to_string()).unwrap();
    let model = Model::load(&dir).unwrap();
    assert_eq!(model.config.context, 16);
    std::fs::remove_dir_all(&dir).ok();
}
