//! Broken input handed to the `sieve` binary: every case must end with exactly one line on
//! stderr, `error: ...` naming the file, key or value at fault, and exit status 1 — never a
//! panic, a hang or a silent wrong answer. Broken files are written under the system's
//! temporary directory and removed afterwards.

mod common;

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use assert_cmd::Command;
use common::{TempPath, sieve};
use safetensors::SafeTensors;
use safetensors::tensor::TensorView;
use sieve_engine::Model;
use sieve_engine::testing::{GgmlDType, TinyGguf, Value, patch_tensor_info, tensor};

/// Runs `cmd` and checks that it fails cleanly: exit status 1, one `error:` line on stderr
/// that contains every needle, nothing on stdout. Returns the line.
fn fails_with(cmd: &mut Command, needles: &[&str]) -> String {
    let out = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "expected exit status 1, stderr:\n{err}");
    assert!(!err.contains("panicked"), "{err}");
    let line = err.trim_end();
    assert!(line.starts_with("error: ") && !line.contains('\n'), "expected one `error:` line, got:\n{err}");
    for needle in needles {
        assert!(line.contains(needle), "expected `{needle}` in `{line}`");
    }
    assert!(out.stdout.is_empty(), "nothing may reach stdout: {:?}", String::from_utf8_lossy(&out.stdout));
    eprintln!("{line}");
    line.to_string()
}

/// `sieve generate` on the model at `path`.
fn generate_with(path: &Path) -> Command {
    let mut cmd = sieve();
    cmd.args(["generate", "--raw", "-n", "4", "Hello", "-m"]).arg(path);
    cmd
}

fn default_model() -> PathBuf {
    common::default_model()
}

fn tiny() -> TinyGguf {
    TinyGguf::llama().unwrap()
}

fn tiny_file(gguf: &TinyGguf) -> TempPath {
    TempPath::with_bytes("tiny.gguf", &gguf.to_bytes().unwrap())
}

#[test]
fn gguf_with_a_bad_magic_is_refused() {
    let mut bytes = tiny().to_bytes().unwrap();
    bytes[..4].copy_from_slice(b"GGML");
    let file = TempPath::with_bytes("magic.gguf", &bytes);
    fails_with(&mut generate_with(&file.0), &[&file.display(), "not the GGUF magic", "GGML"]);
}

#[test]
fn gguf_with_a_truncated_header_is_refused() {
    let bytes = std::fs::read(default_model()).unwrap();
    let file = TempPath::with_bytes("header.gguf", &bytes[..100]);
    fails_with(&mut generate_with(&file.0), &[&file.display(), "272 tensors", "truncated"]);
}

#[test]
fn gguf_with_tensor_data_past_the_end_is_refused() {
    let bytes = std::fs::read(default_model()).unwrap();
    let file = TempPath::with_bytes("cut.gguf", &bytes[..bytes.len() * 6 / 10]);
    fails_with(&mut generate_with(&file.0), &[&file.display(), "runs past the end of the file", "truncated"]);
}

#[test]
fn absurd_gguf_dimensions_are_refused_before_allocating() {
    let mut g = tiny();
    g.set("llama.block_count", Value::U64(1_000_000_000));
    let file = tiny_file(&g);
    fails_with(&mut generate_with(&file.0), &[&file.display(), "layers = 1000000000 is outside 1..=1024"]);

    let mut g = tiny();
    g.set("llama.context_length", Value::U32(1 << 24)).set("llama.attention.key_length", Value::U32(1024));
    let file = tiny_file(&g);
    fails_with(&mut generate_with(&file.0), &[&file.display(), "context 16777216 x head dim 1024 is too large"]);

    // Shapes candle's writer cannot produce: patched into the written header.
    let mut bytes = tiny().to_bytes().unwrap();
    assert!(patch_tensor_info(&mut bytes, "token_embd.weight", Some(&[1 << 40, 1 << 40]), None));
    let file = TempPath::with_bytes("huge.gguf", &bytes);
    fails_with(&mut generate_with(&file.0), &[&file.display(), "`token_embd.weight`", "impossible shape"]);

    let mut bytes = tiny().to_bytes().unwrap();
    assert!(patch_tensor_info(&mut bytes, "blk.0.ffn_up.weight", Some(&[1 << 30, 1 << 10]), None));
    let file = TempPath::with_bytes("large.gguf", &bytes);
    fails_with(&mut generate_with(&file.0), &[&file.display(), "`blk.0.ffn_up.weight`", "runs past the end"]);
}

