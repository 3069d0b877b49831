//! The fixed suite: prompts × policies, run on one backend at a time. For each case the
//! run records what the comparison needs: the final logits after prefill, the kept
//! positions of every layer, 32 greedy tokens, KV bytes, and (for the passage) the
//! compressed-context perplexity of its last tokens after its first ones.

use anyhow::{Context, Result, bail};
use serde::Serialize;
use sieve_backend::Backend;
use sieve_core::policy::PolicyFile;
use sieve_engine::sampling::argmax;
use sieve_engine::template::Message;
use sieve_engine::{Logits, Model, Policy, Session};
use sieve_eval::passkey::PasskeyPrompter;
use sieve_eval::perplexity as eval;

/// Greedy tokens generated per case.
pub const GENERATED: usize = 32;
/// Tokens of the WikiText-2 passage.
pub const PASSAGE_TOKENS: usize = 1024;
/// Of the passage, the context prefilled with the policy before the perplexity's continuation.
pub const PERPLEXITY_CONTEXT: usize = 768;
/// Tokens of the passkey prompt.
pub const PASSKEY_TOKENS: usize = 512;
/// Candidates recorded per greedy token ([`CaseRun::candidates`]).
pub const CANDIDATES: usize = 4;

/// The [`CANDIDATES`] highest logits, highest first (the lower token id first among equals).
fn top(logits: &[f32]) -> Vec<(u32, f32)> {
    let mut best: Vec<(u32, f32)> = Vec::with_capacity(CANDIDATES + 1);
    for (i, &v) in logits.iter().enumerate() {
        if best.len() < CANDIDATES || best.last().is_some_and(|&(_, w)| v > w) {
            let at = best.iter().position(|&(_, w)| v > w).unwrap_or(best.len());
            best.insert(at, (i as u32, v));
            best.truncate(CANDIDATES);
        }
    }
    best
}

/// One prompt of the suite.
#[derive(Debug, Clone)]
pub struct Prompt {
    pub name: &'static str,
    pub ids: Vec<u32>,
    /// Whether the perplexity of this prompt is measured (the passage).
    pub perplexity: bool,
}

/// The suite's prompts for `model`: a short chat prompt (a plain question for a model
/// without a chat template), a WikiText-2 passage of [`PASSAGE_TOKENS`] tokens from `text`
/// (its first [`PERPLEXITY_CONTEXT`] prefilled, the rest scored), and a passkey prompt.
pub fn prompts(model: &Model, text: &str) -> Result<Vec<Prompt>> {
    // A base model without a chat template gets the question as plain text.
    let question = "What is the capital of France?";
    let chat = match &model.chat_template {
        Some(_) => model.render_chat(&[Message::new("user", question)])?,
        None => format!("Question: {question}\nAnswer:"),
    };
    let chat = model.tokenizer.encode(&chat)?;
    let head = &text[..text.len().min(PASSAGE_TOKENS * 16)];
    let mut passage = model.tokenizer.encode(head)?;
    if passage.len() < PASSAGE_TOKENS {
        bail!("the passage text holds only {} tokens, fewer than {PASSAGE_TOKENS}", passage.len());
    }
    passage.truncate(PASSAGE_TOKENS);
    let passkey = PasskeyPrompter::new(model, sieve_eval::passkey::DEFAULT_FILLER, PASSKEY_TOKENS)?
        .build(PASSKEY_TOKENS, 0.5, 0)?
        .ids;
    Ok(vec![
        Prompt { name: "chat", ids: chat, perplexity: false },
        Prompt { name: "passage-768+256", ids: passage, perplexity: true },
        Prompt { name: "passkey-512", ids: passkey, perplexity: false },
    ])
}

fn preset(configs: &std::path::Path, name: &str) -> Result<PolicyFile> {
    let path = configs.join(format!("{name}.toml"));
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    Ok(PolicyFile::from_toml(&text)?)
}

/// The suite's policies, from the presets in `configs`: none, lazy-prefill at 0.5, snapkv
/// at 0.25 (one kept set per KV head as in its preset, one per layer, and Ada-KV budgets
/// across heads), expected-attention at 0.25, h2o with a decode budget small
/// enough to evict during the 32 generated tokens of the chat prompt's cache, streaming with
/// such a budget (its cache renumbered within itself after each eviction), adaptive,
/// gemfilter (its preset, keep 0.5), and lazy-prefill at 0.5 reviving up to 4 pruned
/// tokens per stage at each decoding step.
pub fn policies(configs: &std::path::Path) -> Result<Vec<Policy>> {
    let mut out = vec![Policy::none()];
    let mut lazy = preset(configs, "lazy-prefill")?;
    lazy.override_keep(0.5);
    lazy.name = Some("lazy-prefill@0.5".into());
    let mut snapkv = preset(configs, "snapkv")?;
    snapkv.override_keep(0.25);
    snapkv.name = Some("snapkv@0.25".into());
    // The preset selects per KV head; the same with one set per layer.
    let mut per_layer = snapkv.clone();
    if let Some(kv) = &mut per_layer.kv {
        kv.selection = sieve_core::Selection::Layer;
    }
    per_layer.name = Some("snapkv-per-layer@0.25".into());
    // Ada-KV budgets: the heads of a layer keep different counts (a padded cache).
    let mut ada = snapkv.clone();
    if let Some(kv) = &mut ada.kv {
        kv.selection = sieve_core::Selection::Ada;
    }
    ada.name = Some("snapkv-ada@0.25".into());
    let mut expected = preset(configs, "expected-attention")?;
    expected.override_keep(0.25);
    expected.name = Some("expected-attention@0.25".into());
    let mut h2o = preset(configs, "h2o")?;
    if let Some(d) = &mut h2o.decode {
        d.budget = 40;
        d.every = 4;
        d.recent = 8;
    }
    h2o.name = Some("h2o-decode@40".into());
    let mut streaming = preset(configs, "streaming")?;
    if let Some(d) = &mut streaming.decode {
        d.budget = 40;
        d.every = 4;
    }
    streaming.name = Some("streaming-decode@40".into());
    // Revival: pruned prompt tokens come back while decoding (at most 4 per stage and step).
    let mut revive = lazy.clone();
    if let Some(p) = &mut revive.prefill {
        p.revive = 4;
    }
    revive.name = Some("lazy-revive@0.5".into());
    let adaptive = preset(configs, "adaptive")?;
    let gemfilter = preset(configs, "gemfilter")?;
    for file in [lazy, revive, snapkv, per_layer, ada, expected, h2o, streaming, adaptive, gemfilter] {
        out.push(file.validate()?);
    }
    Ok(out)
}

