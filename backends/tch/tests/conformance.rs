//! sieve-tch against the core's reference tensors and against sieve-candle: tensor
//! operations, scorers, one decoder layer, the full forward, and every preset policy.

#[path = "../../candle/tests/common/mod.rs"]
mod common;

use std::sync::OnceLock;

use sieve_core::Tensor as _;
use sieve_engine::{Backend, LayerCache, Logits, Policy, Probe, Session};
use sieve_tch::{TchBackend, TchTensor};
use tch::Device;

/// Largest |logit difference| allowed between tch and candle: both compute in f32 with
/// different kernels (GEMM blocking, reductions), so results differ by rounding, a few
/// 1e-5 in practice over 30 layers; 1e-3 still catches any real mistake (a wrong rotary
/// layout moves logits by whole units).
const LOGIT_TOLERANCE: f32 = 1e-3;

fn tch_backend() -> &'static TchBackend {
    static BACKEND: OnceLock<TchBackend> = OnceLock::new();
    BACKEND.get_or_init(|| {
        let m = common::model();
        TchBackend::new(&m.config, &m.weights, Device::Cpu).expect("tch backend")
    })
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
fn tch_tensors_conform_to_the_reference() {
    sieve_core::conformance::run_all::<TchTensor>(&Device::Cpu).unwrap();
}

#[test]
fn cuda_tensors_conform_when_a_gpu_is_present() {
    if !sieve_tch::cuda_available() {
        eprintln!("skipped: libtorch sees no CUDA device");
        return;
    }
    sieve_core::conformance::run_all::<TchTensor>(&Device::Cuda(0)).unwrap();
}

#[test]
fn one_decoder_layer_matches_candle() {
    let tokens = common::passage_tokens(300);
    let positions: Vec<usize> = (0..300).collect();
    let probe = Probe { last_queries: 8, column_sums: true };
    let (t, c) = (tch_backend(), common::candle());
    let (ht, hc) = (t.embed(&tokens).unwrap(), c.embed(&tokens).unwrap());
    assert!(max_diff(&ht.to_host().unwrap(), &hc.to_host().unwrap()) == 0.0);
    let (mut kt, mut kc) = (LayerCache::default(), LayerCache::default());
    let ot = t.layer(3, &ht, &positions, &mut kt, probe).unwrap();
    let oc = c.layer(3, &hc, &positions, &mut kc, probe).unwrap();
    // Hidden states reach magnitudes in the hundreds: compare relative to the largest.
    let (ht, hc) = (ot.hidden.to_host().unwrap(), oc.hidden.to_host().unwrap());
    let scale = hc.iter().fold(1f32, |m, x| m.max(x.abs()));
    let diff = max_diff(&ht, &hc);
    assert!(diff <= 1e-5 * scale, "hidden: {diff} at scale {scale}");
    let pairs =
        [(ot.attention.unwrap(), oc.attention.unwrap()), (ot.attention_sums.unwrap(), oc.attention_sums.unwrap())];
    for (a, b) in pairs {
        assert_eq!(a.shape(), b.shape());
        assert!(max_diff(&a.to_host().unwrap(), &b.to_host().unwrap()) < 1e-4);
    }
    let (keys_t, keys_c) = (kt.keys.unwrap().to_host().unwrap(), kc.keys.unwrap().to_host().unwrap());
    assert!(max_diff(&keys_t, &keys_c) < 1e-4);
}

#[test]
fn logits_match_candle_on_a_wikitext_passage() {
    let tokens = common::passage_tokens(256);
    let mut st = Session::new(tch_backend(), Policy::none()).unwrap();
    let mut sc = Session::new(common::candle(), Policy::none()).unwrap();
    let (lt, lc) = (st.prefill(&tokens, Logits::All).unwrap(), sc.prefill(&tokens, Logits::All).unwrap());
    let diff = max_diff(&lt.logits, &lc.logits);
    eprintln!("tch vs candle, 256 positions: max |logit difference| = {diff:.2e}");
    assert!(diff <= LOGIT_TOLERANCE, "{diff}");
}

#[test]
fn every_preset_prunes_the_same_tokens_as_candle() {
    common::presets_match_candle(tch_backend());
}
