//! sieve-ort against the core's reference tensors and against sieve-candle: tensor
//! operations, scorers, one decoder layer, the full forward, greedy generations and every
//! preset policy. Needs the ONNX Runtime library (`cargo xtask setup-ort`; CI installs it).

#[path = "../../candle/tests/common/mod.rs"]
mod common;

use std::sync::OnceLock;

use sieve_core::Tensor as _;
use sieve_core::policy::PolicyFile;
use sieve_engine::template::Message;
use sieve_engine::{Backend, GenerateOptions, LayerCache, Logits, Policy, Probe, Session};
use sieve_ort::{OrtBackend, OrtDevice, OrtTensor};

/// Largest |logit difference| allowed between ort and candle: both compute in f32 with
/// different kernels (GEMM blocking, reduction order, and ort computes attention over the
/// full masked square where candle works in blocks), so results differ by rounding, a few
/// 1e-5 over 30 layers; 1e-3 still catches any real mistake (a wrong rotary layout or
/// mask moves logits by whole units).
const LOGIT_TOLERANCE: f32 = 1e-3;

fn ort_backend() -> &'static OrtBackend {
    static BACKEND: OnceLock<OrtBackend> = OnceLock::new();
    BACKEND.get_or_init(|| {
        let m = common::model();
        OrtBackend::new(&m.config, &m.weights, OrtDevice::Cpu).unwrap_or_else(|e| panic!("ort backend: {e}"))
    })
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn configs() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../configs")
}

#[test]
fn ort_tensors_conform_to_the_reference() {
    sieve_core::conformance::run_all::<OrtTensor>(&OrtDevice::Cpu).unwrap();
}

#[test]
fn one_decoder_layer_matches_candle() {
    let tokens = common::passage_tokens(300);
    let probe = Probe { last_queries: 8, column_sums: true };
    let (o, c) = (ort_backend(), common::candle());
    let (ho, hc) = (o.embed(&tokens).unwrap(), c.embed(&tokens).unwrap());
    assert_eq!(max_diff(&ho.to_host().unwrap(), &hc.to_host().unwrap()), 0.0);
    let (mut ko, mut kc) = (LayerCache::default(), LayerCache::default());
    // Two calls: the second extends the cache, with gaps in its positions as after prefill
    // pruning.
    let first: Vec<usize> = (0..200).collect();
    let second: Vec<usize> = (200..300).filter(|p| p % 3 != 0).collect();
    for positions in [first, second] {
        let (xo, xc) = (ho.index_select(0, &positions).unwrap(), hc.index_select(0, &positions).unwrap());
        let oo = o.layer(3, &xo, &positions, &mut ko, probe).unwrap();
        let oc = c.layer(3, &xc, &positions, &mut kc, probe).unwrap();
        // Hidden states reach magnitudes in the hundreds: compare relative to the largest.
        let (a, b) = (oo.hidden.to_host().unwrap(), oc.hidden.to_host().unwrap());
        let scale = b.iter().fold(1f32, |m, x| m.max(x.abs()));
        let diff = max_diff(&a, &b);
        assert!(diff <= 1e-5 * scale, "hidden: {diff} at scale {scale}");
        let pairs =
            [(oo.attention.unwrap(), oc.attention.unwrap()), (oo.attention_sums.unwrap(), oc.attention_sums.unwrap())];
        for (a, b) in pairs {
            assert_eq!(a.shape(), b.shape());
            assert!(max_diff(&a.to_host().unwrap(), &b.to_host().unwrap()) < 1e-4);
        }
    }
    assert_eq!(ko.positions, kc.positions);
    let (keys_o, keys_c) = (ko.keys.unwrap().to_host().unwrap(), kc.keys.unwrap().to_host().unwrap());
    assert!(max_diff(&keys_o, &keys_c) < 1e-4);
}

#[test]
fn logits_match_candle_on_a_wikitext_passage() {
    let tokens = common::passage_tokens(256);
    let mut so = Session::new(ort_backend(), Policy::none()).unwrap();
    let mut sc = Session::new(common::candle(), Policy::none()).unwrap();
    let (lo, lc) = (so.prefill(&tokens, Logits::All).unwrap(), sc.prefill(&tokens, Logits::All).unwrap());
    let diff = max_diff(&lo.logits, &lc.logits);
    eprintln!("ort vs candle, 256 positions: max |logit difference| = {diff:.2e}");
    assert!(diff <= LOGIT_TOLERANCE, "{diff}");
}

#[test]
fn greedy_generations_match_candle_with_and_without_pruning() {
    let m = common::model();
    let prompts = [
        "What is the capital of France?",
        "Write a short poem about the sea.",
        "Explain in two sentences why the sky is blue.",
    ];
    // Chat prompts are short: keep half of them (not the preset's quarter) so that the
    // policy prunes without cutting into the protected tokens alone.
    let mut snapkv = PolicyFile::from_toml(&std::fs::read_to_string(configs().join("snapkv.toml")).unwrap()).unwrap();
    snapkv.override_keep(0.5);
    for policy in [Policy::none(), snapkv.validate().unwrap()] {
        for prompt in prompts {
            let text = m.render_chat(&[Message::new("user", prompt)]).unwrap();
            let ids = m.tokenizer.encode(&text).unwrap();
            let options = GenerateOptions { max_tokens: 32, ..GenerateOptions::default() };
            let mut so = Session::new(ort_backend(), policy.clone()).unwrap();
            let go = sieve_engine::generate(&mut so, &m.tokenizer, &ids, &options, &mut |_| {}).unwrap();
            let mut sc = Session::new(common::candle(), policy.clone()).unwrap();
            let gc = sieve_engine::generate(&mut sc, &m.tokenizer, &ids, &options, &mut |_| {}).unwrap();
            assert_eq!(go.tokens, gc.tokens, "policy {}, prompt {prompt:?}", policy.name);
            assert_eq!(go.stats.kv_bytes, gc.stats.kv_bytes, "policy {}, prompt {prompt:?}", policy.name);
            eprintln!("[{}] {prompt:?} -> {:?}", policy.name, go.text);
        }
    }
}

#[test]
fn every_preset_prunes_the_same_tokens_as_candle() {
    common::presets_match_candle(ort_backend());
}