/// What one backend produced for one prompt and policy.
#[derive(Debug, Clone, Serialize)]
pub struct CaseRun {
    pub prompt: String,
    pub policy: String,
    /// Logits of the last prompt position after prefill.
    #[serde(skip)]
    pub logits: Vec<f32>,
    /// Kept original positions of every layer's cache after prefill.
    #[serde(skip)]
    pub kept: Vec<Vec<usize>>,
    /// Greedy tokens after the prompt.
    pub tokens: Vec<u32>,
    /// For each greedy token, the [`CANDIDATES`] highest logits it was chosen from (token,
    /// logit), highest first: where two backends first choose differently, they show
    /// whether the two tokens tied within the logits' tolerance.
    #[serde(skip)]
    pub candidates: Vec<Vec<(u32, f32)>>,
    /// KV bytes after prefill.
    pub kv_bytes_prefill: usize,
    /// KV bytes after the generated tokens.
    pub kv_bytes_end: usize,
    /// Compressed-context perplexity of the passage's last tokens, where measured.
    pub perplexity: Option<f64>,
}

/// What a case records from the session its prompt was prefilled into: the last
/// position's logits, every KV head's kept positions, the KV bytes, then (on `session`
/// itself, which this advances) [`GENERATED`] greedy tokens and the KV bytes after them.
fn record<B: Backend>(
    prompt: &Prompt,
    policy: &Policy,
    mut session: Session<'_, B>,
    first: &[f32],
) -> sieve_engine::Result<CaseRun> {
    // Every KV head's positions (the same set in each unless selection is per head).
    let heads = session.backend().config().n_kv_heads;
    let kept = session.caches().iter().flat_map(|c| (0..heads).map(move |h| c.head_positions(h).to_vec())).collect();
    let kv_bytes_prefill = session.kv_bytes();
    let (mut tokens, mut candidates) = (vec![argmax(first)], vec![top(first)]);
    while tokens.len() < GENERATED {
        let next = session.step(tokens[tokens.len() - 1])?;
        tokens.push(argmax(&next));
        candidates.push(top(&next));
    }
    Ok(CaseRun {
        prompt: prompt.name.to_string(),
        policy: policy.name.clone(),
        logits: first.to_vec(),
        kept,
        tokens,
        candidates,
        kv_bytes_prefill,
        kv_bytes_end: session.kv_bytes(),
        perplexity: None,
    })
}

/// Runs `prompts` × `policies` on `backend`. The passage is prefilled once, with its first
/// [`PERPLEXITY_CONTEXT`] tokens: the case's logits, kept positions and greedy tokens come
/// from a fork of that session, the perplexity of the rest from the session itself.
pub fn run<B: Backend>(backend: &B, prompts: &[Prompt], policies: &[Policy]) -> Result<Vec<CaseRun>> {
    let mut out = Vec::new();
    for prompt in prompts {
        for policy in policies {
            let what = || format!("{} on `{}` with `{}`", backend.name(), prompt.name, policy.name);
            let case = if prompt.perplexity {
                let protocol = eval::Compressed {
                    context: PERPLEXITY_CONTEXT,
                    continuation: prompt.ids.len() - PERPLEXITY_CONTEXT,
                    windows: 1,
                    bos: None,
                };
                let mut case = None;
                let report = protocol
                    .run(backend, policy, &prompt.ids, |_, session, first| {
                        case = Some(record(prompt, policy, session.fork()?, first)?);
                        Ok(())
                    })
                    .with_context(what)?;
                let mut case = case.with_context(|| format!("{}: no window was prefilled", what()))?;
                case.perplexity = Some(report.perplexity);
                case
            } else {
                let mut session = Session::new(backend, policy.clone()).with_context(what)?;
                let first = session.prefill(&prompt.ids, Logits::Last).with_context(what)?;
                record(prompt, policy, session, first.last()).with_context(what)?
            };
            out.push(case);
        }
    }
    Ok(out)
}
