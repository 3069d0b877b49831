//! sieve against llama.cpp on the same weights, the same machine and threads, in one run:
//! prompt processing of 512 and 2,048 tokens, decoding 64 tokens after an empty cache and
//! after 2,048 tokens, on every sieve backend, each point measured alternately (llama.cpp,
//! then each sieve backend) so that a change in the machine's load hits both sides; then
//! WikiText-2 perplexity by `llama-perplexity`'s protocol on both. Prints sieve/llama.cpp
//! ratios (above 1: sieve is faster).
//!
//! `cargo xtask peers` builds llama.cpp and the F32 copy of the model first
//! (`cargo xtask setup-llamacpp`) and runs this with every backend.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Parser;
use serde_json::json;
use sieve_backend::DeviceSpec;
use sieve_benches::{default_model, median, prompt_tokens, wikitext_path};
use sieve_engine::sampling::argmax;
use sieve_engine::{Logits, Model, Policy, Session};
use sieve_runtime::{BackendKind, Runtime};

/// sieve against llama.cpp (prefill, decode, perplexity), ratios from one run.
#[derive(Debug, Parser)]
#[command(name = "peers")]
struct Args {
    /// sieve backends to measure.
    #[arg(long, value_delimiter = ',', default_value = "candle,ort,tch")]
    backends: Vec<BackendKind>,
    /// Rounds; every point is measured once per round on each side, medians reported.
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Prompt lengths of the prefill points.
    #[arg(long, value_delimiter = ',', default_value = "512,2048")]
    prompts: Vec<usize>,
    /// Context lengths before the decode points.
    #[arg(long, value_delimiter = ',', default_value = "0,2048")]
    depths: Vec<usize>,
    /// Tokens generated per decode point.
    #[arg(long, default_value_t = 64)]
    generate: usize,
    /// Threads on both sides (sieve reads `SIEVE_THREADS`, set it to the same number).
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// The folder with `llama-bench` and `llama-perplexity`.
    #[arg(long)]
    llama_bin: PathBuf,
    /// The GGUF llama.cpp runs (the exact F32 copy of the default model).
    #[arg(long)]
    llama_model: PathBuf,
    /// The model sieve runs. Default: the default model, dequantized to f32 at load.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Chunks of the perplexity comparison (0 skips it).
    #[arg(long, default_value_t = 8)]
    ppl_chunks: usize,
    /// Context of each perplexity chunk.
    #[arg(long, default_value_t = 512)]
    ppl_ctx: usize,
    /// Also write the results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Point {
    Prefill(usize),
    Decode(usize),
}

impl Point {
    fn label(self, generate: usize) -> String {
        match self {
            Point::Prefill(n) => format!("prefill {n} tokens, tok/s"),
            Point::Decode(0) => format!("decode {generate} tokens, empty cache, tok/s"),
            Point::Decode(d) => format!("decode {generate} tokens after {d}, tok/s"),
        }
    }
}

/// One `llama-bench` run of `point`, tokens per second.
fn llama_bench(a: &Args, point: Point) -> Result<f64> {
    let bin = a.llama_bin.join("llama-bench");
    let mut cmd = Command::new(&bin);
    cmd.arg("-m").arg(&a.llama_model).args(["-t", &a.threads.to_string(), "-r", "1", "-o", "json"]);
    match point {
        Point::Prefill(n) => cmd.args(["-p", &n.to_string(), "-n", "0"]),
        Point::Decode(d) => cmd.args(["-p", "0", "-n", &a.generate.to_string(), "-d", &d.to_string()]),
    };
    let out = cmd.output().with_context(|| format!("running {}", bin.display()))?;
    if !out.status.success() {
        bail!("{} failed ({}): {}", bin.display(), out.status, String::from_utf8_lossy(&out.stderr));
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("reading llama-bench's JSON")?;
    v.get(0).and_then(|r| r["avg_ts"].as_f64()).context("llama-bench printed no result")
}

/// One sieve measurement of `point` on `rt`, tokens per second.
fn sieve(rt: &Runtime, tokens: &[u32], point: Point, generate: usize) -> Result<f64> {
    let mut session = Session::new(rt, Policy::none())?;
    match point {
        Point::Prefill(n) => {
            let start = Instant::now();
            session.prefill(&tokens[..n], Logits::Last)?;
            Ok(n as f64 / start.elapsed().as_secs_f64())
        }
        Point::Decode(depth) => {
            // An empty cache still needs one token to start from.
            let context = &tokens[..depth.max(1)];
            let mut next = argmax(session.prefill(context, Logits::Last)?.last());
            let start = Instant::now();
            for _ in 0..generate {
                next = argmax(&session.step(next)?);
            }
            Ok(generate as f64 / start.elapsed().as_secs_f64())
        }
    }
}

/// `llama-perplexity`'s final estimate on `text`.
fn llama_perplexity(a: &Args, text: &Path) -> Result<f64> {
    let bin = a.llama_bin.join("llama-perplexity");
    let out = Command::new(&bin)
        .arg("-m")
        .arg(&a.llama_model)
        .arg("-f")
        .arg(text)
        .args(["-c", &a.ppl_ctx.to_string(), "--chunks", &a.ppl_chunks.to_string(), "-t", &a.threads.to_string()])
        .output()
        .with_context(|| format!("running {}", bin.display()))?;
    let log = String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!("{} failed ({}): {log}", bin.display(), out.status);
    }
    let line =
        log.lines().find(|l| l.contains("Final estimate: PPL")).context("no final estimate from llama-perplexity")?;
    let value = line.split("PPL =").nth(1).and_then(|s| s.split_whitespace().next()).context("unreadable estimate")?;
    Ok(value.parse()?)
}

