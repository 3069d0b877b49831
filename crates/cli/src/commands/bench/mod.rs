//! `sieve bench`: a grid of policies and kept fractions at several context lengths, each
//! point beside the unpruned model measured in the same process. Per point: time to first
//! token and decode speed of a greedy generation (the run `sieve generate` makes), KV bytes,
//! and the compressed-context perplexity of the text's continuation. Writes `results.json`,
//! `results.md`, `quality.svg` and `speedup.svg` to `--out`.

mod plot;
mod table;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use serde::Serialize;
use sieve_engine::stats::{RunStats, peak_rss_bytes};
use sieve_engine::tokenizer::Tokenizer;
use sieve_engine::{Backend, GenerateOptions, Policy, Session, eval};

use crate::args::BenchArgs;
use crate::{backends, with_backend};

/// One measured point of the grid.
#[derive(Debug, Clone, Serialize)]
pub struct Point {
    /// Context length asked for.
    pub length: usize,
    /// Policy name (`none` for the baseline).
    pub policy: String,
    /// Kept fraction applied (1 for the baseline).
    pub keep: f64,
    /// Prompt tokens of the timed generation.
    pub prompt_tokens: usize,
    /// Tokens it generated.
    pub generated_tokens: usize,
    /// Median time to first token, milliseconds.
    pub ttft_ms: f64,
    /// Every timed run's time to first token.
    pub ttft_ms_runs: Vec<f64>,
    /// Median decode speed, tokens per second.
    pub decode_tok_s: f64,
    /// KV bytes at the end of the generation (what `sieve generate` reports).
    pub kv_bytes: usize,
    /// KV bytes the same generation holds unpruned.
    pub kv_bytes_unpruned: usize,
    /// KV bytes right after the prefill of the context (perplexity run).
    pub kv_bytes_prefill: usize,
    /// Fraction of token-layers the prefill computed.
    pub computed: f64,
    /// Fraction of prefill FLOPs saved.
    pub flops_saved: f64,
    /// Compressed-context perplexity of the continuation.
    pub perplexity: f64,
    /// Baseline TTFT over this TTFT.
    pub ttft_speedup: f64,
    /// Decode speed over the baseline's.
    pub decode_speedup: f64,
    /// KV bytes (end of generation) over the baseline's.
    pub kv_ratio: f64,
    /// KV bytes after prefill over the baseline's.
    pub kv_prefill_ratio: f64,
    /// Perplexity over the baseline's.
    pub perplexity_ratio: f64,
}

/// The whole run, as written to `results.json`.
#[derive(Debug, Clone, Serialize)]
pub struct Results {
    pub command: String,
    pub model: String,
    pub backend: String,
    pub text: String,
    pub continuation: usize,
    pub decode_tokens: usize,
    pub repeats: usize,
    /// Peak resident memory of the whole process at the end (not per point).
    pub peak_rss_bytes: u64,
    pub elapsed_s: f64,
    pub points: Vec<Point>,
}

/// WikiText-2's test split, where the project's data lives.
fn default_text() -> PathBuf {
    sieve_engine::fetch::wikitext_test_split(std::path::Path::new("../shared/data"))
}

/// The first `n` tokens of `text`, an error when it has fewer.
fn first_tokens(tokenizer: &Tokenizer, text: &str, n: usize, path: &Path) -> Result<Vec<u32>> {
    let ids = tokenizer.encode_prefix(text, n).context("tokenizing the text")?;
    if ids.len() < n {
        bail!("{} holds only {} tokens, fewer than the {n} needed", path.display(), ids.len());
    }
    Ok(ids)
}

/// What one point measures before the baseline is known.
struct Raw {
    stats: RunStats,
    ttft_ms_runs: Vec<f64>,
    decode_runs: Vec<f64>,
    kv_prefill: usize,
    perplexity: f64,
}

fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// `a / b`, or NaN without a usable `b` (serialized as null).
fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 && b.is_finite() { a / b } else { f64::NAN }
}

