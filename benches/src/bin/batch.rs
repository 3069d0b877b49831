//! Aggregate decode throughput of sequences stepped together ([`Session::step_batch`]):
//! each of `n` sessions holds its own WikiText-2 context (its own cache, its own policy),
//! and every step decodes one token for all of them. Prints tokens per second for each
//! batch size and the ratio to one sequence, measured in the same run.
//!
//! Each sequence's context is prefilled once; every round then forks the prefilled
//! sessions and times `--steps` steps of each batch size in turn, so that the sizes see the
//! same minutes of a noisy machine. The table gives each size's median over the rounds,
//! and the ratio of medians.
//!
//! `cargo run --release -p sieve-benches --bin batch -- --sizes 1,2,4,8 --context 512`

use std::time::Instant;

use anyhow::Result;
use clap::Parser;
use sieve_backend::DeviceSpec;
use sieve_engine::sampling::argmax;
use sieve_engine::weights::Dtype;
use sieve_engine::{Logits, Model, Policy, Session};
use sieve_runtime::{BackendKind, Runtime};

#[derive(Parser)]
struct Args {
    /// Batch sizes to measure.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8")]
    sizes: Vec<usize>,
    /// Context tokens each sequence holds before decoding.
    #[arg(long, default_value_t = 512)]
    context: usize,
    /// Decode steps timed per batch size and round.
    #[arg(long, default_value_t = 32)]
    steps: usize,
    /// Rounds over all the batch sizes (the table reports each size's median).
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Weights: native, f32, f16, bf16.
    #[arg(long, default_value = "native")]
    dtype: String,
    /// Policy of every sequence (a preset name, a path, `NAME@K`, or `none`).
    #[arg(long, default_value = "none")]
    policy: String,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let dtype: Dtype = args.dtype.parse()?;
    let mut model = Model::load_with(&sieve_benches::default_model()?, dtype)?;
    let tokens = sieve_benches::prompt_tokens(
        &model.tokenizer,
        &sieve_benches::wikitext_path(),
        args.context + *args.sizes.iter().max().unwrap_or(&1),
    )?;
    let policy: Policy = sieve_core::preset::resolve(&args.policy, &sieve_benches::workspace_dir().join("configs"))?;
    let weights = model.take_weights();
    let runtime = Runtime::load(BackendKind::Candle, DeviceSpec::Cpu, &model.config, weights)?;
    anyhow::ensure!(args.rounds > 0 && args.steps > 0, "--rounds and --steps must be at least 1");
    anyhow::ensure!(!args.sizes.contains(&0), "a batch size must be at least 1");
    // Each sequence its own context (the passage shifted by `i` tokens), prefilled once.
    let most = *args.sizes.iter().max().unwrap_or(&1);
    let mut prefilled = Vec::with_capacity(most);
    for i in 0..most {
        let mut s = Session::new(&runtime, policy.clone())?;
        let first = argmax(s.prefill(&tokens[i..i + args.context], Logits::Last)?.last());
        prefilled.push((s, first));
    }
    let mut rates = vec![Vec::with_capacity(args.rounds); args.sizes.len()];
    for round in 0..args.rounds {
        for (k, &n) in args.sizes.iter().enumerate() {
            let mut sessions =
                prefilled[..n].iter().map(|(s, _)| s.fork()).collect::<sieve_engine::Result<Vec<_>>>()?;
            let mut next: Vec<u32> = prefilled[..n].iter().map(|&(_, t)| t).collect();
            let mut refs: Vec<&mut Session<'_, Runtime>> = sessions.iter_mut().collect();
            // One untimed step, then the timed ones.
            next = Session::step_batch(&mut refs, &next)?.iter().map(|l| argmax(l)).collect();
            let started = Instant::now();
            for _ in 0..args.steps {
                next = Session::step_batch(&mut refs, &next)?.iter().map(|l| argmax(l)).collect();
            }
            let rate = (n * args.steps) as f64 / started.elapsed().as_secs_f64();
            eprintln!("round {}: {n} sequences {rate:.1} tokens/s", round + 1);
            rates[k].push(rate);
        }
    }
    let medians: Vec<f64> = rates.iter_mut().map(|r| median(r)).collect();
    println!("| sequences | tokens/s (all sequences, median of {}) | vs one sequence |", args.rounds);
    println!("|---:|---:|---:|");
    for (&n, &rate) in args.sizes.iter().zip(&medians) {
        println!("| {n} | {rate:.1} | {:.2}x |", rate / medians[0]);
    }
    Ok(())
}

/// The median of `v` (the mean of the middle two for an even count).
fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 1 { v[m] } else { (v[m - 1] + v[m]) / 2.0 }
}
