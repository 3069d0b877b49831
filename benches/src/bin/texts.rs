//! Do the budgets follow the input? Runs policies on texts of different kinds — WikiText-2
//! prose, this repository's Rust source, a highly repetitive text and random digits — and
//! reports, per text, the fraction of the prompt each policy computed and kept, and its
//! compressed-context perplexity against the unpruned model on the same windows. A
//! fixed-fraction policy keeps the same share of every text; a mass-based one (`adaptive`)
//! should keep more where attention is spread (hard text) and less where it is
//! concentrated.
//!
//! `cargo run --release -p sieve-benches --bin texts -- --out docs/results` writes
//! `texts.md` and `texts.svg` there.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Parser;
use sieve_backend::DeviceSpec;
use sieve_core::rng::SplitMix64;
use sieve_engine::{Model, Policy};
use sieve_eval::perplexity::{PerplexityReport, compressed_perplexity};
use sieve_runtime::{BackendKind, Runtime};

#[derive(Parser)]
struct Args {
    /// Policies (preset names in `configs/` or paths), each beside the unpruned model.
    #[arg(long, value_delimiter = ',', default_value = "adaptive,lazy-prefill")]
    policies: Vec<String>,
    /// Context tokens of each window.
    #[arg(long, default_value_t = 2048)]
    context: usize,
    /// Tokens scored after each context.
    #[arg(long, default_value_t = 128)]
    continuation: usize,
    /// Windows per text.
    #[arg(long, default_value_t = 2)]
    windows: usize,
    /// Folder for `texts.md` and `texts.svg`.
    #[arg(long, default_value = "bench-results")]
    out: PathBuf,
    /// The model (default: the default model from the cache).
    #[arg(long)]
    model: Option<PathBuf>,
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Every `.rs` file under `dir`, sorted, concatenated.
fn rust_source(dir: &Path, out: &mut String) -> Result<()> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)?.map(|e| e.map(|e| e.path())).collect::<Result<_, _>>()?;
    entries.sort();
    for path in entries {
        if path.is_dir() {
            rust_source(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push_str(&std::fs::read_to_string(&path)?);
        }
    }
    Ok(())
}

/// The texts: (name, what it is, text).
fn texts() -> Result<Vec<(&'static str, &'static str, String)>> {
    let wiki_path = sieve_eval::data::wikitext_test_split(&workspace().join("../shared/data"));
    let wiki =
        std::fs::read_to_string(&wiki_path).with_context(|| format!("{} (set SIEVE_DATA)", wiki_path.display()))?;
    let mut code = String::new();
    rust_source(&workspace().join("crates"), &mut code)?;
    let repetitive = "The cat sat on the mat and looked at the door. ".repeat(2000);
    let mut rng = SplitMix64::new(7);
    let digits: String = (0..40_000)
        .map(|i| {
            let d = char::from(b'0' + (rng.next_u64() % 10) as u8);
            if i % 5 == 4 { ' ' } else { d }
        })
        .collect();
    Ok(vec![
        ("prose", "WikiText-2 test split", wiki),
        ("code", "this repository's Rust source", code),
        ("repetitive", "one sentence repeated", repetitive),
        ("digits", "random digits in groups of four", digits),
    ])
}

struct Row {
    text: &'static str,
    policy: String,
    kv_kept: f64,
    ppl: f64,
    base_ppl: f64,
}

fn kept(r: &PerplexityReport) -> (f64, f64) {
    let n = r.windows.len().max(1) as f64;
    let computed = r.windows.iter().map(|w| w.computed).sum::<f64>() / n;
    let kv = r.windows.iter().map(|w| w.kv_bytes as f64 / w.kv_bytes_unpruned.max(1) as f64).sum::<f64>() / n;
    (computed, kv)
}

/// Perplexity change against the kept KV fraction, one series per text and policy.
fn plot(rows: &[Row]) -> Result<String> {
    let mut series: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
    for r in rows {
        let label = format!("{} / {}", r.text, r.policy);
        let at = (r.kv_kept, 100.0 * (r.ppl / r.base_ppl - 1.0));
        match series.iter_mut().find(|(l, _)| *l == label) {
            Some((_, points)) => points.push(at),
            None => series.push((label, vec![at])),
        }
    }
    Ok(sieve_eval::plot::scatter(
        "Kept KV and perplexity by kind of text",
        "fraction of the KV cache kept",
        "perplexity change (%)",
        &series,
    )?)
}

fn main() -> Result<()> {
    let a = Args::parse();
    let path = match &a.model {
        Some(p) => p.clone(),
        None => sieve_fetch::model::fetch(&mut |line| eprintln!("{line}"))?,
    };
    let mut model = Model::load(&path).with_context(|| format!("loading {}", path.display()))?;
    let configs = workspace().join("configs");
    let policies: Vec<Policy> =
        a.policies.iter().map(|p| sieve_core::preset::resolve(p, &configs)).collect::<Result<_, _>>()?;
    let weights = model.take_weights();
    let runtime = Runtime::load(BackendKind::Candle, DeviceSpec::Cpu, &model.config, weights)?;
    let need = a.windows * (a.context + a.continuation);
    let mut rows = Vec::new();
    let mut md = format!(
        "Kept fractions and perplexity by kind of text: {} windows of {} context + {} scored tokens each, \
         compressed-context protocol, candle, the default model.\n\n\
         | text | what | policy | prompt token-layers computed | KV kept | ppl unpruned | ppl | change |\n\
         |---|---|---|---:|---:|---:|---:|---:|\n",
        a.windows, a.context, a.continuation
    );
    for (name, what, text) in texts()? {
        let tokens = model.tokenizer.encode_prefix(&text, need)?;
        anyhow::ensure!(tokens.len() == need, "{name}: only {} tokens", tokens.len());
        let base = compressed_perplexity(&runtime, &Policy::none(), &tokens, a.context, a.continuation, a.windows)?;
        for policy in &policies {
            let r = compressed_perplexity(&runtime, policy, &tokens, a.context, a.continuation, a.windows)?;
            let (computed, kv_kept) = kept(&r);
            let change = 100.0 * (r.perplexity / base.perplexity - 1.0);
            let _ = writeln!(
                md,
                "| {name} | {what} | {} | {:.1}% | {:.1}% | {:.3} | {:.3} | {change:+.1}% |",
                policy.name,
                100.0 * computed,
                100.0 * kv_kept,
                base.perplexity,
                r.perplexity
            );
            eprintln!(
                "[texts] {name} {}: computed {:.1}%, KV {:.1}%, ppl {change:+.1}%",
                policy.name,
                100.0 * computed,
                100.0 * kv_kept
            );
            rows.push(Row {
                text: name,
                policy: policy.name.clone(),
                kv_kept,
                ppl: r.perplexity,
                base_ppl: base.perplexity,
            });
        }
    }
    std::fs::create_dir_all(&a.out)?;
    std::fs::write(a.out.join("texts.md"), &md)?;
    std::fs::write(a.out.join("texts.svg"), plot(&rows)?)?;
    print!("{md}");
    Ok(())
}