#[test]
fn gguf_tensors_of_unsupported_types_or_wrong_shapes_are_refused() {
    for (type_id, name) in [(9, "Q8_1"), (20, "IQ4_NL")] {
        let mut bytes = tiny().to_bytes().unwrap();
        assert!(patch_tensor_info(&mut bytes, "blk.0.attn_q.weight", None, Some(type_id)));
        let file = TempPath::with_bytes("type.gguf", &bytes);
        let needle = format!("tensor `blk.0.attn_q.weight` has ggml type {type_id} ({name})");
        fails_with(&mut generate_with(&file.0), &[&file.display(), &needle, "cannot dequantize"]);
    }

    let mut g = tiny();
    g.set_tensor("blk.0.attn_k.weight", tensor(&[32, 32], GgmlDType::Q8_0, 0).unwrap());
    let file = tiny_file(&g);
    fails_with(
        &mut generate_with(&file.0),
        &[&file.display(), "tensor `blk.0.attn_k.weight` has shape [32, 32], expected [16, 32]"],
    );
}

#[test]
fn unsupported_architectures_are_refused() {
    let mut g = tiny();
    g.set("general.architecture", Value::String("mamba".into()));
    let file = tiny_file(&g);
    fails_with(&mut generate_with(&file.0), &[&file.display(), "unsupported architecture `mamba`"]);
}

/// The default model, loaded once per test binary.
fn real_model() -> &'static Model {
    static MODEL: OnceLock<Model> = OnceLock::new();
    MODEL.get_or_init(|| Model::load(&default_model()).unwrap())
}

/// A Hugging Face directory of the default model (f32 safetensors, about 0.5 GB). Tests
/// that write one take turns, so that at most one such directory exists at a time.
fn hf_dir() -> (TempPath, std::sync::MutexGuard<'static, ()>) {
    static TURN: Mutex<()> = Mutex::new(());
    let turn = TURN.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let dir = TempPath::new("hf");
    sieve_engine::export::write_hf_dir(real_model(), &dir.0).unwrap();
    (dir, turn)
}

enum Edit {
    Remove,
    Shape(Vec<usize>),
    Data(Vec<u8>),
}

/// Rewrites `model.safetensors` in `dir` with tensor `name` edited.
fn edit_safetensors(dir: &Path, name: &str, edit: Edit) {
    let path = dir.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut views = Vec::new();
    for (n, view) in st.tensors() {
        let view = match (&edit, n == name) {
            (_, false) => view,
            (Edit::Remove, true) => continue,
            (Edit::Shape(shape), true) => TensorView::new(view.dtype(), shape.clone(), view.data()).unwrap(),
            (Edit::Data(data), true) => TensorView::new(view.dtype(), view.shape().to_vec(), data).unwrap(),
        };
        views.push((n, view));
    }
    assert!(views.len() + usize::from(matches!(edit, Edit::Remove)) == st.len(), "no tensor `{name}`");
    safetensors::serialize_to_file(views, None, &path).unwrap();
}

#[test]
fn safetensors_directory_missing_a_tensor_is_refused() {
    let (dir, _turn) = hf_dir();
    edit_safetensors(&dir.0, "model.layers.7.mlp.up_proj.weight", Edit::Remove);
    fails_with(&mut generate_with(&dir.0), &[&dir.display(), "missing tensor `model.layers.7.mlp.up_proj.weight`"]);
}

