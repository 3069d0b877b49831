//! `sieve-parity`: the binary behind `cargo xtask parity`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use sieve_parity::{Options, report};
use sieve_runtime::BackendKind;

#[derive(Parser)]
#[command(name = "sieve-parity", about = "Cross-validate sieve's backends on a fixed suite")]
struct Args {
    /// Backends to compare, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "candle,tch,ort")]
    backends: Vec<BackendKind>,
    /// A GGUF file or HF model directory. Default: SmolLM2-135M-Instruct from the cache.
    #[arg(short, long)]
    model: Option<PathBuf>,
    /// How every backend holds the weight matrices: native, f32, f16 or bf16.
    #[arg(long, default_value = "native")]
    dtype: sieve_engine::Dtype,
    /// The passage's text. Default: `$SIEVE_DATA/wikitext-2/wiki.test.raw`, else
    /// `../shared/data/wikitext-2/wiki.test.raw`.
    #[arg(long)]
    text: Option<PathBuf>,
    /// The folder of policy presets.
    #[arg(long, default_value = "configs")]
    configs: PathBuf,
    /// Only prompts whose names contain one of these (chat, passage, passkey).
    #[arg(long, value_delimiter = ',')]
    prompts: Vec<String>,
    /// Only policies whose names contain one of these.
    #[arg(long, value_delimiter = ',')]
    policies: Vec<String>,
    /// Also write the report as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Test-only: add a small bias to one layer of this backend (parity must then fail).
    #[arg(long, hide = true)]
    perturb: Option<BackendKind>,
}

/// WikiText-2's test split, where the project's data lives.
fn default_text() -> PathBuf {
    sieve_eval::data::wikitext_test_split(std::path::Path::new("../shared/data"))
}

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<bool> {
    let a = Args::parse();
    let model = match a.model {
        Some(m) => m,
        None => sieve_fetch::model::cached()
            .ok_or_else(|| anyhow::anyhow!("the default model is missing; run `cargo xtask fetch-model`"))?,
    };
    let options = Options {
        backends: a.backends,
        model,
        dtype: a.dtype,
        text: a.text.unwrap_or_else(default_text),
        configs: a.configs,
        prompts: a.prompts,
        policies: a.policies,
        perturb: a.perturb,
    };
    let r = sieve_parity::run(&options, &mut |line| eprintln!("{line}"))?;
    println!("{}", report::table(&r));
    if let Some(path) = &a.json {
        std::fs::write(path, serde_json::to_string_pretty(&r)? + "\n")?;
        eprintln!("[parity] wrote {}", path.display());
    }
    for v in &r.violations {
        eprintln!("parity: {v}");
    }
    Ok(r.violations.is_empty())
}
