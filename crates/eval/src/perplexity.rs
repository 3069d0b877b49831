//! Evaluation: perplexity with a compressed context, and streaming perplexity.
//!
//! Compressed-context perplexity (the question-agnostic setting of KV compression,
//! applied to language modelling): prefill `context` tokens with the policy, then score
//! the next `continuation` tokens teacher-forced against the pruned cache (in one call per
//! layer, [`Session::extend`], unless the policy evicts while decoding: then one step per
//! token). Streaming
//! perplexity (StreamingLLM's protocol): feed a text one token at a time while the cache
//! is cut to its budget after each step.

use serde::Serialize;
use sieve_backend::Backend;
use sieve_core::Policy;
use sieve_engine::{Logits, Session};

use crate::error::{Error, Result};

/// Negative log-likelihood of `target` under `logits` (log-softmax in f64).
pub fn nll(logits: &[f32], target: u32) -> Result<f64> {
    let t = target as usize;
    if t >= logits.len() {
        return Err(sieve_engine::Error::TokenId { id: target, vocab: logits.len() }.into());
    }
    if let Some(position) = logits.iter().position(|x| !x.is_finite()) {
        return Err(sieve_engine::Error::NonFiniteLogits { position, value: logits[position] }.into());
    }
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let log_sum = logits.iter().map(|&x| (x as f64 - max).exp()).sum::<f64>().ln() + max;
    Ok(log_sum - logits[t] as f64)
}

/// One window of a perplexity run.
#[derive(Debug, Clone, Serialize)]
pub struct WindowScore {
    /// First token of the window in the text.
    pub start: usize,
    /// Tokens scored.
    pub scored: usize,
    /// Sum of their negative log-likelihoods.
    pub nll: f64,
    /// KV bytes after the window's prefill.
    pub kv_bytes: usize,
    /// KV bytes the same prefill holds without pruning.
    pub kv_bytes_unpruned: usize,
    /// Fraction of token-layers the prefill computed.
    pub computed: f64,
}

/// The result of a perplexity run.
#[derive(Debug, Clone, Serialize)]
pub struct PerplexityReport {
    /// Protocol: `compressed` or `streaming`.
    pub protocol: String,
    /// Policy name.
    pub policy: String,
    /// `exp(mean nll)` over every scored token.
    pub perplexity: f64,
    /// Tokens scored.
    pub scored: usize,
    /// Per window.
    pub windows: Vec<WindowScore>,
}

impl PerplexityReport {
    fn new(protocol: &str, policy: &str, windows: Vec<WindowScore>) -> Result<Self> {
        let scored: usize = windows.iter().map(|w| w.scored).sum();
        if scored == 0 {
            return Err(Error::Invalid("the text is too short for one window".into()));
        }
        let nll: f64 = windows.iter().map(|w| w.nll).sum();
        Ok(Self {
            protocol: protocol.into(),
            policy: policy.into(),
            perplexity: (nll / scored as f64).exp(),
            scored,
            windows,
        })
    }
}

/// Compressed-context perplexity over up to `windows` consecutive, non-overlapping windows
/// of `context + continuation` tokens.
pub fn compressed_perplexity<B: Backend>(
    backend: &B,
    policy: &Policy,
    tokens: &[u32],
    context: usize,
    continuation: usize,
    windows: usize,
) -> Result<PerplexityReport> {
    compressed_perplexity_with_bos(backend, policy, tokens, None, context, continuation, windows)
}

/// [`compressed_perplexity`] of a model that wants a BOS token first: with `bos`, every
/// window is that token followed by `context + continuation - 1` tokens of the text
/// (`tokens`, without a BOS), windows stepping by as many.
pub fn compressed_perplexity_with_bos<B: Backend>(
    backend: &B,
    policy: &Policy,
    tokens: &[u32],
    bos: Option<u32>,
    context: usize,
    continuation: usize,
    windows: usize,
) -> Result<PerplexityReport> {
    Compressed { context, continuation, windows, bos }.run(backend, policy, tokens, |_, _, _| Ok(()))
}

/// The compressed-context protocol's cut of a text: up to `windows` consecutive windows of
/// `context + continuation` tokens (with `bos`, that token and `context + continuation - 1`
/// tokens of the text, windows stepping by as many).
#[derive(Debug, Clone, Copy)]
pub struct Compressed {
    pub context: usize,
    pub continuation: usize,
    pub windows: usize,
    pub bos: Option<u32>,
}

