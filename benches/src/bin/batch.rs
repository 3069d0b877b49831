//! Aggregate decode throughput of sequences stepped together ([`Session::step_batch`]):
//! each of `n` sessions holds its own WikiText-2 context (its own cache, its own policy),
//! and every step decodes one token for all of them. Prints tokens per second for each
//! batch size and the ratio to one sequence, measured in the same run.
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
    /// Decode steps timed per batch size.
    #[arg(long, default_value_t = 32)]
    steps: usize,
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
    println!("| sequences | tokens/s (all sequences) | vs one sequence |");
    println!("|---:|---:|---:|");
    let mut single = None;
    for &n in &args.sizes {
        let mut sessions = Vec::new();
        let mut next = Vec::new();
        for i in 0..n {
            // Each sequence its own context: the passage shifted by `i` tokens.
            let mut s = Session::new(&runtime, policy.clone())?;
            next.push(argmax(s.prefill(&tokens[i..i + args.context], Logits::Last)?.last()));
            sessions.push(s);
        }
        let mut refs: Vec<&mut Session<'_, Runtime>> = sessions.iter_mut().collect();
        // One untimed step, then the timed ones.
        next = Session::step_batch(&mut refs, &next)?.iter().map(|l| argmax(l)).collect();
        let started = Instant::now();
        for _ in 0..args.steps {
            next = Session::step_batch(&mut refs, &next)?.iter().map(|l| argmax(l)).collect();
        }
        let rate = (n * args.steps) as f64 / started.elapsed().as_secs_f64();
        let base = *single.get_or_insert(rate);
        println!("| {n} | {rate:.1} | {:.2}x |", rate / base);
    }
    Ok(())
}