#[test]
fn safetensors_tensor_with_a_wrong_shape_is_refused() {
    let (dir, _turn) = hf_dir();
    edit_safetensors(&dir.0, "model.layers.3.self_attn.k_proj.weight", Edit::Shape(vec![576, 192]));
    fails_with(
        &mut generate_with(&dir.0),
        &[&dir.display(), "tensor `model.layers.3.self_attn.k_proj.weight` has shape [576, 192], expected [192, 576]"],
    );
}

#[test]
fn tokenizer_larger_than_the_vocabulary_is_refused() {
    let (dir, _turn) = hf_dir();
    let path = dir.0.join("config.json");
    let mut config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    config["vocab_size"] = 1000.into();
    std::fs::write(&path, config.to_string()).unwrap();
    fails_with(
        &mut generate_with(&dir.0),
        &[&dir.display(), "the tokenizer has 49152 tokens", "the model's vocabulary has only 1000 (vocab_size)"],
    );
}

#[test]
fn nan_weights_fail_with_non_finite_logits() {
    let (dir, _turn) = hf_dir();
    let nan: Vec<u8> = std::iter::repeat_n(f32::NAN.to_le_bytes(), 576).flatten().collect();
    edit_safetensors(&dir.0, "model.norm.weight", Edit::Data(nan));
    fails_with(&mut generate_with(&dir.0), &["the model produced a non-finite logit (NaN)", "weights"]);
}

#[test]
fn policy_files_with_errors_are_refused() {
    let cases: &[(&[u8], &[&str])] = &[
        (b"[kv]\nkeep = \n", &["line 2, column 8", "`keep =`", "string values must be quoted"]),
        (b"[kv]\nkeep = 0.5\n[kv.scorer\nkind = \"h2o\"\n", &["line 3"]),
        (b"[kv]\nkepp = 0.5\n", &["unknown field `kepp`", "expected one of"]),
        (b"[prefill]\nlayers = [4]\nkeep = 0.5\nfoo = 1\n", &["unknown field `foo`"]),
        (b"[kv]\nkeep = \"half\"\n", &["`keep = \"half\"`", "invalid type"]),
        (b"[kv]\nkeep = 1.5\n", &["`kv.keep` = 1.5 is out of range: (0, 1]"]),
        (b"[decode]\nbudget = 8\nsinks = 4\nrecent = 4\n", &["`decode.budget` = 8 is out of range"]),
        (b"[kv]\nkeep = 0.5\n\xff\n", &["valid UTF-8"]),
    ];
    for (text, needles) in cases {
        let file = TempPath::with_bytes("policy.toml", text);
        let mut all = vec![file.display()];
        all.extend(needles.iter().map(|s| s.to_string()));
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        fails_with(sieve().args(["generate", "--raw", "-n", "1", "hi", "--policy"]).arg(&file.0), &all);
    }
    // Layers are checked against the model once it is loaded.
    let file = TempPath::with_bytes("layers.toml", b"[prefill]\nlayers = [4, 40]\nkeep = [0.5, 0.4]\n");
    fails_with(
        sieve().args(["generate", "--raw", "-n", "1", "hi", "--policy"]).arg(&file.0),
        &["`prefill.layers` = 40 is out of range", "the model has 30 layers"],
    );
    let missing = TempPath::new("absent.toml");
    fails_with(sieve().args(["generate", "hi", "--policy"]).arg(&missing.0), &[&missing.display()]);
}

#[test]
fn a_backend_not_compiled_in_is_refused() {
    // The default build has candle and ort; tch runs in sieve-tch, which
    // `cargo xtask build-tch` builds (here pointed at a path where it is not).
    fails_with(
        sieve().env("SIEVE_TCH_BIN", "/nonexistent/sieve-tch").args(["generate", "hi", "--backend", "tch"]),
        &["backend `tch` is not compiled into this binary", "cargo xtask build-tch"],
    );
}

