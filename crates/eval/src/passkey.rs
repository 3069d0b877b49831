//! Passkey retrieval: a synthetic long-context test of what pruning forgets.
//!
//! A random five-digit pass key is hidden at a chosen depth of filler text; the prompt
//! (through the model's chat template) asks for it, and greedy generation of a few tokens
//! must contain its digits (the protocol of Mohtashami and Jaggi, 2023). The prompt is
//! assembled from token ids, so that it has exactly the length asked for: the template's
//! head with an introduction, filler, the needle sentence, more filler, then the question
//! and the template's tail.

use serde::Serialize;
use sieve_backend::Backend;
use sieve_core::Policy;
use sieve_core::rng::SplitMix64;
use sieve_engine::template::Message;
use sieve_engine::tokenizer::Tokenizer;
use sieve_engine::{GenerateOptions, Model, Session, generate};

use crate::error::{Error, Result};

/// The default filler: neutral sentences, repeated.
pub const DEFAULT_FILLER: &str =
    "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again.";

/// Tokens generated to answer, by default.
pub const DEFAULT_ANSWER_TOKENS: usize = 12;

const INTRO: &str = "There is an important info hidden inside a lot of irrelevant text. Find it and memorize it. \
                     I will quiz you about the important information there.\n\n";
const QUESTION: &str = "\n\nWhat is the pass key?";
/// Stands for the context while the chat template renders; split out afterwards.
const MARKER: &str = "\u{1}SIEVE-PASSKEY-CONTEXT\u{1}";
/// How far (in tokens) the needle may move from its exact depth to start a sentence.
const SNAP_WINDOW: usize = 48;

/// The sentence that carries the key.
pub fn needle_text(key: u32) -> String {
    format!(" The pass key is {key}. Remember it. {key} is the pass key.")
}

/// The pass key of one trial: five digits, from `seed` and the trial's length and depth,
/// so that every cell of a grid has its own key and every policy sees the same one.
pub fn passkey_for(seed: u64, length: usize, depth: f64) -> u32 {
    let mut rng = SplitMix64::for_stream(seed, length as u64, depth.to_bits());
    10_000 + (rng.next_u64() % 90_000) as u32
}

/// One prompt of a passkey trial.
#[derive(Debug, Clone)]
pub struct PasskeyPrompt {
    /// Length asked for, in tokens.
    pub length: usize,
    /// Depth asked for.
    pub depth: f64,
    /// Seed of the key.
    pub seed: u64,
    /// The key, as its digits.
    pub passkey: String,
    /// Prompt token ids (exactly the length asked for).
    pub ids: Vec<u32>,
    /// Index in `ids` where the needle sentence starts.
    pub needle_at: usize,
    /// Filler tokens in the prompt.
    pub filler_tokens: usize,
    /// Filler tokens before the needle.
    pub filler_before: usize,
}

/// Builds passkey prompts for one model and one filler text.
#[derive(Debug, Clone)]
pub struct PasskeyPrompter {
    tokenizer: Tokenizer,
    head: Vec<u32>,
    tail: Vec<u32>,
    filler: Vec<u32>,
    /// `boundary[i]`: a sentence may start at filler token `i` (`i == 0`, or token
    /// `i - 1` ends a sentence).
    boundary: Vec<bool>,
}

/// `ids` without a leading BOS that the tokenizer adds to every text.
fn without_bos(tokenizer: &Tokenizer, mut ids: Vec<u32>) -> Vec<u32> {
    if let (true, Some(bos)) = (tokenizer.add_bos, tokenizer.bos)
        && ids.first() == Some(&bos)
    {
        ids.remove(0);
    }
    ids
}