/// The statistics of a greedy generation of up to `max_tokens` after `prompt`, the run
/// `sieve generate -n max_tokens` makes.
fn generation<B: Backend>(
    backend: &B,
    tokenizer: &Tokenizer,
    policy: &Policy,
    prompt: &[u32],
    max_tokens: usize,
) -> Result<RunStats> {
    let options = GenerateOptions { max_tokens, ..GenerateOptions::default() };
    let mut session = Session::new(backend, policy.clone())?;
    Ok(sieve_engine::generate(&mut session, tokenizer, prompt, &options, &mut |_| {})?.stats)
}

fn measure<B: Backend>(
    backend: &B,
    tokenizer: &Tokenizer,
    policy: &Policy,
    tokens: &[u32],
    length: usize,
    args: &BenchArgs,
) -> Result<Raw> {
    let (mut ttft_ms_runs, mut decode_runs, mut last) = (Vec::new(), Vec::new(), None);
    for _ in 0..args.repeats {
        let stats = generation(backend, tokenizer, policy, &tokens[..length], args.decode_tokens)?;
        ttft_ms_runs.push(stats.ttft_ms);
        decode_runs.push(stats.decode_tok_s);
        last = Some(stats);
    }
    let stats = last.context("--repeats must be at least 1")?;
    let report = eval::compressed_perplexity(backend, policy, tokens, length, args.continuation, 1)
        .context("compressed-context perplexity")?;
    let kv_prefill = report.windows.first().map_or(0, |w| w.kv_bytes);
    Ok(Raw { stats, ttft_ms_runs, decode_runs, kv_prefill, perplexity: report.perplexity })
}

fn point(length: usize, name: &str, keep: f64, raw: Raw, base: Option<&Point>) -> Point {
    let s = &raw.stats;
    let layers = s.tokens_per_layer.len().max(1);
    let ttft_ms = median(&raw.ttft_ms_runs);
    let decode_tok_s = median(&raw.decode_runs);
    let mut p = Point {
        length,
        policy: name.into(),
        keep,
        prompt_tokens: s.prompt_tokens,
        generated_tokens: s.generated_tokens,
        ttft_ms,
        ttft_ms_runs: raw.ttft_ms_runs,
        decode_tok_s,
        kv_bytes: s.kv_bytes,
        kv_bytes_unpruned: s.kv_bytes_unpruned,
        kv_bytes_prefill: raw.kv_prefill,
        computed: s.tokens_per_layer.iter().sum::<usize>() as f64 / (s.prompt_tokens * layers).max(1) as f64,
        flops_saved: s.flops_saved,
        perplexity: raw.perplexity,
        ttft_speedup: 1.0,
        decode_speedup: 1.0,
        kv_ratio: 1.0,
        kv_prefill_ratio: 1.0,
        perplexity_ratio: 1.0,
    };
    if let Some(b) = base {
        p.ttft_speedup = ratio(b.ttft_ms, p.ttft_ms);
        p.decode_speedup = ratio(p.decode_tok_s, b.decode_tok_s);
        p.kv_ratio = ratio(p.kv_bytes as f64, b.kv_bytes as f64);
        p.kv_prefill_ratio = ratio(p.kv_bytes_prefill as f64, b.kv_bytes_prefill as f64);
        p.perplexity_ratio = ratio(p.perplexity, b.perplexity);
    }
    p
}

fn check(args: &BenchArgs) -> Result<()> {
    if args.lengths.is_empty() || args.keeps.is_empty() || args.policies.is_empty() {
        bail!("--lengths, --keeps and --policies must each give at least one value");
    }
    if let Some(k) = args.keeps.iter().find(|k| !(**k > 0.0 && **k <= 1.0)) {
        bail!("--keeps: {k} is outside (0, 1]");
    }
    if args.lengths.contains(&0) || args.continuation == 0 || args.decode_tokens == 0 || args.repeats == 0 {
        bail!("--lengths, --continuation, --decode-tokens and --repeats must be at least 1");
    }
    Ok(())
}

/// `mm:ss`.
fn clock(secs: f64) -> String {
    let s = secs.max(0.0).round() as u64;
    format!("{}:{:02}", s / 60, s % 60)
}

