//! Pruning policies against the unpruned model on sieve-candle (CPU), measured in one
//! process: time to first token, prefill work and KV memory after a WikiText-2 context,
//! then the perplexity of the text's continuation, fed token by token over the compressed
//! cache, and the decode speed of those steps.
//!
//! `cargo run --release -p sieve-benches --bin pruning -- --context 2048 --continuation 128 --repeats 2`

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Parser;
use serde_json::json;
use sieve_benches::{command_line, default_model, median, mib, nll, prompt_tokens, wikitext_path, workspace_dir};
use sieve_candle::{CandleBackend, CandleDevice};
use sieve_engine::sampling::argmax;
use sieve_engine::{Logits, Model, Policy, Session};

/// The synthetic single-stage LazyLLM-style policy: half the prompt from layer 2 on.
const LAZY_HALF: &str = "[prefill]\nlayers = [2]\nkeep = 0.5\nsinks = 4\nrecent = 16\n";
const LAZY_HALF_NAME: &str = "lazy-0.5";

/// Time to first token, prefill savings, KV memory and compressed-context perplexity of
/// pruning policies, against the unpruned model.
#[derive(Debug, Parser)]
#[command(name = "pruning")]
struct Args {
    /// Context (prompt) length in tokens.
    #[arg(long, default_value_t = 2048)]
    context: usize,
    /// Continuation tokens scored for perplexity after the context.
    #[arg(long, default_value_t = 128)]
    continuation: usize,
    /// Measured prefill repeats per policy (after one warm-up run); medians are reported.
    #[arg(long, default_value_t = 2)]
    repeats: usize,
    /// Policies: names of `configs/*.toml`, or `lazy-0.5`; `NAME@K` overrides the kept
    /// fraction to K (e.g. `lazy-prefill@0.3`).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "none,lazy-prefill,lazy-0.5,snapkv,pyramid,knorm,streaming,tova,h2o,combined,adaptive"
    )]
    policies: Vec<String>,
    /// Also write the numbers as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Text file (default: `$SIEVE_DATA/wikitext-2/wiki.test.raw`).
    #[arg(long)]
    text: Option<PathBuf>,
}

/// Names `--policies` accepts: the files in `dir` and the synthetic policy.
fn known_policies(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "toml"))
                .filter_map(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
                .collect()
        })
        .unwrap_or_default();
    names.push(LAZY_HALF_NAME.into());
    names.sort();
    names
}

/// The policy `name`: `lazy-0.5`, or `<dir>/<name>.toml` as written (decode section included);
/// `NAME@K` is that policy with its kept fraction overridden to `K`, as `--keep K` does.
fn load_policy(name: &str, dir: &Path) -> Result<Policy> {
    if let Some((base, keep)) = name.split_once('@') {
        let keep: f64 = keep.parse().with_context(|| format!("`{name}`: `{keep}` is not a fraction"))?;
        let mut file = load_policy(base, dir)?.to_file();
        file.override_keep(keep);
        let mut policy = file.validate().with_context(|| format!("policy `{name}`"))?;
        policy.name = name.into();
        return Ok(policy);
    }
    let mut policy = if name == LAZY_HALF_NAME {
        Policy::from_toml(LAZY_HALF).context("parsing the built-in lazy-0.5 policy")?
    } else {
        let path = dir.join(format!("{name}.toml"));
        let plain = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
        if !plain || name.starts_with('.') || !path.is_file() {
            bail!("unknown policy `{name}`: known are {}", known_policies(dir).join(", "));
        }
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        Policy::from_toml(&text).with_context(|| format!("parsing policy {}", path.display()))?
    };
    policy.name = name.into();
    Ok(policy)
}

/// What one policy measured.
struct Measured {
    policy: String,
    ttft_ms_runs: Vec<f64>,
    prune_ms_runs: Vec<f64>,
    tokens_computed: usize,
    flops_saved: f64,
    kv_bytes: usize,
    kv_bytes_unpruned: usize,
    decode_steps: usize,
    decode_s: f64,
    nll: Vec<f64>,
}

