//! The tokenizer: from a `tokenizer.json`, or built from GGUF metadata.

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::gguf_file::Value;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, PreTokenizerWrapper, SplitDelimiterBehavior};

use crate::error::{Error, Result};

/// Split pattern of Llama 3's tokenizer (GGUF pre `llama-bpe`).
const LLAMA3_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Split pattern of Qwen2's tokenizer (GGUF pre `qwen2`).
const QWEN2_PATTERN: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// A text tokenizer with the model's special ids.
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// Beginning-of-sequence id, if the model has one.
    pub bos: Option<u32>,
    /// Ids that end generation.
    pub eos: Vec<u32>,
    /// Whether a BOS token starts every prompt.
    pub add_bos: bool,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab", &self.vocab_size())
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .finish()
    }
}

fn tok_err(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Error {
    Error::Tokenizer(e.into())
}

fn meta_u32(meta: &HashMap<String, Value>, key: &str) -> Option<u32> {
    match meta.get(key)? {
        Value::U32(x) => Some(*x),
        Value::I32(x) => u32::try_from(*x).ok(),
        Value::U64(x) => u32::try_from(*x).ok(),
        _ => None,
    }
}

fn meta_strings<'a>(meta: &'a HashMap<String, Value>, key: &str) -> Result<Vec<&'a str>> {
    let values = meta.get(key).ok_or_else(|| tok_err(format!("GGUF metadata has no `{key}`")))?;
    let list = values.to_vec().map_err(|_| tok_err(format!("`{key}` is not an array")))?;
    list.iter()
        .map(|v| v.to_string().map(String::as_str).map_err(|_| tok_err(format!("`{key}` holds a non-string"))))
        .collect()
}

impl Tokenizer {
    /// Wraps a `tokenizers` tokenizer.
    pub fn new(inner: tokenizers::Tokenizer, bos: Option<u32>, eos: Vec<u32>, add_bos: bool) -> Self {
        Self { inner, bos, eos, add_bos }
    }

