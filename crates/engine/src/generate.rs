//! The generation loop: prefill, then sample token by token until eos, a stop string,
//! the token limit or the end of the context.

use std::time::Instant;

use serde::Serialize;

use sieve_backend::Backend;

use crate::error::Result;
use crate::sampling::{Sampler, SamplingParams};
use crate::session::{Logits, Session};
use crate::stats::{RunStats, peak_rss_bytes, rss_bytes};
use crate::tokenizer::Tokenizer;

/// What to generate.
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    /// Most tokens to generate.
    pub max_tokens: usize,
    /// Sampling settings.
    pub sampling: SamplingParams,
    /// Generation stops before any of these strings.
    pub stop: Vec<String>,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        Self { max_tokens: 256, sampling: SamplingParams::default(), stop: Vec::new() }
    }
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// The model produced an end-of-sequence token.
    Eos,
    /// A stop string appeared.
    StopString,
    /// `max_tokens` were generated.
    MaxTokens,
    /// The context is full.
    Context,
}

/// The result of [`generate`].
#[derive(Debug, Clone, Serialize)]
pub struct Generation {
    /// Generated text (without the stop string or eos).
    pub text: String,
    /// Generated ids (without eos).
    pub tokens: Vec<u32>,
    /// Why it ended.
    pub stop_reason: StopReason,
    /// Statistics.
    pub stats: RunStats,
}

/// Generated ids turned into text as it becomes final: text that could still be the start
/// of a stop string or of a multi-byte character is held back, and a stop string ends
/// the text before it.
#[derive(Debug, Clone)]
pub struct TextStream {
    stop: Vec<String>,
    longest_stop: usize,
    tokens: Vec<u32>,
    text: String,
    emitted: usize,
    stopped: bool,
}

impl TextStream {
    /// A stream that ends before any of `stop`.
    pub fn new(stop: &[String]) -> Self {
        let longest_stop = stop.iter().map(String::len).max().unwrap_or(0);
        Self { stop: stop.to_vec(), longest_stop, tokens: Vec::new(), text: String::new(), emitted: 0, stopped: false }
    }

    /// Adds a generated id (not eos): returns the text that became final, and whether a
    /// stop string appeared (the stream then ends; later ids are not expected).
    pub fn push(&mut self, tokenizer: &Tokenizer, id: u32) -> Result<(String, bool)> {
        self.tokens.push(id);
        self.text = tokenizer.decode(&self.tokens)?;
        let start = self.emitted;
        if let Some(cut) = self.stop.iter().filter_map(|s| self.text.find(s.as_str())).min() {
            self.emitted = cut.max(self.emitted);
            self.stopped = true;
            return Ok((self.text[start..self.emitted].to_string(), true));
        }
        let mut safe = self.text.len().saturating_sub(self.longest_stop.saturating_sub(1));
        if self.text.ends_with('\u{FFFD}') {
            safe = safe.min(self.text.len() - '\u{FFFD}'.len_utf8());
        }
        while safe > self.emitted && !self.text.is_char_boundary(safe) {
            safe -= 1;
        }
        self.emitted = safe.max(self.emitted);
        Ok((self.text[start..self.emitted].to_string(), false))
    }

    /// Ends the stream: the text held back, unless a stop string ended it.
    pub fn finish(&mut self, tokenizer: &Tokenizer) -> Result<String> {
        if self.stopped {
            return Ok(String::new());
        }
        self.text = tokenizer.decode(&self.tokens)?;
        let rest = self.text.get(self.emitted..).unwrap_or_default().to_string();
        self.emitted = self.text.len();
        Ok(rest)
    }

    /// The ids pushed so far.
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    /// The final text (up to a stop string) and the ids.
    pub fn into_parts(mut self) -> (String, Vec<u32>) {
        self.text.truncate(self.emitted);
        (self.text, self.tokens)
    }
}

/// Generates a continuation of `prompt` (token ids, appended to what the session already
/// holds), passing printable text to `on_text` as it comes.
pub fn generate<B: Backend>(
    session: &mut Session<'_, B>,
    tokenizer: &Tokenizer,
    prompt: &[u32],
    options: &GenerateOptions,
    on_text: &mut dyn FnMut(&str),
) -> Result<Generation> {
    let mut sampler = Sampler::new(options.sampling.clone())?;
    let started = Instant::now();
    let prefill = session.prefill(prompt, Logits::Last)?;
    let mut history: Vec<u32> = prompt.to_vec();
    let mut next = sampler.sample(prefill.last(), &history)?;
    let ttft = started.elapsed();
    let decode_started = Instant::now();
    let mut steps = 0usize;
    let mut text = TextStream::new(&options.stop);
    let stop_reason = loop {
        if tokenizer.eos.contains(&next) {
            break StopReason::Eos;
        }
        history.push(next);
        let (piece, stopped) = text.push(tokenizer, next)?;
        if !piece.is_empty() {
            on_text(&piece);
        }
        if stopped {
            break StopReason::StopString;
        }
        if text.tokens().len() >= options.max_tokens {
            break StopReason::MaxTokens;
        }
        if !session.can_take(1) {
            break StopReason::Context;
        }
        let logits = session.step(next)?;
        steps += 1;
        next = sampler.sample(&logits, &history)?;
    };
    let rest = text.finish(tokenizer)?;
    if !rest.is_empty() {
        on_text(&rest);
    }
    let (text, tokens) = text.into_parts();
    let decode_secs = decode_started.elapsed().as_secs_f64();
    let mut stats = session.stats.clone();
    stats.generated_tokens = tokens.len();
    stats.ttft_ms = ttft.as_secs_f64() * 1e3;
    stats.decode_ms = decode_secs * 1e3;
    stats.decode_tok_s = if steps > 0 && decode_secs > 0.0 { steps as f64 / decode_secs } else { 0.0 };
    stats.peak_rss_bytes = peak_rss_bytes();
    stats.rss_bytes = rss_bytes();
    Ok(Generation { text, tokens, stop_reason, stats })
}