impl Measured {
    fn ttft_ms(&self) -> f64 {
        median(&self.ttft_ms_runs)
    }
    fn prune_ms(&self) -> f64 {
        median(&self.prune_ms_runs)
    }
    fn decode_tok_s(&self) -> f64 {
        if self.decode_steps > 0 && self.decode_s > 0.0 { self.decode_steps as f64 / self.decode_s } else { 0.0 }
    }
    fn ppl(&self) -> f64 {
        (self.nll.iter().sum::<f64>() / self.nll.len().max(1) as f64).exp()
    }
}

/// Times `repeats` prefills of `ctx` with `policy`, then scores `cont` (non-empty) over the
/// last run's cache: the prefill's last row predicts `cont[0]`, `step(cont[i])` `cont[i + 1]`.
fn measure(backend: &CandleBackend, policy: &Policy, ctx: &[u32], cont: &[u32], repeats: usize) -> Result<Measured> {
    let (mut ttft_ms_runs, mut prune_ms_runs, mut last) = (Vec::new(), Vec::new(), None);
    for r in 0..repeats {
        let started = Instant::now();
        let mut session = Session::new(backend, policy.clone()).context("creating the session")?;
        let out = session.prefill(ctx, Logits::Last).context("prefill")?;
        let first = std::hint::black_box(argmax(out.last()));
        let ms = started.elapsed().as_secs_f64() * 1e3;
        eprintln!("  run {}: TTFT {ms:.1} ms (scoring {:.1} ms), first token {first}", r + 1, session.stats.prune_ms);
        ttft_ms_runs.push(ms);
        prune_ms_runs.push(session.stats.prune_ms);
        last = Some((session, out));
    }
    let (mut session, out) = last.context("--repeats must be at least 1")?;
    let stats = &session.stats;
    let (tokens_computed, flops_saved) = (stats.tokens_per_layer.iter().sum(), stats.flops_saved);
    let (kv_bytes, kv_bytes_unpruned) = (session.kv_bytes(), stats.kv_bytes_unpruned);
    let mut nlls = vec![nll(out.last(), cont[0]).context("scoring continuation token 0")?];
    let mut decode_s = 0.0;
    for (i, pair) in cont.windows(2).enumerate() {
        let started = Instant::now();
        let logits = session.step(pair[0]).with_context(|| format!("decode step {i}"))?;
        decode_s += started.elapsed().as_secs_f64();
        nlls.push(nll(&logits, pair[1]).with_context(|| format!("scoring continuation token {}", i + 1))?);
    }
    Ok(Measured {
        policy: policy.name.clone(),
        ttft_ms_runs,
        prune_ms_runs,
        tokens_computed,
        flops_saved,
        kv_bytes,
        kv_bytes_unpruned,
        decode_steps: cont.len() - 1,
        decode_s,
        nll: nlls,
    })
}

/// `a / b` when `b` is a usable baseline.
fn ratio(a: f64, b: Option<f64>) -> Option<f64> {
    b.filter(|&b| b > 0.0 && a.is_finite()).map(|b| a / b)
}

fn cell(v: Option<f64>, digits: usize, suffix: &str) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.digits$}{suffix}"))
}