    /// Builds the tokenizer that GGUF metadata describes (GPT-2 style byte-level BPE).
    pub fn from_gguf(meta: &HashMap<String, Value>) -> Result<Self> {
        let model = match meta.get("tokenizer.ggml.model") {
            Some(Value::String(s)) => s.as_str(),
            _ => return Err(tok_err("GGUF metadata has no `tokenizer.ggml.model`")),
        };
        if model == "llama" {
            return Self::spm_from_gguf(meta);
        }
        if model != "gpt2" {
            return Err(tok_err(format!(
                "GGUF tokenizer model `{model}` is not supported; give a model directory with a tokenizer.json instead"
            )));
        }
        let tokens = meta_strings(meta, "tokenizer.ggml.tokens")?;
        let merges: Vec<(String, String)> = meta_strings(meta, "tokenizer.ggml.merges")?
            .into_iter()
            .map(|m| {
                m.split_once(' ')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .ok_or_else(|| tok_err(format!("bad merge `{m}`")))
            })
            .collect::<Result<_>>()?;
        let vocab: tokenizers::models::bpe::Vocab =
            tokens.iter().enumerate().map(|(i, t)| (t.to_string(), i as u32)).collect();
        let bpe = BPE::builder().vocab_and_merges(vocab, merges).build().map_err(tok_err)?;
        let mut inner = tokenizers::Tokenizer::new(bpe);

        let pre = match meta.get("tokenizer.ggml.pre") {
            Some(Value::String(s)) => s.as_str(),
            _ => "default",
        };
        let byte_level = |use_regex| PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, use_regex));
        let split = |pattern: &str| -> Result<PreTokenizerWrapper> {
            let s = Split::new(SplitPattern::Regex(pattern.into()), SplitDelimiterBehavior::Isolated, false)
                .map_err(tok_err)?;
            Ok(PreTokenizerWrapper::Split(s))
        };
        let pre_tokenizer = match pre {
            "smollm" | "starcoder" | "refact" => {
                Sequence::new(vec![PreTokenizerWrapper::Digits(Digits::new(true)), byte_level(true)])
            }
            "gpt2" | "default" => Sequence::new(vec![byte_level(true)]),
            "llama-bpe" | "llama3" | "smaug-bpe" => Sequence::new(vec![split(LLAMA3_PATTERN)?, byte_level(false)]),
            "qwen2" => Sequence::new(vec![split(QWEN2_PATTERN)?, byte_level(false)]),
            other => {
                return Err(tok_err(format!(
                    "GGUF pre-tokenizer `{other}` is not supported; give a tokenizer.json instead"
                )));
            }
        };
        inner.with_pre_tokenizer(Some(PreTokenizerWrapper::Sequence(pre_tokenizer)));
        inner.with_decoder(Some(ByteLevelDecoder::default()));
        inner.with_post_processor(Some(ByteLevel::new(false, true, true)));

        // Control (3) and user-defined (4) tokens are special: matched whole in the input,
        // skipped when decoding.
        let types: Vec<i64> = match meta.get("tokenizer.ggml.token_type").and_then(|v| v.to_vec().ok()) {
            Some(list) => list.iter().map(|v| v.to_i32().map(i64::from).unwrap_or(1)).collect(),
            None => vec![1; tokens.len()],
        };
        let special: Vec<AddedToken> = tokens
            .iter()
            .zip(&types)
            .filter(|(_, t)| **t == 3 || **t == 4)
            .map(|(tok, _)| AddedToken::from(tok.to_string(), true))
            .collect();
        inner.add_special_tokens(special).map_err(tok_err)?;

        let bos = meta_u32(meta, "tokenizer.ggml.bos_token_id");
        let eos = meta_u32(meta, "tokenizer.ggml.eos_token_id").into_iter().collect();
        let add_bos = matches!(meta.get("tokenizer.ggml.add_bos_token"), Some(Value::Bool(true)));
        Ok(Self { inner, bos, eos, add_bos })
    }

    /// A SentencePiece-style tokenizer from GGUF metadata ([`crate::spm`]).
    fn spm_from_gguf(meta: &HashMap<String, Value>) -> Result<Self> {
        let tokens = meta_strings(meta, "tokenizer.ggml.tokens")?;
        let (scores, types) = crate::spm::scores_and_types(meta, tokens.len());
        let space_prefix = !matches!(meta.get("tokenizer.ggml.add_space_prefix"), Some(Value::Bool(false)));
        let inner = crate::spm::build(&tokens, &scores, &types, space_prefix, tok_err)?;
        let bos = meta_u32(meta, "tokenizer.ggml.bos_token_id");
        let eos = meta_u32(meta, "tokenizer.ggml.eos_token_id").into_iter().collect();
        let add_bos = !matches!(meta.get("tokenizer.ggml.add_bos_token"), Some(Value::Bool(false)));
        Ok(Self { inner, bos, eos, add_bos })
    }

    /// Loads a `tokenizer.json`; special ids come from `config` (a `tokenizer_config.json`
    /// or `config.json` parsed as JSON) where present.
    pub fn from_file(path: &Path, config: Option<&serde_json::Value>) -> Result<Self> {
        let inner = tokenizers::Tokenizer::from_file(path).map_err(|e| tok_err(format!("{}: {e}", path.display())))?;
        let id_of = |key: &str| -> Option<u32> {
            let v = config?.get(key)?;
            let text = v.as_str().or_else(|| v.get("content").and_then(|c| c.as_str()))?;
            inner.token_to_id(text)
        };
        let bos = id_of("bos_token");
        let eos = id_of("eos_token").into_iter().collect();
        let add_bos = config.and_then(|c| c.get("add_bos_token")).and_then(|v| v.as_bool()).unwrap_or(false);
        Ok(Self { inner, bos, eos, add_bos })
    }

    /// Token ids of `text`; special tokens written in the text are recognised. A BOS is
    /// prepended when the model asks for one.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self.inner.encode(text, false).map_err(tok_err)?;
        let mut ids = Vec::with_capacity(enc.len() + 1);
        if let (true, Some(bos)) = (self.add_bos, self.bos) {
            ids.push(bos);
        }
        ids.extend_from_slice(enc.get_ids());
        Ok(ids)
    }

    /// The first `n` tokens of a long `text` (fewer when the whole text has fewer), without
    /// tokenizing all of it: a growing prefix is tokenized until it yields more than `n`
    /// tokens, so that the last one kept is not cut from a longer word.
    pub fn encode_prefix(&self, text: &str, n: usize) -> Result<Vec<u32>> {
        let mut len = n.saturating_mul(8).saturating_add(1024).min(text.len());
        loop {
            while !text.is_char_boundary(len) {
                len += 1;
            }
            let mut ids = self.encode(&text[..len])?;
            if ids.len() > n || len == text.len() {
                ids.truncate(n);
                return Ok(ids);
            }
            len = len.saturating_mul(2).min(text.len());
        }
    }

    /// Text of `ids`, with special tokens left out.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner.decode(ids, true).map_err(tok_err)
    }

    /// The string of one token id, if it exists.
    pub fn token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// The id of a token string, if it exists.
    pub fn id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The largest id of the model's own vocabulary, added tokens excluded.
    pub fn max_base_id(&self) -> Option<u32> {
        self.inner.get_vocab(false).into_values().max()
    }

    /// The largest token id, added tokens included (`None` for an empty vocabulary).
    pub fn max_id(&self) -> Option<u32> {
        self.inner.get_vocab(true).into_values().max()
    }

    /// Writes the tokenizer as a `tokenizer.json`.
    pub fn save(&self, path: &Path) -> Result<()> {
        self.inner.save(path, false).map_err(tok_err)
    }
}

/// Turns a growing list of generated ids into text pieces as they become printable: a
/// piece is released only when it does not end inside a multi-byte character.
#[derive(Debug, Default)]
pub struct TextStream {
    ids: Vec<u32>,
    printed: usize,
}

impl TextStream {
    /// Adds one id; returns newly printable text, if any.
    pub fn push(&mut self, tokenizer: &Tokenizer, id: u32) -> Result<Option<String>> {
        self.ids.push(id);
        let text = tokenizer.decode(&self.ids)?;
        if text.len() > self.printed && !text.ends_with('\u{FFFD}') && text.is_char_boundary(self.printed) {
            let piece = text[self.printed..].to_string();
            self.printed = text.len();
            return Ok(Some(piece));
        }
        Ok(None)
    }

    /// The whole text so far.
    pub fn text(&self, tokenizer: &Tokenizer) -> Result<String> {
        tokenizer.decode(&self.ids)
    }
}