impl PasskeyPrompter {
    /// A prompter for `model` (its tokenizer, and its chat template where it has one) with
    /// `filler` as the text around the needle; enough of it for prompts of up to
    /// `max_length` tokens is tokenized, repeated when the text is shorter.
    pub fn new(model: &Model, filler: &str, max_length: usize) -> Result<Self> {
        let tokenizer = model.tokenizer.clone();
        let filler = filler.trim();
        if filler.is_empty() {
            return Err(Error::Invalid("the passkey filler text is empty".into()));
        }
        let (head_text, tail_text) = if model.chat_template.is_some() {
            let rendered = model.render_chat(&[Message::new("user", MARKER)])?;
            let (head, tail) = rendered
                .split_once(MARKER)
                .ok_or_else(|| Error::Invalid("the chat template dropped the user's message".into()))?;
            (format!("{head}{INTRO}"), format!("{QUESTION}{tail}"))
        } else {
            (INTRO.to_string(), QUESTION.to_string())
        };
        let head = tokenizer.encode(&head_text)?;
        let tail = without_bos(&tokenizer, tokenizer.encode(&tail_text)?);

        // Enough of the filler for `max_length` tokens, with a leading space as the needle
        // has, so that the pieces join as words do (one token more for a BOS).
        let mut ids = without_bos(&tokenizer, tokenizer.encode_prefix(&format!(" {filler}"), max_length + 1)?);
        if ids.is_empty() {
            return Err(Error::Invalid("the passkey filler text has no tokens".into()));
        }
        // Short texts repeat, separated by a space so that the sentences stay apart.
        if ids.len() < max_length {
            let unit = without_bos(&tokenizer, tokenizer.encode(&format!(" {filler}"))?);
            while ids.len() < max_length && !unit.is_empty() {
                ids.extend_from_slice(&unit);
            }
        }
        let mut boundary = vec![true];
        for &id in &ids {
            let piece = tokenizer.decode(&[id])?;
            let piece = piece.trim_end();
            boundary.push(piece.ends_with('.') || piece.ends_with('!') || piece.ends_with('?'));
        }
        Ok(Self { tokenizer, head, tail, filler: ids, boundary })
    }

    /// Tokens of a prompt besides its filler, for `key`.
    fn overhead(&self, key: u32) -> Result<usize> {
        Ok(self.head.len() + self.tail.len() + self.needle(key)?.len())
    }

    fn needle(&self, key: u32) -> Result<Vec<u32>> {
        Ok(without_bos(&self.tokenizer, self.tokenizer.encode(&needle_text(key))?))
    }

    /// The shortest prompt this prompter can build (no filler at all).
    pub fn min_length(&self) -> Result<usize> {
        self.overhead(99_999)
    }

    /// The prompt of `length` tokens with the key of `seed` at `depth` (0 = the start of
    /// the filler, 1 = its end), moved by up to a few tokens to start a sentence.
    pub fn build(&self, length: usize, depth: f64, seed: u64) -> Result<PasskeyPrompt> {
        if !(0.0..=1.0).contains(&depth) {
            return Err(Error::Invalid(format!("passkey depth {depth} is outside 0..=1")));
        }
        let key = passkey_for(seed, length, depth);
        let needle = self.needle(key)?;
        let overhead = self.head.len() + self.tail.len() + needle.len();
        let n = length.checked_sub(overhead).ok_or_else(|| {
            Error::Invalid(format!(
                "passkey length {length} is too short: the prompt without filler takes {overhead} tokens"
            ))
        })?;
        if n > self.filler.len() {
            return Err(Error::Invalid(format!(
                "passkey length {length} needs {n} filler tokens, but only {} were prepared",
                self.filler.len()
            )));
        }
        let at = snap(&self.boundary[..=n], (depth * n as f64).round() as usize, SNAP_WINDOW);
        let mut ids = Vec::with_capacity(length);
        ids.extend_from_slice(&self.head);
        ids.extend_from_slice(&self.filler[..at]);
        let needle_at = ids.len();
        ids.extend_from_slice(&needle);
        ids.extend_from_slice(&self.filler[at..n]);
        ids.extend_from_slice(&self.tail);
        Ok(PasskeyPrompt {
            length,
            depth,
            seed,
            passkey: key.to_string(),
            ids,
            needle_at,
            filler_tokens: n,
            filler_before: at,
        })
    }
}