#[test]
fn a_missing_onnx_runtime_library_is_a_clear_error() {
    let missing = "/nonexistent/libonnxruntime.so.1.31.1";
    for args in
        [&["generate", "hi", "--backend", "ort"][..], &["perplexity", "--file", "Cargo.toml", "--backend", "ort"]]
    {
        fails_with(
            sieve().env("SIEVE_ORT_LIB", missing).args(args),
            &["ONNX Runtime library is not installed", missing, "cargo xtask setup-ort"],
        );
    }
}

/// A copy of a tiny transformers-written checkpoint (the runtime's fixture `fixture`) with
/// one file's JSON edited.
fn checkpoint_with(fixture: &str, file: &str, edit: impl Fn(&mut serde_json::Value)) -> TempPath {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("../runtime/tests/fixtures/hf").join(fixture);
    let dir = TempPath::dir("checkpoint");
    for entry in std::fs::read_dir(&source).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.0.join(path.file_name().unwrap())).unwrap();
    }
    let path = dir.0.join(file);
    let mut json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut json);
    std::fs::write(&path, json.to_string()).unwrap();
    dir
}

#[test]
fn a_checkpoint_as_written_runs() {
    for fixture in ["llama", "gemma3"] {
        let dir = checkpoint_with(fixture, "config.json", |_| {});
        let out = generate_with(&dir.0).output().unwrap();
        assert!(out.status.success(), "{fixture}: {}", common::stderr_of(&out));
    }
}

/// A checkpoint, a file of it, an edit of its JSON, and what the error must say.
type Case = (&'static str, &'static str, fn(&mut serde_json::Value), &'static str);

#[test]
fn unsupported_or_wrong_configuration_values_name_the_file_and_key() {
    let cases: [Case; 8] = [
        (
            "llama",
            "config.json",
            |c| c["rope_parameters"]["rope_type"] = "yarn".into(),
            "rope_parameters.rope_type = \"yarn\" is not supported",
        ),
        (
            "llama",
            "config.json",
            |c| c["rope_theta"] = 10000.0.into(),
            "rope_parameters.rope_theta = 100000 disagrees with rope_theta = 10000",
        ),
        (
            "llama",
            "config.json",
            |c| c["hidden_act"] = "gelu_pytorch_tanh".into(),
            "hidden_act = \"gelu_pytorch_tanh\" is not supported",
        ),
        ("llama", "config.json", |c| c["mlp_bias"] = true.into(), "mlp_bias = true is not supported"),
        ("llama", "config.json", |c| c["num_hidden_layers"] = "two".into(), "num_hidden_layers"),
        (
            "llama",
            "generation_config.json",
            |g| g["eos_token_id"] = "</s>".into(),
            "eos_token_id = \"</s>\" is not a token id",
        ),
        (
            "gemma3",
            "config.json",
            |c| c["rope_parameters"]["sliding_attention"]["rope_type"] = "yarn".into(),
            "rope_parameters.sliding_attention.rope_type = \"yarn\" is not supported",
        ),
        (
            "gemma3",
            "config.json",
            |c| c["attn_logit_softcapping"] = 50.0.into(),
            "attn_logit_softcapping = 50.0 is not supported",
        ),
    ];
    for (fixture, file, edit, message) in cases {
        let dir = checkpoint_with(fixture, file, edit);
        fails_with(&mut generate_with(&dir.0), &[&dir.0.join(file).display().to_string(), message]);
    }
}

/// `sieve serve`'s bad settings are refused before the model loads or a port opens.
#[test]
fn bad_server_settings_are_refused() {
    let serve = |args: &[&str]| {
        let mut cmd = sieve();
        cmd.args(["serve", "--port", "0"]).args(args);
        cmd
    };
    fails_with(&mut serve(&["--presets", "/nonexistent/presets"]), &["--presets /nonexistent/presets: no such folder"]);
    fails_with(&mut serve(&["--max-batch", "0"]), &["--max-batch 0 is out of range"]);
    fails_with(&mut serve(&["--max-queue", "0"]), &["--max-queue must be at least 1"]);
}