pub fn run(args: BenchArgs) -> Result<()> {
    check(&args)?;
    // Every (policy, keep) of the grid; `none` is the baseline, measured once per length.
    let mut grid: Vec<(String, f64, Policy)> = Vec::new();
    for spec in &args.policies {
        let base = super::resolve_policy(spec)?;
        if base.is_none() {
            continue;
        }
        for &keep in &args.keeps {
            let p =
                super::with_keep(&base, keep).with_context(|| format!("policy `{}` with keep {keep}", base.name))?;
            grid.push((base.name.clone(), keep, p));
        }
    }
    let text_path = args.file.clone().unwrap_or_else(default_text);
    let text_path = std::fs::canonicalize(&text_path).unwrap_or(text_path);
    let text = super::read_text(&text_path).context("reading the benchmark text (set SIEVE_DATA or pass --file)")?;
    let mut model = super::load_model(&args.runtime.model)?;
    for (_, _, p) in &grid {
        p.check_model(model.config.n_layers).with_context(|| format!("policy `{}` does not fit the model", p.name))?;
    }
    let longest = args.lengths.iter().copied().max().unwrap_or(0);
    let need = longest + args.continuation.max(args.decode_tokens);
    if need > model.config.context {
        bail!(
            "--lengths {longest} plus the continuation exceed the model's context of {} tokens",
            model.config.context
        );
    }
    let tokens = first_tokens(&model.tokenizer, &text, longest + args.continuation, &text_path)?;
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    let model_path = model.path.display().to_string();
    let loaded = backends::load(&args.runtime, &mut model)?;
    let total = args.lengths.len() * (1 + grid.len());
    let started = Instant::now();
    let mut points: Vec<Point> = Vec::new();
    let backend = with_backend!(&loaded, b => {
        eprintln!("[bench] warm-up: unpruned generation of {} tokens", args.lengths[0]);
        generation(b, &model.tokenizer, &Policy::none(), &tokens[..args.lengths[0]], args.decode_tokens)
            .context("warm-up")?;
        for &length in &args.lengths {
            let ctx = &tokens[..length + args.continuation];
            let mut base: Option<Point> = None;
            let runs = std::iter::once(("none".to_string(), 1.0, Policy::none())).chain(grid.iter().cloned());
            for (name, keep, policy) in runs {
                let raw = measure(b, &model.tokenizer, &policy, ctx, length, &args)
                    .with_context(|| format!("policy `{name}`, keep {keep:?}, length {length}"))?;
                let p = point(length, &name, keep, raw, base.as_ref());
                let done = points.len() + 1;
                let elapsed = started.elapsed().as_secs_f64();
                eprintln!(
                    "[bench {done}/{total}] length {length} | {name} keep {keep:?} | TTFT {:.0} ms ({:.2}x) | decode {:.1} tok/s | KV {:.2} MiB | ppl {:.2} | {} elapsed, ~{} left",
                    p.ttft_ms,
                    p.ttft_speedup,
                    p.decode_tok_s,
                    p.kv_bytes as f64 / 1048576.0,
                    p.perplexity,
                    clock(elapsed),
                    clock(elapsed / done as f64 * (total - done) as f64)
                );
                if base.is_none() {
                    base = Some(p.clone());
                }
                points.push(p);
            }
        }
        b.name().to_string()
    });
    let results = Results {
        command: std::env::args().collect::<Vec<_>>().join(" "),
        model: model_path,
        backend,
        text: text_path.display().to_string(),
        continuation: args.continuation,
        decode_tokens: args.decode_tokens,
        repeats: args.repeats,
        peak_rss_bytes: peak_rss_bytes(),
        elapsed_s: started.elapsed().as_secs_f64(),
        points,
    };
    write_outputs(&args.out, &results)
}

fn write_outputs(out: &Path, results: &Results) -> Result<()> {
    let write = |name: &str, text: String| -> Result<()> {
        let path = out.join(name);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("[bench] wrote {}", path.display());
        Ok(())
    };
    write("results.json", serde_json::to_string_pretty(results)? + "\n")?;
    let md = table::markdown(results);
    write("results.md", md.clone())?;
    write("quality.svg", plot::quality(&results.points)?)?;
    write("speedup.svg", plot::speedup(&results.points)?)?;
    println!("{md}");
    Ok(())
}
