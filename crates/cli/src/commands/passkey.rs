//! `sieve passkey`: passkey retrieval over a grid of lengths, depths and seeds, for each
//! policy beside the unpruned model.

use std::time::Instant;

use anyhow::{Context, Result, bail};
use serde_json::json;
use sieve_engine::passkey::{self, Accuracy, PasskeyPrompter, PasskeyTrial};
use sieve_engine::{Policy, Session};

use crate::args::PasskeyArgs;
use crate::{backends, with_backend};

/// The policies of the grid, the unpruned baseline first (added when not named).
fn policies(args: &PasskeyArgs) -> Result<Vec<Policy>> {
    let mut list: Vec<Policy> = Vec::new();
    for spec in &args.policies {
        let p = super::resolve_policy(spec)?;
        if list.iter().any(|q| q.name == p.name) {
            bail!("policy `{}` is named twice", p.name);
        }
        list.push(p);
    }
    match list.iter().position(Policy::is_none) {
        Some(i) => {
            let base = list.remove(i);
            list.insert(0, base);
        }
        None => list.insert(0, Policy::none()),
    }
    Ok(list)
}

fn check_grid(args: &PasskeyArgs) -> Result<()> {
    if args.lengths.is_empty() || args.depths.is_empty() || args.seeds == 0 {
        bail!("--lengths, --depths and --seeds must each give at least one value");
    }
    if let Some(d) = args.depths.iter().find(|d| !(0.0..=1.0).contains(*d)) {
        bail!("--depths: {d} is outside 0..=1");
    }
    if args.answer_tokens == 0 {
        bail!("--answer-tokens must be at least 1");
    }
    Ok(())
}

fn pct(a: &Accuracy) -> String {
    format!("{:.0}% ({}/{})", 100.0 * a.rate(), a.found, a.trials)
}

/// A markdown table of accuracy per policy and axis value, the baseline's beside each.
fn table(rows: &[Accuracy], baseline: &str, axis: &str, fmt: impl Fn(f64) -> String) -> String {
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

/// Accuracy over all trials of each policy.
fn overall(trials: &[PasskeyTrial]) -> Vec<Accuracy> {
    passkey::accuracy_by(trials, |_| 0.0)
}

pub fn run(args: PasskeyArgs) -> Result<()> {
    check_grid(&args)?;
    let policies = policies(&args)?;
    let filler = match &args.filler_file {
        Some(path) => super::read_text(path)?,
        None => passkey::DEFAULT_FILLER.to_string(),
    };
    let mut model = super::load_model(&args.runtime.model)?;
    let context = model.config.context;
    for p in &policies {
        p.check_model(model.config.n_layers).with_context(|| format!("policy `{}` does not fit the model", p.name))?;
    }
    let max_len = args.lengths.iter().copied().max().unwrap_or(0);
    if max_len + args.answer_tokens > context {
        bail!(
            "--lengths {max_len} plus {} answer tokens exceed the model's context of {context} tokens",
            args.answer_tokens
        );
    }
    let prompter = PasskeyPrompter::new(&model, &filler, max_len).context("preparing the passkey prompts")?;
    let min = prompter.min_length()?;
    if let Some(l) = args.lengths.iter().find(|&&l| l < min) {
        bail!("--lengths {l} is too short: the prompt without filler takes {min} tokens");
    }
    let loaded = backends::load(&args.runtime, &mut model)?;
    let total = args.lengths.len() * args.depths.len() * args.seeds as usize * policies.len();
    let started = Instant::now();
    let mut trials = Vec::with_capacity(total);
    with_backend!(&loaded, b => {
        // One unmeasured step so that the first trial's time is not a cold start.
        let mut warm = Session::new(b, Policy::none())?;
        warm.prefill(&[0], sieve_engine::Logits::Last)?;
        drop(warm);
        for &length in &args.lengths {
            for &depth in &args.depths {
                for seed in 0..args.seeds {
                    let prompt = prompter
                        .build(length, depth, seed)
                        .with_context(|| format!("building the prompt of length {length}, depth {depth}"))?;
                    for policy in &policies {
                        let t = passkey::run_trial(b, &model.tokenizer, policy, &prompt, args.answer_tokens)
                            .with_context(|| format!("policy `{}`, length {length}, depth {depth}, seed {seed}", policy.name))?;
                        eprintln!(
                            "[{}/{total}] {} | length {length} | depth {depth} | key {} | {} | {:?} ({:.0} s)",
                            trials.len() + 1,
                            t.policy,
                            t.passkey,
                            if t.found { "found" } else { "missed" },
                            t.answer,
                            started.elapsed().as_secs_f64()
                        );
                        trials.push(t);
                    }
                }
            }
        }
    });
    let baseline = policies.first().map_or_else(|| "none".to_string(), |p| p.name.clone());
    let by_length = passkey::accuracy_by(&trials, |t| t.length as f64);
    let by_depth = passkey::accuracy_by(&trials, |t| t.depth);
    if args.json {
        let value = json!({
            "lengths": args.lengths,
            "depths": args.depths,
            "seeds": args.seeds,
            "filler": args.filler_file.as_ref().map_or_else(|| "default".into(), |p| p.display().to_string()),
            "answer_tokens": args.answer_tokens,
            "baseline": baseline,
            "overall": overall(&trials),
            "by_length": by_length,
            "by_depth": by_depth,
            "trials": trials,
        });
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    println!(
        "passkey retrieval: {} trials ({} lengths x {} depths x {} seeds x {} policies), filler {}, {:.0} s\n",
        trials.len(),
        args.lengths.len(),
        args.depths.len(),
        args.seeds,
        policies.len(),
        args.filler_file.as_ref().map_or_else(|| "default (repeated sentences)".into(), |p| p.display().to_string()),
        started.elapsed().as_secs_f64()
    );
    println!("Accuracy by prompt length (tokens):\n");
    println!("{}", table(&by_length, &baseline, "length", |v| format!("{v:.0}")));
    println!("Accuracy by depth of the key:\n");
    println!("{}", table(&by_depth, &baseline, "depth", |v| format!("{v}")));
    println!("Overall:\n");
    println!("{}", table(&overall(&trials), &baseline, "all", |_| "all".into()));
    Ok(())
}
