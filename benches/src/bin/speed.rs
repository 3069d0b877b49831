//! End-to-end speed of sieve-candle (CPU, unpruned) against candle-transformers'
//! `quantized_llama` on the same weights in f32: prefill and greedy decoding of a
//! WikiText-2 prompt, measured in one process.
//!
//! `cargo run --release -p sieve-benches --bin speed -- --prompt-tokens 512 --decode-tokens 64 --repeats 3`

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use candle_core::{Device, Tensor};
use candle_transformers::models::quantized_llama::{MAX_SEQ_LEN, ModelWeights};
use clap::Parser;
use serde_json::json;
use sieve_benches::{PEAK_GEMM_GFLOPS, default_model, median, mib, prompt_tokens, reference_f32, wikitext_path};
use sieve_candle::{CandleBackend, CandleDevice};
use sieve_engine::sampling::argmax;
use sieve_engine::stats::peak_rss_bytes;
use sieve_engine::{Logits, Model, Policy, Session};

/// Prefill and decode speed of sieve-candle against candle-transformers' quantized_llama.
#[derive(Debug, Parser)]
#[command(name = "speed")]
struct Args {
    /// Prompt length in tokens.
    #[arg(long, default_value_t = 512)]
    prompt_tokens: usize,
    /// Tokens to decode greedily after the prompt.
    #[arg(long, default_value_t = 64)]
    decode_tokens: usize,
    /// Measured repeats (after one warm-up run); medians are reported.
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Prompt text file (default: `$SIEVE_DATA/wikitext-2/wiki.test.raw`).
    #[arg(long)]
    text: Option<PathBuf>,
    /// Also write the numbers as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// One measured run: prefill and decode wall times and the greedy tokens.
struct Run {
    prefill_s: f64,
    decode_s: f64,
    tokens: Vec<u32>,
}

/// Medians over the measured runs of one implementation.
struct Summary {
    prefill_ms: f64,
    prefill_tok_s: f64,
    decode_tok_s: f64,
    prefill_ms_runs: Vec<f64>,
    decode_tok_s_runs: Vec<f64>,
}

impl Summary {
    fn new(runs: &[Run], prompt: usize, decode: usize) -> Self {
        let prefill_ms_runs: Vec<f64> = runs.iter().map(|r| r.prefill_s * 1e3).collect();
        let decode_tok_s_runs: Vec<f64> = runs
            .iter()
            .map(|r| if decode > 0 && r.decode_s > 0.0 { decode as f64 / r.decode_s } else { 0.0 })
            .collect();
        let prefill_ms = median(&prefill_ms_runs);
        Self {
            prefill_ms,
            prefill_tok_s: prompt as f64 / (prefill_ms / 1e3),
            decode_tok_s: median(&decode_tok_s_runs),
            prefill_ms_runs,
            decode_tok_s_runs,
        }
    }