fn ratio(ours: f64, theirs: f64) -> String {
    if theirs > 0.0 { format!("{:.2}x", ours / theirs) } else { "-".into() }
}

fn run(a: &Args) -> Result<()> {
    if std::env::var("SIEVE_THREADS").ok().and_then(|v| v.parse::<usize>().ok()) != Some(a.threads) {
        bail!("set SIEVE_THREADS={} so that sieve uses as many threads as llama.cpp", a.threads);
    }
    let model_path = match &a.model {
        Some(p) => p.clone(),
        None => default_model()?,
    };
    let model = Model::load(&model_path).with_context(|| format!("loading {}", model_path.display()))?;
    let longest = a.prompts.iter().chain(&a.depths).copied().max().unwrap_or(1).max(1);
    let text = wikitext_path();
    let tokens = prompt_tokens(&model.tokenizer, &text, longest)?;
    let mut runtimes = Vec::new();
    for &kind in &a.backends {
        if !kind.compiled() {
            eprintln!("[peers] skipped {kind}: not compiled in (cargo xtask peers builds every backend)");
            continue;
        }
        let rt = Runtime::load(kind, DeviceSpec::Cpu, &model.config, model.weights.clone())
            .with_context(|| format!("loading backend {kind}"))?;
        sieve(&rt, &tokens, Point::Prefill(64), 1)?; // warm-up
        runtimes.push((kind, rt));
    }
    let points: Vec<Point> =
        a.prompts.iter().map(|&n| Point::Prefill(n)).chain(a.depths.iter().map(|&d| Point::Decode(d))).collect();
    let mut llama: Vec<Vec<f64>> = vec![Vec::new(); points.len()];
    let mut ours: Vec<Vec<Vec<f64>>> = vec![vec![Vec::new(); points.len()]; runtimes.len()];
    for round in 0..a.repeats {
        for (i, &point) in points.iter().enumerate() {
            llama[i].push(llama_bench(a, point)?);
            for (b, (kind, rt)) in runtimes.iter().enumerate() {
                ours[b][i].push(sieve(rt, &tokens, point, a.generate).with_context(|| format!("{kind}: {point:?}"))?);
            }
            let mine: Vec<String> =
                runtimes.iter().enumerate().map(|(b, (k, _))| format!("{k} {:.1}", ours[b][i][round])).collect();
            eprintln!(
                "[peers] round {}/{}: {} | llama.cpp {:.1} | {}",
                round + 1,
                a.repeats,
                point.label(a.generate),
                llama[i][round],
                mine.join(" | ")
            );
        }
    }
    let mut header = "| measure | llama.cpp F32 |".to_string();
    let mut rule = "|---|---:|".to_string();
    for (kind, _) in &runtimes {
        header.push_str(&format!(" sieve {kind} | {kind} / llama.cpp |"));
        rule.push_str("---:|---:|");
    }
    println!("\n{header}\n{rule}");
    let mut rows = Vec::new();
    for (i, &point) in points.iter().enumerate() {
        let theirs = median(&llama[i]);
        let mut line = format!("| {} | {theirs:.1} |", point.label(a.generate));
        let mut backends = serde_json::Map::new();
        for (b, (kind, _)) in runtimes.iter().enumerate() {
            let m = median(&ours[b][i]);
            line.push_str(&format!(" {m:.1} | {} |", ratio(m, theirs)));
            backends.insert(kind.to_string(), json!({ "tok_s": m, "runs": ours[b][i], "ratio": m / theirs }));
        }
        println!("{line}");
        rows.push(json!({ "measure": point.label(a.generate), "llama_cpp": theirs, "llama_cpp_runs": llama[i], "sieve": backends }));
    }
    let mut ppl = serde_json::Value::Null;
    if a.ppl_chunks > 0 {
        let theirs = llama_perplexity(a, &text)?;
        let all = prompt_tokens(&model.tokenizer, &text, a.ppl_ctx * a.ppl_chunks)?;
        let mut line = format!(
            "\nWikiText-2 perplexity, {} chunks of {} (second halves scored): llama.cpp {theirs:.4}",
            a.ppl_chunks, a.ppl_ctx
        );
        let mut per = serde_json::Map::new();
        for (kind, rt) in &runtimes {
            let r = sieve_eval::perplexity::chunked_perplexity(rt, &all, a.ppl_ctx, a.ppl_chunks)?;
            let rel = r.perplexity / theirs - 1.0;
            line.push_str(&format!(" | sieve {kind} {:.4} ({:+.3}%)", r.perplexity, 100.0 * rel));
            per.insert(kind.to_string(), json!({ "perplexity": r.perplexity, "relative_difference": rel }));
        }
        println!("{line}");
        ppl = json!({ "llama_cpp": theirs, "sieve": per, "chunks": a.ppl_chunks, "n_ctx": a.ppl_ctx });
    }
    if let Some(path) = &a.json {
        let doc = json!({
            "command": sieve_benches::command_line(),
            "threads": a.threads,
            "repeats": a.repeats,
            "llama_model": a.llama_model.display().to_string(),
            "model": model_path.display().to_string(),
            "rows": rows,
            "perplexity": ppl,
        });
        std::fs::write(path, serde_json::to_string_pretty(&doc)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn main() -> ExitCode {
    match run(&Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
