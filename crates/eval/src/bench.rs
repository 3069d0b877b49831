//! The bench grid: policies × kept fractions at several context lengths, each point beside
//! the unpruned model measured in the same run. Per point: time to first token and decode
//! speed of a greedy generation (the run `sieve generate` makes), KV bytes, and the
//! compressed-context perplexity of the text's continuation. [`crate::table`] and
//! [`crate::plot`] turn the [`Results`] into markdown and SVG.

use std::path::Path;
use std::time::Instant;

use serde::Serialize;
use sieve_backend::Backend;
use sieve_engine::stats::RunStats;
use sieve_engine::tokenizer::Tokenizer;
use sieve_engine::{GenerateOptions, Policy, Session};

use crate::data::median;
use crate::error::{Context, Error, Result};
use crate::perplexity;

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
    /// Compressed-context perplexity of the continuation (the first window).
    pub perplexity: f64,
    /// The same over every window of the run's `ppl_windows` (the first included), their
    /// scored tokens pooled; NaN (null) with one window.
    pub perplexity_windows: f64,
    /// Median TTFT of the unpruned runs timed alternately with this point's (the
    /// baseline's own for `none`): the speedups compare with these, so a machine whose
    /// speed drifts during the grid moves both sides alike.
    pub baseline_ttft_ms: f64,
    /// Median decode speed of those unpruned runs.
    pub baseline_decode_tok_s: f64,
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
    /// Perplexity over every window over the baseline's.
    pub perplexity_windows_ratio: f64,
}

/// The whole run, as written to `results.json`.
#[derive(Debug, Clone, Serialize)]
pub struct Results {
    pub command: String,
    pub model: String,
    pub backend: String,
    pub text: String,
    pub continuation: usize,
    /// Consecutive windows (context plus continuation) scored for perplexity.
    pub ppl_windows: usize,
    pub decode_tokens: usize,
    pub repeats: usize,
    /// Peak resident memory of the whole process at the end (not per point).
    pub peak_rss_bytes: u64,
    pub elapsed_s: f64,
    pub points: Vec<Point>,
}

/// What one point measures before the baseline is known.
struct Raw {
    stats: RunStats,
    ttft_ms_runs: Vec<f64>,
    decode_runs: Vec<f64>,
    /// The unpruned runs timed alternately with these (none for the baseline itself).
    base_ttft_ms_runs: Vec<f64>,
    base_decode_runs: Vec<f64>,
    kv_prefill: usize,
    perplexity: f64,
    perplexity_windows: f64,
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
) -> sieve_engine::Result<RunStats> {
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
    options: &BenchOptions,
) -> Result<Raw> {
    let (mut ttft_ms_runs, mut decode_runs, mut last) = (Vec::new(), Vec::new(), None);
    let (mut base_ttft_ms_runs, mut base_decode_runs) = (Vec::new(), Vec::new());
    for _ in 0..options.repeats {
        if !policy.is_none() {
            let stats = generation(backend, tokenizer, &Policy::none(), &tokens[..length], options.decode_tokens)?;
            base_ttft_ms_runs.push(stats.ttft_ms);
            base_decode_runs.push(stats.decode_tok_s);
        }
        let stats = generation(backend, tokenizer, policy, &tokens[..length], options.decode_tokens)?;
        ttft_ms_runs.push(stats.ttft_ms);
        decode_runs.push(stats.decode_tok_s);
        last = Some(stats);
    }
    let stats = last.ok_or_else(|| Error::Invalid("repeats must be at least 1".into()))?;
    let windows = options.ppl_windows;
    let report = perplexity::compressed_perplexity(backend, policy, tokens, length, options.continuation, windows)?;
    let first = report.windows.first().ok_or_else(|| Error::Invalid("no perplexity window".into()))?;
    let (kv_prefill, perplexity) = (first.kv_bytes, (first.nll / first.scored.max(1) as f64).exp());
    let perplexity_windows = if windows > 1 { report.perplexity } else { f64::NAN };
    Ok(Raw {
        stats,
        ttft_ms_runs,
        decode_runs,
        base_ttft_ms_runs,
        base_decode_runs,
        kv_prefill,
        perplexity,
        perplexity_windows,
    })
}