fn run(args: &Args) -> Result<()> {
    let (n, c) = (args.context, args.continuation);
    if n == 0 || c == 0 || args.repeats == 0 {
        bail!("--context, --continuation and --repeats must each be at least 1");
    }
    let configs = workspace_dir().join("configs");
    let policies: Vec<Policy> = args.policies.iter().map(|p| load_policy(p.trim(), &configs)).collect::<Result<_>>()?;
    if policies.is_empty() {
        bail!("--policies names no policy");
    }
    let model_path = default_model()?;
    let mut model = Model::load(&model_path).with_context(|| format!("loading {}", model_path.display()))?;
    let n_layers = model.config.n_layers;
    if n + c > model.config.context {
        bail!("{n} context + {c} continuation tokens exceed the model's context of {} tokens", model.config.context);
    }
    for p in &policies {
        p.check_model(n_layers).with_context(|| format!("policy `{}` does not fit the model", p.name))?;
    }
    let text_path = args.text.clone().unwrap_or_else(wikitext_path);
    let tokens = prompt_tokens(&model.tokenizer, &text_path, n + c)?;
    let (ctx, cont) = tokens.split_at(n);
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    eprintln!("model {} ({n_layers} layers, hidden {})", model_path.display(), model.config.hidden);
    let weights = model.take_weights();
    let backend = CandleBackend::from_weights(&model.config, weights, CandleDevice::Cpu)
        .context("building the candle backend")?;

    eprintln!("warm-up: unpruned prefill of {n} tokens");
    let mut session = Session::new(&backend, Policy::none()).context("creating the warm-up session")?;
    let out = session.prefill(ctx, Logits::Last).context("warm-up prefill")?;
    session.step(argmax(out.last())).context("warm-up decode step")?;
    drop(session);

    let mut results = Vec::new();
    for policy in &policies {
        eprintln!("policy {}", policy.name);
        results.push(
            measure(&backend, policy, ctx, cont, args.repeats).with_context(|| format!("policy `{}`", policy.name))?,
        );
    }

    let base = results.iter().find(|m| m.policy == "none");
    let base_ttft = base.map(Measured::ttft_ms);
    let base_kv = base.map(|m| m.kv_bytes as f64);
    let base_ppl = base.map(Measured::ppl);
    if base.is_none() {
        eprintln!("note: `none` is not among the policies, so the columns relative to it stay empty");
    }
    println!("\ncommand: {}", command_line());
    println!("threads: {threads}; context: {n} tokens; continuation: {c} tokens; repeats: {}", args.repeats);
    println!("model: {}; text: {}\n", model_path.display(), text_path.display());
    println!(
        "| policy | TTFT ms | TTFT speedup vs none | tokens computed % | FLOPs saved % | KV after prefill (MiB) \
         | KV vs none | decode tok/s | ppl | ppl change % vs none | scoring ms (% of prefill) |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut rows = Vec::new();
    for m in &results {
        let (ttft, prune, ppl) = (m.ttft_ms(), m.prune_ms(), m.ppl());
        let speedup = base_ttft.filter(|&b| b.is_finite()).and_then(|b| ratio(b, Some(ttft)));
        let computed = m.tokens_computed as f64 / (n * n_layers) as f64;
        let kv_ratio = ratio(m.kv_bytes as f64, base_kv);
        let ppl_change = ratio(ppl, base_ppl).map(|r| (r - 1.0) * 100.0);
        let prune_share = ratio(prune, Some(ttft));
        let decode = (m.decode_steps > 0).then(|| m.decode_tok_s());
        println!(
            "| {} | {ttft:.1} | {} | {:.1} | {:.1} | {:.2} | {} | {} | {ppl:.3} | {} | {prune:.2} ({}) |",
            m.policy,
            cell(speedup, 2, "x"),
            computed * 100.0,
            m.flops_saved * 100.0,
            mib(m.kv_bytes as f64),
            cell(kv_ratio, 3, ""),
            cell(decode, 1, ""),
            cell(ppl_change, 2, "%"),
            cell(prune_share.map(|s| s * 100.0), 1, "%"),
        );
        rows.push(json!({
            "policy": m.policy,
            "ttft_ms": ttft,
            "ttft_ms_runs": m.ttft_ms_runs,
            "ttft_speedup_vs_none": speedup,
            "tokens_computed": m.tokens_computed,
            "tokens_computed_fraction": computed,
            "flops_saved": m.flops_saved,
            "kv_bytes": m.kv_bytes,
            "kv_mib": mib(m.kv_bytes as f64),
            "kv_bytes_unpruned": m.kv_bytes_unpruned,
            "kv_ratio_vs_none": kv_ratio,
            "decode_steps": m.decode_steps,
            "decode_s": m.decode_s,
            "decode_tok_s": decode,
            "ppl": ppl,
            "ppl_change_pct_vs_none": ppl_change,
            "nll_mean": ppl.ln(),
            "prune_ms": prune,
            "prune_ms_runs": m.prune_ms_runs,
            "prune_fraction_of_ttft": prune_share,
        }));
    }
    println!("\nTTFT: median of {} runs of Session::new + prefill + argmax, after one unpruned warm-up.", args.repeats);
    println!(
        "ppl over the {c} continuation tokens, decoded one by one over each policy's cache after its last prefill."
    );

    if let Some(path) = &args.json {
        let value = json!({
            "command": command_line(),
            "model": model_path.display().to_string(),
            "text": text_path.display().to_string(),
            "threads": threads,
            "context": n,
            "continuation": c,
            "repeats": args.repeats,
            "n_layers": n_layers,
            "policies": rows,
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