/// The index nearest `target` (within `window`, the lower on ties) where `ok` holds, or
/// `target` itself when none does.
fn snap(ok: &[bool], target: usize, window: usize) -> usize {
    let target = target.min(ok.len().saturating_sub(1));
    for d in 0..=window {
        for i in [target.checked_sub(d), target.checked_add(d)].into_iter().flatten() {
            if ok.get(i) == Some(&true) {
                return i;
            }
        }
    }
    target
}

/// One trial: a prompt answered under one policy.
#[derive(Debug, Clone, Serialize)]
pub struct PasskeyTrial {
    /// Policy name.
    pub policy: String,
    /// Prompt length in tokens.
    pub length: usize,
    /// Depth of the needle asked for (fraction of the filler before it).
    pub depth: f64,
    /// Depth where it landed (after moving to a sentence start), as a fraction of the
    /// prompt's filler.
    pub actual_depth: f64,
    /// Seed of the key.
    pub seed: u64,
    /// The key.
    pub passkey: String,
    /// Prompt tokens.
    pub prompt_tokens: usize,
    /// Token index of the needle in the prompt.
    pub needle_at: usize,
    /// The generated answer.
    pub answer: String,
    /// Whether the answer contains the key.
    pub found: bool,
    /// Time to first token, milliseconds.
    pub ttft_ms: f64,
    /// KV bytes at the end of the answer.
    pub kv_bytes: usize,
    /// KV bytes the same run holds without pruning.
    pub kv_bytes_unpruned: usize,
}

/// Answers `prompt` greedily with `policy` (up to `max_tokens` tokens) and checks the key.
pub fn run_trial<B: Backend>(
    backend: &B,
    tokenizer: &Tokenizer,
    policy: &Policy,
    prompt: &PasskeyPrompt,
    max_tokens: usize,
) -> Result<PasskeyTrial> {
    let mut session = Session::new(backend, policy.clone())?;
    let options = GenerateOptions { max_tokens, ..GenerateOptions::default() };
    let g = generate(&mut session, tokenizer, &prompt.ids, &options, &mut |_| {})?;
    Ok(PasskeyTrial {
        policy: policy.name.clone(),
        length: prompt.length,
        depth: prompt.depth,
        actual_depth: prompt.filler_before as f64 / prompt.filler_tokens.max(1) as f64,
        seed: prompt.seed,
        passkey: prompt.passkey.clone(),
        prompt_tokens: prompt.ids.len(),
        needle_at: prompt.needle_at,
        found: g.text.contains(&prompt.passkey),
        answer: g.text,
        ttft_ms: g.stats.ttft_ms,
        kv_bytes: g.stats.kv_bytes,
        kv_bytes_unpruned: g.stats.kv_bytes_unpruned,
    })
}

/// Accuracy of one policy over the trials that share one value of a grid axis.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Accuracy {
    /// Policy name.
    pub policy: String,
    /// The axis value (a length or a depth).
    pub value: f64,
    /// Trials whose answer held the key.
    pub found: usize,
    /// Trials.
    pub trials: usize,
}

impl Accuracy {
    /// `found / trials` (0 for no trials).
    pub fn rate(&self) -> f64 {
        if self.trials == 0 { 0.0 } else { self.found as f64 / self.trials as f64 }
    }
}

/// Accuracy per policy and per value of `axis` (e.g. `|t| t.length as f64`), policies and
/// values in the order they first appear in `trials`.
pub fn accuracy_by(trials: &[PasskeyTrial], axis: impl Fn(&PasskeyTrial) -> f64) -> Vec<Accuracy> {
    let mut out: Vec<Accuracy> = Vec::new();
    let mut policies: Vec<&str> = Vec::new();
    let mut values: Vec<f64> = Vec::new();
    for t in trials {
        if !policies.contains(&t.policy.as_str()) {
            policies.push(&t.policy);
        }
        let v = axis(t);
        if !values.contains(&v) {
            values.push(v);
        }
    }
    for p in &policies {
        for &v in &values {
            let cell: Vec<&PasskeyTrial> = trials.iter().filter(|t| t.policy == *p && axis(t) == v).collect();
            if !cell.is_empty() {
                out.push(Accuracy {
                    policy: (*p).to_string(),
                    value: v,
                    found: cell.iter().filter(|t| t.found).count(),
                    trials: cell.len(),
                });
            }
        }
    }
    out
}

