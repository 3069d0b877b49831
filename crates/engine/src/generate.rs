//! The generation loop: prefill, then sample token by token until eos, a stop string,
//! the token limit or the end of the context.

use std::time::Instant;

use serde::Serialize;

use sieve_backend::Backend;

use crate::error::Result;
use crate::sampling::{Sampler, SamplingParams};
use crate::session::{Logits, Session};
use crate::stats::{RunStats, peak_rss_bytes};
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
    let mut tokens = Vec::new();
    let mut emitted = 0usize;
    let longest_stop = options.stop.iter().map(String::len).max().unwrap_or(0);
    let context = session.backend().config().context;
    let stop_reason = loop {
        if tokenizer.eos.contains(&next) {
            break StopReason::Eos;
        }
        tokens.push(next);
        history.push(next);
        let text = tokenizer.decode(&tokens)?;
        if let Some(cut) = options.stop.iter().filter_map(|s| text.find(s.as_str())).min() {
            if cut > emitted {
                on_text(&text[emitted..cut]);
            }
            emitted = cut.max(emitted);
            break StopReason::StopString;
        }
        // Hold back what could be the start of a stop string or of a multi-byte character.
        let mut safe = text.len().saturating_sub(longest_stop.saturating_sub(1));
        if text.ends_with('\u{FFFD}') {
            safe = safe.min(text.len() - '\u{FFFD}'.len_utf8());
        }
        while safe > emitted && !text.is_char_boundary(safe) {
            safe -= 1;
        }
        if safe > emitted {
            on_text(&text[emitted..safe]);
            emitted = safe;
        }
        if tokens.len() >= options.max_tokens {
            break StopReason::MaxTokens;
        }
        if session.next_position() >= context {
            break StopReason::Context;
        }
        let logits = session.step(next)?;
        steps += 1;
        next = sampler.sample(&logits, &history)?;
    };
    let mut text = tokenizer.decode(&tokens)?;
    if stop_reason == StopReason::StopString {
        text.truncate(emitted);
    } else if text.len() > emitted {
        on_text(&text[emitted..]);
    }
    let decode_secs = decode_started.elapsed().as_secs_f64();
    let mut stats = session.stats.clone();
    stats.generated_tokens = tokens.len();
    stats.ttft_ms = ttft.as_secs_f64() * 1e3;
    stats.decode_ms = decode_secs * 1e3;
    stats.decode_tok_s = if steps > 0 && decode_secs > 0.0 { steps as f64 / decode_secs } else { 0.0 };
    stats.peak_rss_bytes = peak_rss_bytes();
    Ok(Generation { text, tokens, stop_reason, stats })
}
