//! sieve-candle against an independent implementation of the same model: candle-
//! transformers' `quantized_llama`, fed the same GGUF weights dequantized to f32. It uses
//! llama.cpp's interleaved rotary layout on the original q/k rows, where sieve un-permutes
//! them on load and uses the half-split layout, so a mistake in either shows up.

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use candle_core::quantized::{GgmlDType, QTensor, gguf_file};
use candle_core::{Device, Tensor};
use candle_transformers::models::quantized_llama::ModelWeights;
use sieve_candle::{CandleBackend, CandleDevice};
use sieve_engine::{Logits, Model, Policy, Session};

/// The default model; CI fetches it before the tests (`cargo xtask ci`).
fn model_path() -> PathBuf {
    sieve_fetch::model::cached()
        .unwrap_or_else(|| panic!("the default model is missing; run `cargo xtask fetch-model`"))
}

/// The default model on candle's CPU backend, with its tokenizer, loaded once.
fn candle() -> &'static (CandleBackend, Model) {
    static LOADED: OnceLock<(CandleBackend, Model)> = OnceLock::new();
    LOADED.get_or_init(|| {
        let mut model = Model::load(&model_path()).unwrap();
        let weights = model.take_weights();
        (CandleBackend::from_weights(&model.config, weights, CandleDevice::Cpu).unwrap(), model)
    })
}

/// The first `n` tokens of WikiText-2's test split.
fn passage_tokens(n: usize) -> Vec<u32> {
    let path =
        sieve_eval::data::wikitext_test_split(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e} (set SIEVE_DATA)", path.display()));
    sieve_eval::data::first_tokens(&candle().1.tokenizer, &text, n).unwrap()
}

/// The reference model with every tensor stored as f32.
fn reference_f32() -> ModelWeights {
    let path = model_path();
    let mut file = std::fs::File::open(&path).unwrap();
    let content = gguf_file::Content::read(&mut file).unwrap();
    let mut tensors = Vec::new();
    for name in content.tensor_infos.keys() {
        let q = content.tensor(&mut file, name, &Device::Cpu).unwrap();
        let f = q.dequantize(&Device::Cpu).unwrap();
        tensors.push((name.clone(), QTensor::quantize(&f, GgmlDType::F32).unwrap()));
    }
    let metadata: Vec<(&str, &gguf_file::Value)> = content.metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tensor_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let mut buf = Cursor::new(Vec::new());
    gguf_file::write(&mut buf, &metadata, &tensor_refs).unwrap();
    buf.set_position(0);
    let content = gguf_file::Content::read(&mut buf).unwrap();
    ModelWeights::from_gguf(content, &mut buf, &Device::Cpu).unwrap()
}

fn argmax(x: &[f32]) -> usize {
    sieve_engine::sampling::argmax(x) as usize
}

#[test]
fn logits_match_quantized_llama_at_every_position() {
    const N: usize = 160;
    let tokens = passage_tokens(N);
    let backend = &candle().0;
    let mut session = Session::new(backend, Policy::none()).unwrap();
    let ours = session.prefill(&tokens, Logits::All).unwrap();
    assert_eq!(ours.positions, (0..N).collect::<Vec<_>>());

    let mut reference = reference_f32();
    let mut max_diff = 0f32;
    let mut same_argmax = 0;
    for (i, &t) in tokens.iter().enumerate() {
        let x = Tensor::new(&[t], &Device::Cpu).unwrap().unsqueeze(0).unwrap();
        let theirs = reference.forward(&x, i).unwrap().squeeze(0).unwrap().to_vec1::<f32>().unwrap();
        let row = ours.row(i);
        for (a, b) in row.iter().zip(&theirs) {
            max_diff = max_diff.max((a - b).abs());
        }
        same_argmax += usize::from(argmax(row) == argmax(&theirs));
    }
    let agreement = same_argmax as f64 / N as f64;
    eprintln!("max |logit difference| = {max_diff:.2e}, argmax agreement = {:.1}%", agreement * 100.0);
    assert!(max_diff <= 1e-2, "max abs logit difference {max_diff} > 1e-2");
    assert!(agreement >= 0.99, "argmax agreement {agreement} < 0.99");
}