/// A grid of trials: every length × depth × seed, for every policy.
#[derive(Debug, Clone, PartialEq)]
pub struct PasskeyGrid {
    /// Prompt lengths, in tokens.
    pub lengths: Vec<usize>,
    /// Depths of the key, fractions of the filler before it (0 to 1).
    pub depths: Vec<f64>,
    /// Seeds (keys) per cell.
    pub seeds: u64,
    /// Tokens generated to answer.
    pub answer_tokens: usize,
}

impl PasskeyGrid {
    /// Checks that every axis has a value and every value is in range.
    pub fn validate(&self) -> Result<()> {
        if self.lengths.is_empty() || self.depths.is_empty() || self.seeds == 0 {
            return Err(Error::Invalid("lengths, depths and seeds must each give at least one value".into()));
        }
        if let Some(d) = self.depths.iter().find(|d| !(0.0..=1.0).contains(*d)) {
            return Err(Error::Invalid(format!("depths: {d} is outside 0..=1")));
        }
        if self.answer_tokens == 0 {
            return Err(Error::Invalid("answer_tokens must be at least 1".into()));
        }
        Ok(())
    }

    /// Trials the grid runs for `policies` policies.
    pub fn trials(&self, policies: usize) -> usize {
        self.lengths.len() * self.depths.len() * self.seeds as usize * policies
    }
}

/// Runs every trial of `grid` for every policy (each prompt under every policy in turn),
/// after one unmeasured warm-up step; `progress` receives one line per trial.
pub fn run_grid<B: Backend>(
    backend: &B,
    tokenizer: &Tokenizer,
    prompter: &PasskeyPrompter,
    policies: &[Policy],
    grid: &PasskeyGrid,
    progress: &mut dyn FnMut(&str),
) -> Result<Vec<PasskeyTrial>> {
    grid.validate()?;
    let total = grid.trials(policies.len());
    let started = std::time::Instant::now();
    let mut warm = Session::new(backend, Policy::none())?;
    warm.prefill(&[0], sieve_engine::Logits::Last)?;
    drop(warm);
    let mut trials = Vec::with_capacity(total);
    for &length in &grid.lengths {
        for &depth in &grid.depths {
            for seed in 0..grid.seeds {
                let prompt = prompter.build(length, depth, seed)?;
                for policy in policies {
                    let t = run_trial(backend, tokenizer, policy, &prompt, grid.answer_tokens).map_err(|e| {
                        Error::Invalid(format!(
                            "policy `{}`, length {length}, depth {depth}, seed {seed}: {e}",
                            policy.name
                        ))
                    })?;
                    progress(&format!(
                        "{}/{total} | {} | length {length} | depth {depth} | key {} | {} | {:?} ({:.0} s)",
                        trials.len() + 1,
                        t.policy,
                        t.passkey,
                        if t.found { "found" } else { "missed" },
                        t.answer,
                        started.elapsed().as_secs_f64()
                    ));
                    trials.push(t);
                }
            }
        }
    }
    Ok(trials)
}

fn pct(a: &Accuracy) -> String {
    format!("{:.0}% ({}/{})", 100.0 * a.rate(), a.found, a.trials)
}

