//! Gemma 3 270M, the second model family, against Hugging Face transformers: token ids of
//! its SentencePiece tokenizer, logits of a prompt, and WikiText-2 perplexity, from
//! `tests/fixtures/gemma3.json` (written by `benches/scripts/gemma-fixtures.sh` with
//! transformers 5.2.0 and torch 2.13.0 on the same GGUF, dequantized to float32; no Python
//! runs here). Also: local layers never hold more than their window. Needs the model
//! (`cargo xtask fetch-model`) and the ONNX Runtime library (`cargo xtask setup-ort`).

use std::path::Path;
use std::sync::OnceLock;

use serde_json::Value;
use sieve_backend::DeviceSpec;
use sieve_core::policy::PolicyFile;
use sieve_engine::{Dtype, Logits, Model, Policy, Session};
use sieve_runtime::{BackendKind, Runtime};

/// Logits in f32 against transformers' float32 logits, at most (absolute).
const LOGITS_ABS: f32 = 1e-2;
/// Perplexity relative to transformers', at most.
const PERPLEXITY_RELATIVE: f64 = 0.005;

fn fixture() -> &'static Value {
    static FIXTURE: OnceLock<Value> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gemma3.json");
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
    })
}

fn model(dtype: Dtype) -> Model {
    let path = sieve_fetch::model::GEMMA3.cached().expect("Gemma 3 270M (cargo xtask fetch-model)");
    Model::load_with(&path, dtype).unwrap()
}

/// The model in f32 on `kind` (the reference computes on the weights dequantized to
/// float32), or with its weights as stored (`native`, candle's integer kernels).
fn loaded(kind: BackendKind, native: bool) -> &'static (Runtime, Model) {
    static CANDLE: OnceLock<(Runtime, Model)> = OnceLock::new();
    static CANDLE_NATIVE: OnceLock<(Runtime, Model)> = OnceLock::new();
    static ORT: OnceLock<(Runtime, Model)> = OnceLock::new();
    let cell = match (kind, native) {
        (BackendKind::Candle, false) => &CANDLE,
        (BackendKind::Candle, true) => &CANDLE_NATIVE,
        (BackendKind::Ort, false) => &ORT,
        _ => panic!("{kind} (native {native}) is not tested here"),
    };
    cell.get_or_init(|| {
        let mut m = model(if native { Dtype::Native } else { Dtype::F32 });
        let weights = m.take_weights();
        (Runtime::load(kind, DeviceSpec::Cpu, &m.config, weights).unwrap_or_else(|e| panic!("{kind}: {e}")), m)
    })
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|i| i.as_u64().unwrap() as u32).collect()
}

fn wikitext() -> String {
    let path =
        sieve_eval::data::wikitext_test_split(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e} (set SIEVE_DATA)", path.display()))
}

