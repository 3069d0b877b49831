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