/// A markdown table of accuracy per policy and axis value, the baseline's beside each.
pub fn markdown(rows: &[Accuracy], baseline: &str, axis: &str, fmt: impl Fn(f64) -> String) -> String {
    let mut out = format!("| policy | {axis} | accuracy | unpruned accuracy |\n|---|---:|---:|---:|\n");
    for a in rows {
        let base = rows.iter().find(|b| b.policy == baseline && b.value == a.value);
        out.push_str(&format!(
            "| {} | {} | {} | {} |\n",
            a.policy,
            fmt(a.value),
            pct(a),
            base.map_or_else(|| "-".into(), pct)
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_have_five_digits_and_depend_on_the_cell() {
        let a = passkey_for(0, 512, 0.5);
        assert_eq!(a, passkey_for(0, 512, 0.5));
        assert_ne!(a, passkey_for(1, 512, 0.5));
        for seed in 0..200 {
            let k = passkey_for(seed, 1024, 0.1);
            assert!((10_000..100_000).contains(&k), "{k}");
        }
    }

    #[test]
    fn snap_moves_to_the_nearest_sentence_start() {
        let ok = [true, false, false, true, false, false, false, false, true];
        assert_eq!(snap(&ok, 2, 4), 3);
        assert_eq!(snap(&ok, 5, 4), 3);
        assert_eq!(snap(&ok, 6, 4), 8);
        assert_eq!(snap(&ok, 6, 1), 6);
        assert_eq!(snap(&ok, 100, 4), 8);
    }

    fn trial(policy: &str, length: usize, depth: f64, found: bool) -> PasskeyTrial {
        PasskeyTrial {
            policy: policy.into(),
            length,
            depth,
            actual_depth: depth,
            seed: 0,
            passkey: "12345".into(),
            prompt_tokens: length,
            needle_at: 0,
            answer: String::new(),
            found,
            ttft_ms: 0.0,
            kv_bytes: 0,
            kv_bytes_unpruned: 0,
        }
    }

    #[test]
    fn accuracy_groups_by_policy_and_axis() {
        let trials = [
            trial("none", 512, 0.1, true),
            trial("none", 512, 0.9, true),
            trial("none", 1024, 0.1, false),
            trial("snapkv", 512, 0.1, false),
            trial("snapkv", 512, 0.9, true),
        ];
        let by_len = accuracy_by(&trials, |t| t.length as f64);
        assert_eq!(by_len.len(), 3);
        assert_eq!((by_len[0].found, by_len[0].trials), (2, 2));
        assert_eq!(by_len[2].policy, "snapkv");
        assert_eq!(by_len[2].rate(), 0.5);
        let by_depth = accuracy_by(&trials, |t| t.depth);
        assert_eq!(by_depth.iter().map(|a| a.trials).sum::<usize>(), 5);
        assert_eq!(by_depth[0].value, 0.1);
        assert_eq!((by_depth[0].found, by_depth[0].trials), (1, 2));
    }

    #[test]
    fn prompts_have_the_exact_length_and_hold_the_needle() {
        let path = sieve_fetch::model::cached().expect("the default model (cargo xtask fetch-model)");
        let model = Model::load(&path).unwrap();
        let p = PasskeyPrompter::new(&model, DEFAULT_FILLER, 1024).unwrap();
        let min = p.min_length().unwrap();
        assert!(min > 40 && min < 200, "{min}");
        for (length, depth) in [(256, 0.0), (256, 0.5), (1024, 0.9), (1024, 1.0)] {
            let prompt = p.build(length, depth, 3).unwrap();
            assert_eq!(prompt.ids.len(), length);
            let text = model.tokenizer.decode(&prompt.ids).unwrap();
            assert!(text.contains(&needle_text(prompt.passkey.parse().unwrap())), "{text}");
            // (decode leaves the special tokens out)
            assert!(text.ends_with("What is the pass key?\nassistant\n"), "{text}");
            let depth_seen = prompt.filler_before as f64 / prompt.filler_tokens as f64;
            assert!((depth_seen - depth).abs() < 0.06, "{depth} -> {depth_seen}");
            let before = model.tokenizer.decode(&prompt.ids[..prompt.needle_at]).unwrap();
            assert!(before.ends_with('.') || before.ends_with("\n\n"), "{before}");
        }
        assert!(p.build(min - 1, 0.5, 0).is_err());
        assert!(p.build(256, 1.5, 0).is_err());
        assert!(p.build(4096, 0.5, 0).is_err());
        // A short filler text is repeated to fill the prompt.
        let short = PasskeyPrompter::new(&model, "One sentence only.", 512).unwrap();
        assert_eq!(short.build(512, 0.5, 1).unwrap().ids.len(), 512);
    }
}
