//! sieve against llama.cpp on the same model, machine and threads, in one run: prompt
//! processing of 512 and 2,048 tokens, decoding 64 tokens after an empty cache and after
//! 2,048 tokens. llama.cpp runs the exact F32 copy of the default model and the file as
//! shipped (Q4_1); sieve runs each backend with f32 weights, candle and ort with the weights
//! as stored (`native`), and candle native with a pruning policy. Every point is measured
//! alternately (each llama.cpp model, then each sieve configuration), so that a change in
//! the machine's load hits every side. Then WikiText-2 perplexity by `llama-perplexity`'s
//! protocol on both, and the compressed-context perplexity the policy costs. Prints
//! tokens per second and ratios (above 1: sieve is faster).
//!
//! `cargo xtask peers` builds llama.cpp and the F32 copy first and runs this.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Parser;
use serde_json::json;
use sieve_backend::DeviceSpec;
use sieve_benches::{default_model, median, prompt_tokens, wikitext_path, workspace_dir};
use sieve_engine::sampling::argmax;
use sieve_engine::{Dtype, Logits, Model, Policy, Session};
use sieve_runtime::{BackendKind, Runtime};

/// sieve against llama.cpp (prefill, decode, perplexity), ratios from one run.
#[derive(Debug, Parser)]
#[command(name = "peers")]
struct Args {
    /// sieve backends measured with f32 weights.
    #[arg(long, value_delimiter = ',', default_value = "candle,ort,tch")]
    backends: Vec<BackendKind>,
    /// sieve backends measured with the weights as stored (`native`): candle's CPU kernels
    /// and ort's `MatMulNBits` compute on the file's blocks; tch decodes them at load.
    #[arg(long, value_delimiter = ',', default_value = "candle,ort")]
    native: Vec<BackendKind>,
    /// sieve backends measured with bf16 matrices: tch multiplies them in bf16 (oneDNN);
    /// candle and ort multiply them by `f32` inputs. `--bf16` alone measures none.
    #[arg(long, value_delimiter = ',', num_args = 0.., default_value = "tch")]
    bf16: Vec<BackendKind>,
    /// The policy of the pruned configuration (candle, native weights): a preset name in
    /// configs/, a path, `NAME@K`.
    #[arg(long, default_value = "lazy-prefill@0.5")]
    policy: String,
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
    /// Threads on both sides (sieve reads `SIEVE_THREADS`, which must say the same).
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// The folder with `llama-bench` and `llama-perplexity`.
    #[arg(long)]
    llama_bin: PathBuf,
    /// The exact F32 copy of the model, for llama.cpp.
    #[arg(long)]
    llama_model: PathBuf,
    /// The model sieve runs, which llama.cpp also runs as shipped. Default: the default
    /// model.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Chunks of the perplexity comparison (0 skips it).
    #[arg(long, default_value_t = 8)]
    ppl_chunks: usize,
    /// Context of each perplexity chunk.
    #[arg(long, default_value_t = 512)]
    ppl_ctx: usize,
    /// Windows (2,048 context + 128 scored) of the policy's compressed-context perplexity.
    #[arg(long, default_value_t = 2)]
    policy_windows: usize,
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
            Point::Prefill(n) => format!("prefill {n} tokens"),
            Point::Decode(0) => format!("decode {generate} tokens, empty cache"),
            Point::Decode(d) => format!("decode {generate} tokens after {d}"),
        }
    }
}

/// A llama.cpp model: its label and file.
struct Peer {
    label: String,
    model: PathBuf,
}

/// A sieve configuration: a backend on weights of one dtype, with a policy.
struct Contestant {
    label: String,
    runtime: Runtime,
    policy: Policy,
}

/// One `llama-bench` run of `point`, tokens per second, and whether llama.cpp repacked the
/// weights. Repacking (llama.cpp's re-layout of quantized weights at load, on by default)
/// is tried first; b11434 crashes with it on this Q4_1 file at prompt processing, and then
/// the point runs without it.
fn llama_bench(a: &Args, model: &Path, point: Point) -> Result<(f64, bool)> {
    match llama_bench_with(a, model, point, true) {
        Ok(v) => Ok((v, true)),
        Err(_) => Ok((llama_bench_with(a, model, point, false)?, false)),
    }
}