fn point(length: usize, name: &str, keep: f64, raw: Raw, base: Option<&Point>) -> Point {
    let s = &raw.stats;
    let layers = s.tokens_per_layer.len().max(1);
    let ttft_ms = median(&raw.ttft_ms_runs);
    let decode_tok_s = median(&raw.decode_runs);
    let (baseline_ttft_ms, baseline_decode_tok_s) = if raw.base_ttft_ms_runs.is_empty() {
        (ttft_ms, decode_tok_s)
    } else {
        (median(&raw.base_ttft_ms_runs), median(&raw.base_decode_runs))
    };
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
        perplexity_windows: raw.perplexity_windows,
        baseline_ttft_ms,
        baseline_decode_tok_s,
        ttft_speedup: 1.0,
        decode_speedup: 1.0,
        kv_ratio: 1.0,
        kv_prefill_ratio: 1.0,
        perplexity_ratio: 1.0,
        perplexity_windows_ratio: if raw.perplexity_windows.is_finite() { 1.0 } else { f64::NAN },
    };
    if let Some(b) = base {
        p.ttft_speedup = ratio(p.baseline_ttft_ms, p.ttft_ms);
        p.decode_speedup = ratio(p.decode_tok_s, p.baseline_decode_tok_s);
        p.kv_ratio = ratio(p.kv_bytes as f64, b.kv_bytes as f64);
        p.kv_prefill_ratio = ratio(p.kv_bytes_prefill as f64, b.kv_bytes_prefill as f64);
        p.perplexity_ratio = ratio(p.perplexity, b.perplexity);
        p.perplexity_windows_ratio = ratio(p.perplexity_windows, b.perplexity_windows);
    }
    p
}

/// What the grid measures, besides its policies.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchOptions {
    /// Context lengths, in tokens.
    pub lengths: Vec<usize>,
    /// Tokens of the continuation scored for perplexity.
    pub continuation: usize,
    /// Consecutive windows of context plus continuation scored for perplexity (the first
    /// one is the text the timed runs read).
    pub ppl_windows: usize,
    /// Tokens generated by each timed run.
    pub decode_tokens: usize,
    /// Timed runs per point (medians are reported).
    pub repeats: usize,
}

impl BenchOptions {
    /// Checks that every count is at least 1.
    pub fn validate(&self) -> Result<()> {
        if self.lengths.is_empty() || self.lengths.contains(&0) {
            return Err(Error::Invalid("lengths must give at least one length, each at least 1".into()));
        }
        if self.continuation == 0 || self.decode_tokens == 0 || self.repeats == 0 || self.ppl_windows == 0 {
            return Err(Error::Invalid(
                "continuation, perplexity windows, decode tokens and repeats must be at least 1".into(),
            ));
        }
        Ok(())
    }

    /// Tokens one window holds: the longest context and its continuation (or the timed
    /// generation, if longer). It must fit the model's context.
    pub fn window_tokens(&self) -> usize {
        self.lengths.iter().copied().max().unwrap_or(0) + self.continuation.max(self.decode_tokens)
    }

    /// Tokens of text the grid needs: every perplexity window at the longest context.
    pub fn tokens_needed(&self) -> usize {
        let longest = self.lengths.iter().copied().max().unwrap_or(0);
        self.window_tokens().max(self.ppl_windows * (longest + self.continuation))
    }
}

/// One policy of the grid at one kept fraction.
#[derive(Debug, Clone)]
pub struct GridEntry {
    /// The policy's name as given.
    pub name: String,
    /// The kept fraction it was set to.
    pub keep: f64,
    /// The policy at that fraction.
    pub policy: Policy,
}

