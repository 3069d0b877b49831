//! `sieve passkey`: passkey retrieval over a grid of lengths, depths and seeds, for each
//! policy beside the unpruned model.

use std::time::Instant;

use anyhow::{Context, Result, bail};
use serde_json::json;
use sieve_core::Policy;
use sieve_eval::passkey::{self, PasskeyGrid, PasskeyPrompter, PasskeyTrial};

use crate::args::PasskeyArgs;

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

fn grid(args: &PasskeyArgs) -> Result<PasskeyGrid> {
    let grid = PasskeyGrid {
        lengths: args.lengths.clone(),
        depths: args.depths.clone(),
        seeds: args.seeds,
        answer_tokens: args.answer_tokens,
    };
    grid.validate().context("invalid passkey grid (--lengths, --depths, --seeds, --answer-tokens)")?;
    Ok(grid)
}

/// Accuracy over all trials of each policy.
fn overall(trials: &[PasskeyTrial]) -> Vec<passkey::Accuracy> {
    passkey::accuracy_by(trials, |_| 0.0)
}

pub fn run(args: PasskeyArgs) -> Result<()> {
    let grid = grid(&args)?;
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
    let runtime = super::load_runtime(&args.runtime, &mut model)?;
    let started = Instant::now();
    let trials = passkey::run_grid(&runtime, &model.tokenizer, &prompter, &policies, &grid, &mut |line| {
        eprintln!("[passkey {line}]")
    })?;
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
    println!("{}", passkey::markdown(&by_length, &baseline, "length", |v| format!("{v:.0}")));
    println!("Accuracy by depth of the key:\n");
    println!("{}", passkey::markdown(&by_depth, &baseline, "depth", |v| format!("{v}")));
    println!("Overall:\n");
    println!("{}", passkey::markdown(&overall(&trials), &baseline, "all", |_| "all".into()));
    Ok(())
}