fn fnv1a64(ids: &[u32]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in ids.iter().flat_map(|i| i.to_le_bytes()) {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// The WikiText-2 test split as the fixture tokenized it (without a BOS), checked.
fn text_ids(model: &Model) -> &'static [u32] {
    static IDS: OnceLock<Vec<u32>> = OnceLock::new();
    IDS.get_or_init(|| {
        let mut text = model.tokenizer.encode(&wikitext()).unwrap();
        assert_eq!(text.first(), Some(&2), "Gemma's tokenizer starts with its BOS");
        text.remove(0);
        let w = &fixture()["wikitext"];
        assert_eq!(text.len() as u64, w["total"].as_u64().unwrap(), "token count of the whole test split");
        let count = w["count"].as_u64().unwrap() as usize;
        assert_eq!(text[..32], ids(&w["first"])[..], "first ids of the test split");
        assert_eq!(fnv1a64(&text[..count]), w["fnv1a64"].as_str().unwrap(), "ids of the test split");
        text
    })
}

#[test]
fn the_tokenizer_gives_transformers_ids() {
    let m = &loaded(BackendKind::Candle, false).1;
    for probe in fixture()["tokenizer"].as_array().unwrap() {
        let text = probe["text"].as_str().unwrap();
        assert_eq!(m.tokenizer.encode(text).unwrap(), ids(&probe["ids"]), "{text:?}");
    }
    text_ids(m);
}

/// Logits of every position of the prompt at the fixture's ids (fixed ids and each
/// position's top 8), their log-sum-exp and argmax.
fn check_logits(kind: BackendKind) {
    let (rt, _) = loaded(kind, false);
    let lg = &fixture()["logits"];
    let input = ids(&lg["input_ids"]);
    let at = ids(&lg["ids"]);
    let mut session = Session::new(rt, Policy::none()).unwrap();
    let out = session.prefill(&input, Logits::All).unwrap();
    let mut worst = 0f32;
    for (t, want) in lg["values"].as_array().unwrap().iter().enumerate() {
        let row = out.row(t);
        for (&id, w) in at.iter().zip(want.as_array().unwrap()) {
            worst = worst.max((row[id as usize] - w.as_f64().unwrap() as f32).abs());
        }
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let lse = max + row.iter().map(|&x| (x - max).exp()).sum::<f32>().ln();
        let want_lse = lg["lse"][t].as_f64().unwrap() as f32;
        assert!((lse - want_lse).abs() <= LOGITS_ABS, "{kind}: position {t}: log-sum-exp {lse} vs {want_lse}");
        assert_eq!(
            sieve_engine::sampling::argmax(row) as u64,
            lg["argmax"][t].as_u64().unwrap(),
            "{kind}: argmax at {t}"
        );
    }
    assert!(worst <= LOGITS_ABS, "{kind}: logits differ from transformers' by up to {worst}");
}

#[test]
fn logits_match_transformers_on_candle() {
    check_logits(BackendKind::Candle);
}

#[test]
fn logits_match_transformers_on_ort() {
    check_logits(BackendKind::Ort);
}

/// Greedy decoding with the weights as stored (Q4_K, Q5_0, Q6_K, Q8_0 blocks) continues the
/// prompt as transformers does on the dequantized weights.
#[test]
fn native_weights_continue_like_transformers() {
    let (rt, _) = loaded(BackendKind::Candle, true);
    let lg = &fixture()["logits"];
    let mut session = Session::new(rt, Policy::none()).unwrap();
    let mut logits = session.prefill(&ids(&lg["input_ids"]), Logits::Last).unwrap().last().to_vec();
    let mut got = Vec::new();
    for _ in 0..8 {
        let next = sieve_engine::sampling::argmax(&logits) as u32;
        got.push(next);
        logits = session.step(next).unwrap();
    }
    assert_eq!(got, ids(&lg["greedy"]));
}

/// WikiText-2 perplexity by the fixture's protocol (a BOS and 1,151 text tokens per window,
/// 1,024 of context, the next 128 scored, 4 windows): past the 512-position window of the
/// local layers.
#[test]
fn perplexity_matches_transformers() {
    let (rt, m) = loaded(BackendKind::Candle, false);
    let p = &fixture()["perplexity"];
    let bos = m.tokenizer.bos;
    let report =
        sieve_eval::perplexity::compressed_perplexity_with_bos(rt, &Policy::none(), text_ids(m), bos, 1024, 128, 4)
            .unwrap();
    let want = p["perplexity"].as_f64().unwrap();
    let rel = (report.perplexity - want).abs() / want;
    assert!(
        rel <= PERPLEXITY_RELATIVE,
        "perplexity {} vs transformers {want} ({:.4}%)",
        report.perplexity,
        rel * 100.0
    );
}

/// After a prompt longer than the window, each local layer holds at most `window` entries
/// (what the last query saw), global layers every token; a KV policy's
/// budget applies within the window, and the statistics count the window as unpruned.
#[test]
fn local_layers_hold_at_most_their_window() {
    let (rt, m) = loaded(BackendKind::Candle, true);
    let config = &m.config;
    let window = config.window(0).expect("layer 0 is local");
    let prompt = &text_ids(m)[..1200];
    let check = |policy: Policy, keep: Option<f64>| {
        let mut s = Session::new(rt, policy).unwrap();
        s.prefill(prompt, Logits::Last).unwrap();
        for step in 0..3 {
            s.step(prompt[step]).unwrap();
            for (l, cache) in s.caches().iter().enumerate() {
                let len = cache.len();
                match (config.window(l), keep) {
                    (Some(w), _) => assert!(len <= w, "layer {l}: {len} entries, window {w}"),
                    (None, None) => assert_eq!(len, prompt.len() + step + 1, "global layer {l}"),
                    (None, Some(k)) => assert!(len <= (k * prompt.len() as f64).ceil() as usize + step + 1),
                }
                let positions = cache.positions();
                let newest = *positions.last().unwrap();
                let outside = positions.iter().any(|&p| p + window <= newest);
                assert!(config.window(l).is_none() || !outside, "layer {l} keeps an entry outside its window");
            }
        }
        let per = config.kv_bytes_per_token_layer();
        let locals = (0..config.n_layers).filter(|&l| config.window(l).is_some()).count();
        let tokens = prompt.len() + 3;
        let unpruned = (locals * window + (config.n_layers - locals) * tokens) * per;
        assert_eq!(s.stats.kv_bytes_unpruned, unpruned);
        s.stats.kv_bytes
    };
    let full = check(Policy::none(), None);
    let preset = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/snapkv.toml");
    let mut file = PolicyFile::from_toml(&std::fs::read_to_string(&preset).unwrap()).unwrap();
    file.override_keep(0.25);
    let pruned = check(file.validate().unwrap(), Some(0.25));
    assert!(pruned < full / 2, "snapkv at 0.25 keeps {pruned} of {full} bytes");
}