/// Measures every entry of `grid` at every length of `options`, the unpruned model first
/// at each length (the baseline of the ratios), after one unmeasured warm-up run. Each
/// point's timed runs alternate with as many unpruned ones, its speedups' baseline.
/// `tokens` holds at least [`BenchOptions::tokens_needed`] tokens; `progress` receives one
/// line per point.
pub fn run_grid<B: Backend>(
    backend: &B,
    tokenizer: &Tokenizer,
    grid: &[GridEntry],
    tokens: &[u32],
    options: &BenchOptions,
    progress: &mut dyn FnMut(&str),
) -> Result<Vec<Point>> {
    options.validate()?;
    if tokens.len() < options.tokens_needed() {
        return Err(Error::TooShort { available: tokens.len(), needed: options.tokens_needed() });
    }
    let total = options.lengths.len() * (1 + grid.len());
    let started = Instant::now();
    progress(&format!("warm-up: unpruned generation of {} tokens", options.lengths[0]));
    generation(backend, tokenizer, &Policy::none(), &tokens[..options.lengths[0]], options.decode_tokens)
        .during(|| "warm-up".into())?;
    let mut points: Vec<Point> = Vec::new();
    for &length in &options.lengths {
        let ctx = &tokens[..options.ppl_windows * (length + options.continuation)];
        let mut base: Option<Point> = None;
        let baseline = GridEntry { name: "none".into(), keep: 1.0, policy: Policy::none() };
        for entry in std::iter::once(&baseline).chain(grid) {
            let raw = measure(backend, tokenizer, &entry.policy, ctx, length, options).map_err(|e| match e {
                Error::Engine { what, source } => Error::Engine {
                    what: format!("policy `{}`, keep {:?}, length {length}: {what}", entry.name, entry.keep),
                    source,
                },
                other => other,
            })?;
            let p = point(length, &entry.name, entry.keep, raw, base.as_ref());
            let done = points.len() + 1;
            let elapsed = started.elapsed().as_secs_f64();
            progress(&format!(
                "{done}/{total} | length {length} | {} keep {:?} | TTFT {:.0} ms ({:.2}x) | decode {:.1} tok/s | KV {:.2} MiB | ppl {:.2}{} | {} elapsed, ~{} left",
                entry.name,
                entry.keep,
                p.ttft_ms,
                p.ttft_speedup,
                p.decode_tok_s,
                p.kv_bytes as f64 / 1048576.0,
                p.perplexity,
                if options.ppl_windows > 1 {
                    format!(" ({:.2} over {} windows)", p.perplexity_windows, options.ppl_windows)
                } else {
                    String::new()
                },
                clock(elapsed),
                clock(elapsed / done as f64 * (total - done) as f64)
            ));
            if base.is_none() {
                base = Some(p.clone());
            }
            points.push(p);
        }
    }
    Ok(points)
}

/// `mm:ss`.
fn clock(secs: f64) -> String {
    let s = secs.max(0.0).round() as u64;
    format!("{}:{:02}", s / 60, s % 60)
}

/// Writes `results.json`, `results.md`, `quality.svg`, `speedup.svg` and `frontier.svg`
/// into `out`;
/// returns the markdown table.
pub fn write_outputs(out: &Path, results: &Results, log: &mut dyn FnMut(&str)) -> Result<String> {
    let mut write = |name: &str, text: String| -> Result<()> {
        let path = out.join(name);
        std::fs::write(&path, text).map_err(|e| Error::Invalid(format!("writing {}: {e}", path.display())))?;
        log(&format!("wrote {}", path.display()));
        Ok(())
    };
    let json = serde_json::to_string_pretty(results).map_err(|e| Error::Invalid(format!("results.json: {e}")))?;
    write("results.json", json + "\n")?;
    let md = crate::table::markdown(results);
    write("results.md", md.clone())?;
    write("quality.svg", crate::plot::quality(&results.points)?)?;
    write("speedup.svg", crate::plot::speedup(&results.points)?)?;
    write("frontier.svg", crate::plot::frontier(&results.points)?)?;
    Ok(md)
}
