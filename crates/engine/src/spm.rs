//! SentencePiece-style tokenizers stored in GGUF (`tokenizer.ggml.model = "llama"`): a
//! vocabulary of pieces with scores, spaces written as `▁`, bytes the vocabulary lacks
//! written as `<0xXX>` pieces.
//!
//! Such a tokenizer merges, among the adjacent pieces of a text, the pair whose union is
//! the piece with the highest score, until no pair forms a piece. A byte-pair encoder
//! whose merges are every split of every piece into two pieces, ranked by the score of the
//! piece they form, makes the same choices; that is what is built here, on `tokenizers`'
//! BPE with byte fallback.

use std::collections::HashMap;

use candle_core::quantized::gguf_file::Value;
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::models::bpe::BPE;
use tokenizers::normalizers::replace::Replace;
use tokenizers::normalizers::{NormalizerWrapper, Prepend};
use tokenizers::{AddedToken, DecoderWrapper};

use crate::error::Result;

/// The piece that stands for a space.
const SPACE: &str = "\u{2581}";

/// GGUF token types: normal pieces, unknown, control (special), user-defined (matched whole
/// in the text), unused, bytes.
const NORMAL: i32 = 1;
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;

/// Builds the tokenizer of `tokens` with `scores` and `types` (GGUF token types);
/// `space_prefix` adds a `▁` before the text (SentencePiece's dummy prefix).
pub(crate) fn build(
    tokens: &[&str],
    scores: &[f32],
    types: &[i32],
    space_prefix: bool,
    err: impl Fn(String) -> crate::error::Error,
) -> Result<tokenizers::Tokenizer> {
    if scores.len() != tokens.len() || types.len() != tokens.len() {
        return Err(err(format!(
            "{} tokens but {} scores and {} token types",
            tokens.len(),
            scores.len(),
            types.len()
        )));
    }
    let vocab: tokenizers::models::bpe::Vocab =
        tokens.iter().enumerate().map(|(i, t)| (t.to_string(), i as u32)).collect();
    let merges = merges(tokens, scores, types, &vocab);
    let unk = tokens.iter().zip(types).find(|(_, t)| **t == 2).map(|(tok, _)| tok.to_string());
    let mut builder = BPE::builder().vocab_and_merges(vocab, merges).byte_fallback(true);
    if let Some(unk) = unk {
        builder = builder.unk_token(unk);
    }
    let bpe = builder.build().map_err(|e| err(e.to_string()))?;
    let mut inner = tokenizers::Tokenizer::new(bpe);
    let replace = Replace::new(" ", SPACE).map_err(|e| err(e.to_string()))?;
    let normalizer = if space_prefix {
        NormalizerWrapper::Sequence(tokenizers::normalizers::Sequence::new(vec![
            NormalizerWrapper::Prepend(Prepend::new(SPACE.into())),
            NormalizerWrapper::Replace(replace.clone()),
        ]))
    } else {
        NormalizerWrapper::Replace(replace.clone())
    };
    inner.with_normalizer(Some(normalizer)).map_err(|e| err(e.to_string()))?;
    let mut decoders = vec![
        DecoderWrapper::Replace(Replace::new(SPACE, " ").map_err(|e| err(e.to_string()))?),
        DecoderWrapper::ByteFallback(ByteFallback::new()),
        DecoderWrapper::Fuse(Fuse::new()),
    ];
    if space_prefix {
        decoders.push(DecoderWrapper::Strip(tokenizers::decoders::strip::Strip::new(' ', 1, 0)));
    }
    inner.with_decoder(Some(DecoderWrapper::Sequence(DecoderSequence::new(decoders))));

    // Control tokens are special (matched whole, skipped when decoding); user-defined
    // pieces are matched whole in the text and decoded as they read.
    let added = |kind: i32, special: bool| -> Vec<AddedToken> {
        tokens
            .iter()
            .zip(types)
            .filter(|(_, t)| **t == kind)
            .map(|(tok, _)| AddedToken::from(tok.to_string(), special).normalized(false))
            .collect()
    };
    inner.add_special_tokens(added(CONTROL, true)).map_err(|e| err(e.to_string()))?;
    inner.add_tokens(added(USER_DEFINED, false)).map_err(|e| err(e.to_string()))?;
    Ok(inner)
}

/// Every split of a normal piece into two pieces of the vocabulary, ranked by the score of
/// the piece (highest first; ties by the piece's id, then the split's).
fn merges(
    tokens: &[&str],
    scores: &[f32],
    types: &[i32],
    vocab: &tokenizers::models::bpe::Vocab,
) -> Vec<(String, String)> {
    let mut ranked: Vec<(f32, u32, usize, String, String)> = Vec::new();
    for (id, (piece, (&score, &kind))) in tokens.iter().zip(scores.iter().zip(types)).enumerate() {
        if kind != NORMAL {
            continue;
        }
        for (at, _) in piece.char_indices().skip(1) {
            let (left, right) = piece.split_at(at);
            if vocab.contains_key(left) && vocab.contains_key(right) {
                ranked.push((score, id as u32, at, left.to_string(), right.to_string()));
            }
        }
    }
    ranked.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    ranked.into_iter().map(|(_, _, _, l, r)| (l, r)).collect()
}

/// The scores and token types of GGUF metadata (types default to normal).
pub(crate) fn scores_and_types(meta: &HashMap<String, Value>, n: usize) -> (Vec<f32>, Vec<i32>) {
    let list = |key: &str| meta.get(key).and_then(|v| v.to_vec().ok());
    let scores = match list("tokenizer.ggml.scores") {
        Some(l) => l.iter().map(|v| v.to_f32().unwrap_or(0.0)).collect(),
        None => vec![0.0; n],
    };
    let types = match list("tokenizer.ggml.token_type") {
        Some(l) => l.iter().map(|v| v.to_i32().unwrap_or(NORMAL)).collect(),
        None => vec![NORMAL; n],
    };
    (scores, types)
}