    fn to_json(&self) -> serde_json::Value {
        json!({
            "prefill_ms": self.prefill_ms,
            "prefill_tok_s": self.prefill_tok_s,
            "decode_tok_s": self.decode_tok_s,
            "prefill_ms_runs": self.prefill_ms_runs,
            "decode_tok_s_runs": self.decode_tok_s_runs,
        })
    }
}

/// The sieve side of one run; also returns the estimated prefill FLOPs and the KV bytes.
fn sieve_run(backend: &CandleBackend, prompt: &[u32], decode: usize) -> Result<(Run, f64, usize)> {
    let mut session = Session::new(backend, Policy::none()).context("creating the sieve session")?;
    let started = Instant::now();
    let out = session.prefill(prompt, Logits::Last).context("sieve prefill")?;
    let prefill_s = started.elapsed().as_secs_f64();
    let mut next = argmax(out.last());
    let mut tokens = vec![next];
    let started = Instant::now();
    for _ in 0..decode {
        let logits = session.step(next).context("sieve decode step")?;
        next = argmax(&logits);
        tokens.push(next);
    }
    let decode_s = started.elapsed().as_secs_f64();
    Ok((Run { prefill_s, decode_s, tokens }, session.stats.prefill_flops, session.kv_bytes()))
}

/// Last-token logits of a reference forward, on the host.
fn reference_forward(model: &mut ModelWeights, tokens: &[u32], index_pos: usize) -> Result<Vec<f32>> {
    let x = Tensor::new(tokens, &Device::Cpu)?.unsqueeze(0)?;
    Ok(model.forward(&x, index_pos)?.squeeze(0)?.to_vec1::<f32>()?)
}

/// The reference side of one run, on a fresh copy of `pristine` (so no KV cache or mask
/// carries over from an earlier run; the copy shares the weights and is not timed).
fn reference_run(pristine: &ModelWeights, prompt: &[u32], decode: usize) -> Result<Run> {
    let mut model = pristine.clone();
    model.clear_kv_cache();
    let started = Instant::now();
    let logits = reference_forward(&mut model, prompt, 0).context("reference prefill")?;
    let prefill_s = started.elapsed().as_secs_f64();
    let mut next = argmax(&logits);
    let mut tokens = vec![next];
    let started = Instant::now();
    for i in 0..decode {
        let logits = reference_forward(&mut model, &[next], prompt.len() + i).context("reference decode step")?;
        next = argmax(&logits);
        tokens.push(next);
    }
    let decode_s = started.elapsed().as_secs_f64();
    Ok(Run { prefill_s, decode_s, tokens })
}

fn ratio(ours: f64, theirs: f64) -> String {
    if theirs > 0.0 && ours.is_finite() { format!("{:.2}x", ours / theirs) } else { "-".into() }
}

fn run(args: &Args) -> Result<()> {
    if args.repeats == 0 {
        bail!("--repeats must be at least 1");
    }
    let (n, d) = (args.prompt_tokens, args.decode_tokens);
    let model_path = default_model()?;
    let mut model = Model::load(&model_path).with_context(|| format!("loading {}", model_path.display()))?;
    let context = model.config.context.min(MAX_SEQ_LEN);
    if n + d > context {
        bail!("{n} prompt + {d} decode tokens exceed the context of {context} tokens");
    }
    let text_path = args.text.clone().unwrap_or_else(wikitext_path);
    let prompt = prompt_tokens(&model.tokenizer, &text_path, n)?;
    let weight_bytes = model.weights.bytes();
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    eprintln!("model {} ({} layers, hidden {})", model_path.display(), model.config.n_layers, model.config.hidden);
    eprintln!(
        "prompt: {n} tokens from {}; decode: {d} tokens; {} repeats; {threads} threads",
        text_path.display(),
        args.repeats
    );

    // sieve-candle owns the weights (no second copy).
    let weights = model.take_weights();
    let backend = CandleBackend::from_weights(&model.config, weights, CandleDevice::Cpu)
        .context("building the candle backend")?;
    eprintln!("sieve-candle: warm-up");
    sieve_run(&backend, &prompt, d)?;
    let (mut sieve_runs, mut flops, mut kv_bytes) = (Vec::new(), 0.0, 0);
    for r in 0..args.repeats {
        let (run, f, kv) = sieve_run(&backend, &prompt, d)?;
        eprintln!(
            "sieve-candle run {}: prefill {:.1} ms, decode {:.1} ms",
            r + 1,
            run.prefill_s * 1e3,
            run.decode_s * 1e3
        );
        (flops, kv_bytes) = (f, kv);
        sieve_runs.push(run);
    }
    let peak_rss_sieve = peak_rss_bytes();

    eprintln!("reference: building quantized_llama with f32 weights");
    let pristine = reference_f32(&model_path)?;
    eprintln!("reference: warm-up");
    reference_run(&pristine, &prompt, d)?;
    let mut ref_runs = Vec::new();
    for r in 0..args.repeats {
        let run = reference_run(&pristine, &prompt, d)?;
        eprintln!(
            "reference run {}: prefill {:.1} ms, decode {:.1} ms",
            r + 1,
            run.prefill_s * 1e3,
            run.decode_s * 1e3
        );
        ref_runs.push(run);
    }
    let peak_rss = peak_rss_bytes();

    let ours = Summary::new(&sieve_runs, n, d);
    let theirs = Summary::new(&ref_runs, n, d);
    let gflops = flops / (ours.prefill_ms / 1e3) / 1e9;
    let peak_fraction = gflops / PEAK_GEMM_GFLOPS;
    let (a, b) = (&sieve_runs[sieve_runs.len() - 1].tokens, &ref_runs[ref_runs.len() - 1].tokens);
    let agree = a.iter().zip(b).take_while(|(x, y)| x == y).count();

    println!("\n### sieve-candle vs candle-transformers quantized_llama (f32), CPU\n");
    println!("prompt {n} tokens, decode {d} tokens, median of {} runs, {threads} threads\n", args.repeats);
    println!("| metric | sieve-candle | reference | sieve / reference |");
    println!("|---|---:|---:|---:|");
    let speed = ratio(theirs.prefill_ms, ours.prefill_ms);
    println!("| prefill time (ms) | {:.1} | {:.1} | {speed} |", ours.prefill_ms, theirs.prefill_ms);
    let speed = ratio(ours.prefill_tok_s, theirs.prefill_tok_s);
    println!("| prefill tok/s | {:.1} | {:.1} | {speed} |", ours.prefill_tok_s, theirs.prefill_tok_s);
    println!(
        "| prefill GFLOP/s (% of {PEAK_GEMM_GFLOPS:.0} peak) | {gflops:.1} ({:.1}%) | - | - |",
        peak_fraction * 100.0
    );
    let speed = ratio(ours.decode_tok_s, theirs.decode_tok_s);
    println!("| decode tok/s | {:.1} | {:.1} | {speed} |", ours.decode_tok_s, theirs.decode_tok_s);
    println!();
    println!("prefill FLOPs (engine estimate): {:.2} GFLOP", flops / 1e9);
    println!("greedy tokens agreeing from the start: {agree}/{}", a.len().min(b.len()));
    println!(
        "weights: {:.1} MiB (f32); KV cache after the run: {:.2} MiB",
        mib(weight_bytes as f64),
        mib(kv_bytes as f64)
    );
    println!(
        "peak RSS: {:.1} MiB after the sieve runs, {:.1} MiB at the end (with the reference)",
        mib(peak_rss_sieve as f64),
        mib(peak_rss as f64)
    );

    if let Some(path) = &args.json {
        let mut sieve_json = ours.to_json();
        sieve_json["prefill_flops"] = json!(flops);
        sieve_json["prefill_gflops"] = json!(gflops);
        sieve_json["prefill_peak_fraction"] = json!(peak_fraction);
        let value = json!({
            "model": model_path.display().to_string(),
            "text": text_path.display().to_string(),
            "prompt_tokens": n,
            "decode_tokens": d,
            "repeats": args.repeats,
            "threads": threads,
            "peak_gemm_gflops": PEAK_GEMM_GFLOPS,
            "sieve": sieve_json,
            "reference": theirs.to_json(),
            "sieve_over_reference": {
                "prefill": theirs.prefill_ms / ours.prefill_ms,
                "decode": if theirs.decode_tok_s > 0.0 { ours.decode_tok_s / theirs.decode_tok_s } else { 0.0 },
            },
            "greedy_tokens_agreeing": agree,
            "weight_bytes": weight_bytes,
            "kv_bytes": kv_bytes,
            "peak_rss_bytes_sieve": peak_rss_sieve,
            "peak_rss_bytes": peak_rss,
        });
        let text = serde_json::to_string_pretty(&value).context("serializing the results")?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