impl Compressed {
    /// The perplexity of `tokens` under `policy`, with `inspect` called on each window's
    /// session once its context is prefilled, before the continuation is scored (the
    /// window's index, the session, the logits of the context's last position): a caller
    /// can read the kept positions there, or fork the session and generate from the same
    /// prefill, instead of prefilling the context a second time.
    pub fn run<'b, B, F>(
        &self,
        backend: &'b B,
        policy: &Policy,
        tokens: &[u32],
        mut inspect: F,
    ) -> Result<PerplexityReport>
    where
        B: Backend,
        F: FnMut(usize, &Session<'b, B>, &[f32]) -> Result<()>,
    {
        let Self { context, continuation, windows, bos } = *self;
        if context == 0 || continuation == 0 || windows == 0 {
            return Err(Error::Invalid("context, continuation and windows must be at least 1".into()));
        }
        let span = context + continuation;
        if span > backend.config().context {
            let context = backend.config().context;
            return Err(sieve_engine::Error::ContextOverflow { needed: span, context }.into());
        }
        let mut out = Vec::new();
        let step = span - usize::from(bos.is_some());
        for w in 0..windows {
            let start = w * step;
            if start + step > tokens.len() {
                break;
            }
            let window: Vec<u32> = bos.into_iter().chain(tokens[start..start + step].iter().copied()).collect();
            let (ctx, cont) = (&window[..context], &window[context..]);
            let mut session = Session::new(backend, policy.clone())?;
            let prefill = session.prefill(ctx, Logits::Last)?;
            inspect(w, &session, prefill.last())?;
            let (kv_bytes, kv_unpruned) = (session.stats.kv_bytes, session.stats.kv_bytes_unpruned);
            let layers = session.stats.tokens_per_layer.len().max(1);
            let computed = session.stats.tokens_per_layer.iter().sum::<usize>() as f64 / (context * layers) as f64;
            let mut total = nll(prefill.last(), cont[0])?;
            if policy.decode.is_none() && !policy.revives() && cont.len() > 1 {
                // Nothing is evicted or revived between tokens: one call scores the whole
                // continuation. (Revival follows each new token's attention, so a policy that
                // revives is fed one token at a time, as generation feeds it.)
                let rest = session.extend(&cont[..cont.len() - 1], Logits::All)?;
                for (i, &next) in cont[1..].iter().enumerate() {
                    total += nll(rest.row(i), next)?;
                }
            } else {
                for pair in cont.windows(2) {
                    let logits = session.step(pair[0])?;
                    total += nll(&logits, pair[1])?;
                }
            }
            out.push(WindowScore {
                start,
                scored: continuation,
                nll: total,
                kv_bytes,
                kv_bytes_unpruned: kv_unpruned,
                computed,
            });
        }
        PerplexityReport::new("compressed", &policy.name, out)
    }
}

/// Streaming perplexity of the first `length` tokens (after the first) under a policy whose
/// `[decode]` section holds the cache budget; every token is fed one at a time. The text
/// may run past the model's context: the session renumbers its bounded cache to go on.
/// One window per context length of text, so that a rise past the context shows.
pub fn streaming_perplexity<B: Backend>(
    backend: &B,
    policy: &Policy,
    tokens: &[u32],
    length: usize,
) -> Result<PerplexityReport> {
    if policy.decode.is_none() && !policy.is_none() {
        return Err(Error::Invalid("streaming perplexity needs a policy with a [decode] budget (or none)".into()));
    }
    let n = length.min(tokens.len());
    if n < 2 {
        return Err(Error::Invalid("streaming perplexity needs at least two tokens".into()));
    }
    let context = backend.config().context;
    if n > context && policy.decode.is_none() {
        return Err(sieve_engine::Error::ContextOverflow { needed: n, context }.into());
    }
    let mut session = Session::new(backend, policy.clone())?;
    let mut logits = session.prefill(&tokens[..1], Logits::Last)?.last().to_vec();
    let mut windows = Vec::new();
    let mut window = WindowScore { start: 0, scored: 0, nll: 0.0, kv_bytes: 0, kv_bytes_unpruned: 0, computed: 1.0 };
    for (i, &token) in tokens.iter().enumerate().take(n).skip(1) {
        window.nll += nll(&logits, token)?;
        window.scored += 1;
        if i + 1 < n {
            logits = session.step(token)?;
        }
        if (i + 1) % context == 0 || i + 1 == n {
            window.kv_bytes = session.kv_bytes();
            window.kv_bytes_unpruned = session.stats.kv_bytes_unpruned;
            let next = WindowScore { start: i + 1, scored: 0, nll: 0.0, ..window.clone() };
            windows.push(std::mem::replace(&mut window, next));
        }
    }
    PerplexityReport::new("streaming", &policy.name, windows)
}

/// Perplexity by llama.cpp's `llama-perplexity` protocol: non-overlapping chunks of `n_ctx`
/// tokens, each prefilled unpruned from an empty cache, and only the second half of each
/// chunk scored (token `j + 1` from the logits of position `j`, for `j` from `n_ctx / 2` to
/// `n_ctx - 2`). Up to `chunks` chunks from the start of `tokens`.
pub fn chunked_perplexity<B: Backend>(
    backend: &B,
    tokens: &[u32],
    n_ctx: usize,
    chunks: usize,
) -> Result<PerplexityReport> {
    if n_ctx < 4 || chunks == 0 {
        return Err(Error::Invalid("chunked perplexity needs n_ctx >= 4 and at least one chunk".into()));
    }
    if n_ctx > backend.config().context {
        let context = backend.config().context;
        return Err(sieve_engine::Error::ContextOverflow { needed: n_ctx, context }.into());
    }
    let first = n_ctx / 2;
    let mut out = Vec::new();
    for c in 0..chunks.min(tokens.len() / n_ctx) {
        let chunk = &tokens[c * n_ctx..(c + 1) * n_ctx];
        let mut session = Session::new(backend, Policy::none())?;
        let logits = session.prefill(chunk, Logits::All)?;
        let mut total = 0.0;
        for j in first..n_ctx - 1 {
            total += nll(logits.row(j), chunk[j + 1])?;
        }
        out.push(WindowScore {
            start: c * n_ctx,
            scored: n_ctx - 1 - first,
            nll: total,
            kv_bytes: session.stats.kv_bytes,
            kv_bytes_unpruned: session.stats.kv_bytes_unpruned,
            computed: 1.0,
        });
    }
    PerplexityReport::new("chunks", "none", out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nll_is_minus_log_softmax() {
        let v = nll(&[0.0, (3.0f32).ln()], 1).unwrap();
        assert!((v - (4.0f64 / 3.0).ln()).abs() < 1e-6);
        assert!(nll(&[0.0], 1).is_err());
        assert!(nll(&[f32::NAN, 0.0], 1).is_err());
    }
}