#[test]
fn long_prompts_spanning_several_attention_blocks_match() {
    // 600 tokens: three blocks of query rows in sieve-candle's attention.
    let tokens = passage_tokens(600);
    let backend = &candle().0;
    let mut session = Session::new(backend, Policy::none()).unwrap();
    let ours = session.prefill(&tokens, Logits::All).unwrap();
    let reference = reference_f32();
    for end in [300usize, 600] {
        let mut fresh = reference.clone();
        let x = Tensor::new(&tokens[..end], &Device::Cpu).unwrap().unsqueeze(0).unwrap();
        let theirs = fresh.forward(&x, 0).unwrap().squeeze(0).unwrap().to_vec1::<f32>().unwrap();
        let row = ours.row(end - 1);
        let diff = row.iter().zip(&theirs).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(diff <= 1e-2, "position {}: max abs difference {diff}", end - 1);
        assert_eq!(argmax(row), argmax(&theirs));
    }
}

/// Decode steps of several sessions at once (the server's batched decoding) against the
/// same sessions stepped alone, on the default model's stored blocks. A decode batch (up to
/// 16 rows) forms each row's integer sums and finishes them in `f32` as one row alone
/// does (VNNI for up to four rows; AMX tiles from five where the CPU has them, in groups
/// of up to eight), and runs each sequence's attention alone (side by side on the pool
/// when each is small): the logits are bitwise equal, for padded caches (Ada-KV budgets)
/// too. Two sessions take the VNNI kernel, six one tile group, twelve two groups.
#[test]
fn batched_decode_steps_match_steps_alone() {
    let backend = &candle().0;
    let policies = [
        "",
        "[decode]\nbudget = 96\nsinks = 4\nrecent = 16\n[decode.scorer]\nkind = \"h2o\"\n",
        "[kv]\nkeep = 0.5\nsinks = 4\nrecent = 16\nselection = \"head\"\n[kv.scorer]\nkind = \"snapkv\"\n[decode]\nbudget = 80\nselection = \"head\"\nsinks = 4\nrecent = 16\n[decode.scorer]\nkind = \"knorm\"\n",
        "[decode]\nbudget = 64\nsinks = 4\nrecent = 16\n[decode.scorer]\nkind = \"tova\"\n",
        "[prefill]\nlayers = [10]\nkeep = [0.5]\nsinks = 4\nrecent = 8\n",
        "[kv]\nkeep = 0.5\nsinks = 4\nrecent = 16\nselection = \"ada\"\n[kv.scorer]\nkind = \"snapkv\"\n",
    ];
    let passage = passage_tokens(300);
    for sessions in [2, 6, 12] {
        let start = |i: usize| {
            let mut s = Session::new(backend, Policy::from_toml(policies[i % policies.len()]).unwrap()).unwrap();
            let logits = s.prefill(&passage[..120 + 15 * i], Logits::Last).unwrap().last().to_vec();
            (s, argmax(&logits) as u32)
        };
        let (mut alone, mut next): (Vec<_>, Vec<_>) = (0..sessions).map(start).unzip();
        let (mut batched, next_batched): (Vec<_>, Vec<_>) = (0..sessions).map(start).unzip();
        assert_eq!(next, next_batched);
        for step in 0..12 {
            let rows_alone: Vec<Vec<f32>> = alone.iter_mut().zip(&next).map(|(s, &t)| s.step(t).unwrap()).collect();
            let mut refs: Vec<&mut Session<'_, CandleBackend>> = batched.iter_mut().collect();
            let rows_batched = Session::step_batch(&mut refs, &next).unwrap();
            for i in 0..sessions {
                assert!(
                    rows_alone[i] == rows_batched[i],
                    "{sessions} sessions, session {i}, step {step}: logits differ"
                );
                assert_eq!(alone[i].caches()[7].positions(), batched[i].caches()[7].positions());
            }
            next = rows_alone.iter().map(|r| argmax(r) as u32).collect();
        }
    }
}
