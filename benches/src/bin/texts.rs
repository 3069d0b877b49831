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

/// Perplexity change against kept KV, one colour per text and one mark per policy.
fn svg(rows: &[Row]) -> String {
    let (w, h, m) = (640.0, 400.0, 60.0);
    let max_change = rows.iter().map(|r| 100.0 * (r.ppl / r.base_ppl - 1.0)).fold(1.0f64, f64::max) * 1.1;
    let x = |v: f64| m + v * (w - 2.0 * m);
    let y = |v: f64| h - m - v / max_change * (h - 2.0 * m);
    let colours = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"];
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"{w}\" height=\"{h}\" fill=\"white\"/>\n\
         <line x1=\"{m}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>\n<line x1=\"{m}\" y1=\"{m}\" x2=\"{m}\" y2=\"{}\" stroke=\"black\"/>\n\
         <text x=\"{}\" y=\"{}\" text-anchor=\"middle\">fraction of the KV cache kept</text>\n\
         <text x=\"14\" y=\"{}\" transform=\"rotate(-90 14 {})\" text-anchor=\"middle\">perplexity change (%)</text>\n",
        h - m,
        w - m,
        h - m,
        h - m,
        w / 2.0,
        h - 15.0,
        h / 2.0,
        h / 2.0
    );
    for t in 0..=4 {
        let v = f64::from(t) / 4.0;
        let _ = writeln!(s, "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{v:.2}</text>", x(v), h - m + 16.0);
        let c = max_change * v;
        let _ = writeln!(s, "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{c:.0}</text>", m - 6.0, y(c) + 4.0);
    }
    let texts: Vec<&str> = rows.iter().map(|r| r.text).fold(Vec::new(), |mut v, t| {
        if !v.contains(&t) {
            v.push(t);
        }
        v
    });
    let policies: Vec<&str> = rows.iter().map(|r| r.policy.as_str()).fold(Vec::new(), |mut v, p| {
        if !v.contains(&p) {
            v.push(p);
        }
        v
    });
    for r in rows {
        let c = colours[texts.iter().position(|t| *t == r.text).unwrap_or(0) % colours.len()];
        let (cx, cy) = (x(r.kv_kept), y(100.0 * (r.ppl / r.base_ppl - 1.0)));
        let _ = if policies.first() == Some(&r.policy.as_str()) {
            writeln!(s, "<circle cx=\"{cx:.1}\" cy=\"{cy:.1}\" r=\"6\" fill=\"{c}\"/>")
        } else {
            writeln!(s, "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"11\" height=\"11\" fill=\"{c}\"/>", cx - 5.5, cy - 5.5)
        };
    }
    for (i, t) in texts.iter().enumerate() {
        let _ = writeln!(
            s,
            "<text x=\"{}\" y=\"{}\" fill=\"{}\">{t}</text>",
            w - m - 90.0,
            m + 16.0 * i as f64,
            colours[i % colours.len()]
        );
    }
    for (i, p) in policies.iter().enumerate() {
        let mark = if i == 0 { "circle" } else { "square" };
        let _ = writeln!(s, "<text x=\"{}\" y=\"{}\">{mark}: {p}</text>", m + 10.0, m + 16.0 * i as f64);
    }
    s.push_str("</svg>\n");
    s
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
    std::fs::write(a.out.join("texts.svg"), svg(&rows))?;
    print!("{md}");
    Ok(())
}