fn llama_bench_with(a: &Args, model: &Path, point: Point, repack: bool) -> Result<f64> {
    let bin = a.llama_bin.join("llama-bench");
    let mut cmd = Command::new(&bin);
    let repack = if repack { "1" } else { "0" };
    cmd.arg("-m").arg(model).args(["-t", &a.threads.to_string(), "-r", "1", "-o", "json", "--repack", repack]);
    match point {
        Point::Prefill(n) => cmd.args(["-p", &n.to_string(), "-n", "0"]),
        Point::Decode(d) => cmd.args(["-p", "0", "-n", &a.generate.to_string(), "-d", &d.to_string()]),
    };
    let out = cmd.output().with_context(|| format!("running {}", bin.display()))?;
    if !out.status.success() {
        bail!(
            "{} on {} failed ({}): {}",
            bin.display(),
            model.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("reading llama-bench's JSON")?;
    v.get(0).and_then(|r| r["avg_ts"].as_f64()).context("llama-bench printed no result")
}

/// One sieve measurement of `point`, tokens per second: the prefill (with the policy's
/// pruning) until the logits of the last token, or `generate` decode steps after a prefill.
fn sieve(c: &Contestant, tokens: &[u32], point: Point, generate: usize) -> Result<f64> {
    let mut session = Session::new(&c.runtime, c.policy.clone())?;
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

fn contestants(a: &Args, path: &Path, tokens: &[u32]) -> Result<Vec<Contestant>> {
    let mut out = Vec::new();
    let f32_model = Model::load_with(path, Dtype::F32)?;
    for &kind in &a.backends {
        if !kind.compiled() {
            eprintln!("[peers] skipped {kind}: not compiled in (cargo xtask peers builds every backend)");
            continue;
        }
        let runtime = Runtime::load(kind, DeviceSpec::Cpu, &f32_model.config, f32_model.weights.clone())
            .with_context(|| format!("loading backend {kind}"))?;
        out.push(Contestant { label: format!("sieve {kind} f32"), runtime, policy: Policy::none() });
    }
    drop(f32_model);
    let policy = sieve_core::preset::resolve(&a.policy, &workspace_dir().join("configs"))?;
    let bf16 = a.bf16.iter().filter(|k| k.compiled()).map(|&k| (k, Dtype::BF16, Policy::none()));
    let native = a.native.iter().filter(|k| k.compiled()).map(|&k| (k, Dtype::Native, Policy::none()));
    for (kind, dtype, policy) in bf16.chain(native).chain(std::iter::once((BackendKind::Candle, Dtype::Native, policy)))
    {
        let model = Model::load_with(path, dtype)?;
        let runtime = Runtime::load(kind, DeviceSpec::Cpu, &model.config, model.weights)?;
        let suffix = if policy.is_none() { String::new() } else { format!(" + {}", policy.name) };
        out.push(Contestant { label: format!("sieve {kind} {dtype}{suffix}"), runtime, policy });
    }
    for c in &out {
        sieve(c, tokens, Point::Prefill(64), 1)?; // warm-up
    }
    Ok(out)
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
    let tokens = prompt_tokens(&model.tokenizer, &text, longest.max(2048 + 128))?;
    let peers = [
        Peer { label: "llama.cpp F32".into(), model: a.llama_model.clone() },
        Peer { label: "llama.cpp as shipped".into(), model: model_path.clone() },
    ];
    let sides = contestants(a, &model_path, &tokens)?;
    let points: Vec<Point> =
        a.prompts.iter().map(|&n| Point::Prefill(n)).chain(a.depths.iter().map(|&d| Point::Decode(d))).collect();
    let mut theirs: Vec<Vec<Vec<f64>>> = vec![vec![Vec::new(); points.len()]; peers.len()];
    let mut unpacked: Vec<String> = Vec::new();
    let mut ours: Vec<Vec<Vec<f64>>> = vec![vec![Vec::new(); points.len()]; sides.len()];
    for round in 0..a.repeats {
        for (i, &point) in points.iter().enumerate() {
            let mut line = Vec::new();
            for (p, peer) in peers.iter().enumerate() {
                let (v, repacked) = llama_bench(a, &peer.model, point).with_context(|| peer.label.clone())?;
                if !repacked {
                    let note = format!("{}, {}", peer.label, point.label(a.generate));
                    if !unpacked.contains(&note) {
                        unpacked.push(note);
                    }
                }
                theirs[p][i].push(v);
                line.push(format!("{} {v:.1}", peer.label));
            }
            for (s, side) in sides.iter().enumerate() {
                ours[s][i].push(
                    sieve(side, &tokens, point, a.generate).with_context(|| format!("{}: {point:?}", side.label))?,
                );
                line.push(format!("{} {:.1}", side.label, ours[s][i][round]));
            }
            eprintln!("[peers] round {}/{}: {} | {}", round + 1, a.repeats, point.label(a.generate), line.join(" | "));
        }
    }
    println!(
        "\nTokens per second, median of {} alternating rounds, {} threads; sieve's ratio to llama.cpp F32 and to llama.cpp on the file as shipped:\n",
        a.repeats, a.threads
    );
    let mut header = "| measure |".to_string();
    let mut rule = "|---|".to_string();
    for peer in &peers {
        header.push_str(&format!(" {} |", peer.label));
        rule.push_str("---:|");
    }
    for side in &sides {
        header.push_str(&format!(" {} | vs F32 / as shipped |", side.label));
        rule.push_str("---:|---:|");
    }
    println!("{header}\n{rule}");
    let mut rows = Vec::new();
    for (i, &point) in points.iter().enumerate() {
        let refs: Vec<f64> = theirs.iter().map(|t| median(&t[i])).collect();
        let mut line = format!("| {} |", point.label(a.generate));
        refs.iter().for_each(|r| line.push_str(&format!(" {r:.1} |")));
        let mut per = serde_json::Map::new();
        for (s, side) in sides.iter().enumerate() {
            let m = median(&ours[s][i]);
            line.push_str(&format!(" {m:.1} | {} / {} |", ratio(m, refs[0]), ratio(m, refs[1])));
            per.insert(side.label.clone(), json!({ "tok_s": m, "runs": ours[s][i] }));
        }
        println!("{line}");
        rows.push(json!({ "measure": point.label(a.generate), "llama_cpp_f32": refs[0], "llama_cpp_as_shipped": refs[1], "sieve": per }));
    }
    if !unpacked.is_empty() {
        println!("\nllama.cpp crashed with its weight repacking on, and ran without it, for: {}", unpacked.join("; "));
    }
    let mut doc = json!({
        "llama_cpp_without_repacking": unpacked,
        "command": sieve_benches::command_line(),
        "threads": a.threads,
        "repeats": a.repeats,
        "llama_model": a.llama_model.display().to_string(),
        "model": model_path.display().to_string(),
        "rows": rows,
    });
    // What the policy costs: compressed-context perplexity, 2,048 tokens of context.
    if a.policy_windows > 0 {
        let all = prompt_tokens(&model.tokenizer, &text, a.policy_windows * (2048 + 128))?;
        let mut ppl = Vec::new();
        for side in sides.iter().filter(|s| s.label.starts_with("sieve candle native")) {
            let r = sieve_eval::perplexity::compressed_perplexity(
                &side.runtime,
                &side.policy,
                &all,
                2048,
                128,
                a.policy_windows,
            )?;
            ppl.push((side.policy.name.clone(), r.perplexity));
        }
        if let [(_, base), (name, pruned)] = ppl.as_slice() {
            println!(
                "\nCompressed-context perplexity ({} windows of 2,048 + 128 tokens): none {base:.3}, {name} {pruned:.3} ({:+.2}%)",
                a.policy_windows,
                100.0 * (pruned / base - 1.0)
            );
            doc["policy_perplexity"] = json!({ "none": base, "policy": name, "pruned": pruned });
        }
    }
    if a.ppl_chunks > 0 {
        let reference = llama_perplexity(a, &text)?;
        let all = prompt_tokens(&model.tokenizer, &text, a.ppl_ctx * a.ppl_chunks)?;
        let mut line = format!(
            "\nWikiText-2 perplexity, {} chunks of {} tokens, second halves scored (llama-perplexity's protocol): llama.cpp F32 {reference:.4}",
            a.ppl_chunks, a.ppl_ctx
        );
        let mut per = serde_json::Map::new();
        for side in sides.iter().filter(|s| s.policy.is_none()) {
            let r = sieve_eval::perplexity::chunked_perplexity(&side.runtime, &all, a.ppl_ctx, a.ppl_chunks)?;
            line.push_str(&format!(
                " | {} {:.4} ({:+.3}%)",
                side.label,
                r.perplexity,
                100.0 * (r.perplexity / reference - 1.0)
            ));
            per.insert(side.label.clone(), json!(r.perplexity));
        }
        println!("{line}");
        doc["perplexity"] =
            json!({ "llama_cpp_f32": reference, "sieve": per, "chunks": a.ppl_chunks, "n_ctx": a.ppl_ctx });
    }
    if let Some(path) = &a.json {
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
