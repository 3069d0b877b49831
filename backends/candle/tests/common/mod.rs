//! Shared helpers of the model tests: the default model and WikiText-2 text.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::OnceLock;

use sieve_candle::{CandleBackend, CandleDevice};
use sieve_engine::Model;

/// The default model, loaded once per test binary. CI fetches it before the tests
/// (`cargo xtask ci`); a missing model fails the test with the fetch command.
pub fn model() -> &'static Model {
    static MODEL: OnceLock<Model> = OnceLock::new();
    MODEL.get_or_init(|| {
        let path = sieve_engine::fetch::require_default_model().unwrap_or_else(|e| panic!("{e}"));
        Model::load(&path).unwrap_or_else(|e| panic!("loading {}: {e}", path.display()))
    })
}

/// The candle CPU backend on the default model.
pub fn candle() -> &'static CandleBackend {
    static BACKEND: OnceLock<CandleBackend> = OnceLock::new();
    BACKEND.get_or_init(|| {
        let m = model();
        CandleBackend::new(&m.config, &m.weights, CandleDevice::Cpu).expect("candle backend")
    })
}

/// WikiText-2's test split: `$SIEVE_DATA/wikitext-2/wiki.test.raw`, by default from the
/// `shared/data` folder beside the repository.
pub fn wikitext() -> String {
    let dir = std::env::var_os("SIEVE_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data"));
    let path = dir.join("wikitext-2/wiki.test.raw");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e} (set SIEVE_DATA)", path.display()))
}

/// The first `n` tokens of WikiText-2's test split from its first article on.
pub fn passage_tokens(n: usize) -> Vec<u32> {
    let text = wikitext();
    let ids = model().tokenizer.encode(&text[..40_000.min(text.len())]).expect("encode");
    assert!(ids.len() >= n, "passage too short");
    ids[..n].to_vec()
}

/// With every preset in `configs/` (decode budgets shrunk so that they evict within the
/// run), `backend` keeps the same positions after prefill as candle, generates the same 13
/// greedy tokens and holds the same KV bytes.
pub fn presets_match_candle<B: sieve_engine::Backend>(backend: &B) {
    use sieve_core::policy::PolicyFile;
    use sieve_engine::sampling::argmax;
    use sieve_engine::{Logits, Session};

    let tokens = passage_tokens(400);
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../configs");
    let mut names: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    names.retain(|p| p.extension().is_some_and(|e| e == "toml"));
    names.sort();
    assert!(names.len() >= 10);
    for path in names {
        let mut file = PolicyFile::from_toml(&std::fs::read_to_string(&path).unwrap()).unwrap();
        if let Some(d) = &mut file.decode {
            d.budget = d.budget.min(300); // so that decode eviction happens in this short run
            d.every = d.every.min(8);
        }
        let policy = file.validate().unwrap();
        let run = |session: &mut dyn FnMut(u32) -> Vec<f32>, first: Vec<f32>| {
            let mut out = vec![argmax(&first)];
            let mut logits = first;
            for _ in 0..12 {
                logits = session(argmax(&logits));
                out.push(argmax(&logits));
            }
            out
        };
        let mut sb = Session::new(backend, policy.clone()).unwrap();
        let mut sc = Session::new(candle(), policy).unwrap();
        let (fb, fc) = (sb.prefill(&tokens, Logits::Last).unwrap(), sc.prefill(&tokens, Logits::Last).unwrap());
        let kept_b: Vec<Vec<usize>> = sb.caches().iter().map(|c| c.positions.clone()).collect();
        let kept_c: Vec<Vec<usize>> = sc.caches().iter().map(|c| c.positions.clone()).collect();
        assert_eq!(kept_b, kept_c, "{}: kept positions differ after prefill", path.display());
        let gen_b = run(&mut |t| sb.step(t).unwrap(), fb.last().to_vec());
        let gen_c = run(&mut |t| sc.step(t).unwrap(), fc.last().to_vec());
        assert_eq!(gen_b, gen_c, "{}: greedy tokens differ", path.display());
        assert_eq!(sb.kv_bytes(), sc.kv_bytes(), "{}", path.display());
    }
}
