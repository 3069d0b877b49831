//! `sieve bench`: the bench grid of `sieve-eval` from the command line. Writes
//! `results.json`, `results.md`, `quality.svg` and `speedup.svg` to `--out` and prints the
//! table.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use sieve_engine::stats::peak_rss_bytes;
use sieve_eval::bench::{self, BenchOptions, GridEntry, Results};

use crate::args::BenchArgs;

/// Every (policy, keep) of the grid; `none` is the baseline and runs anyway.
fn grid(args: &BenchArgs) -> Result<Vec<GridEntry>> {
    if let Some(k) = args.keeps.iter().find(|k| !(**k > 0.0 && **k <= 1.0)) {
        bail!("--keeps: {k} is outside (0, 1]");
    }
    if args.keeps.is_empty() || args.policies.is_empty() {
        bail!("--keeps and --policies must each give at least one value");
    }
    let mut grid = Vec::new();
    for spec in &args.policies {
        let base = super::resolve_policy(spec)?;
        if base.is_none() {
            continue;
        }
        for &keep in &args.keeps {
            let policy = sieve_core::preset::with_keep(&base, keep)
                .with_context(|| format!("policy `{}` with keep {keep}", base.name))?;
            grid.push(GridEntry { name: base.name.clone(), keep, policy });
        }
    }
    Ok(grid)
}

pub fn run(args: BenchArgs) -> Result<()> {
    let options = BenchOptions {
        lengths: args.lengths.clone(),
        continuation: args.continuation,
        ppl_windows: args.ppl_windows,
        decode_tokens: args.decode_tokens,
        repeats: args.repeats,
    };
    options.validate().context("--lengths, --continuation, --ppl-windows, --decode-tokens, --repeats")?;
    let grid = grid(&args)?;
    let text_path =
        args.file.clone().unwrap_or_else(|| sieve_eval::data::wikitext_test_split(Path::new("../shared/data")));
    let text_path = std::fs::canonicalize(&text_path).unwrap_or(text_path);
    let text = super::read_text(&text_path).context("reading the benchmark text (set SIEVE_DATA or pass --file)")?;
    let mut model = super::load_model(&args.runtime.model)?;
    for entry in &grid {
        let name = &entry.policy.name;
        entry
            .policy
            .check_model(model.config.n_layers)
            .with_context(|| format!("policy `{name}` does not fit the model"))?;
    }
    if options.window_tokens() > model.config.context {
        bail!("--lengths plus the continuation exceed the model's context of {} tokens", model.config.context);
    }
    let tokens = sieve_eval::data::first_tokens(&model.tokenizer, &text, options.tokens_needed())
        .with_context(|| format!("tokenizing {}", text_path.display()))?;
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    let model_path = model.path.display().to_string();
    let runtime = super::load_runtime(&args.runtime, &mut model)?;
    let started = Instant::now();
    let points =
        bench::run_grid(&runtime, &model.tokenizer, &grid, &tokens, &options, &mut |line| eprintln!("[bench {line}]"))?;
    let results = Results {
        command: std::env::args().collect::<Vec<_>>().join(" "),
        model: model_path,
        backend: args.runtime.backend.to_string(),
        text: text_path.display().to_string(),
        continuation: args.continuation,
        ppl_windows: args.ppl_windows,
        decode_tokens: args.decode_tokens,
        repeats: args.repeats,
        peak_rss_bytes: peak_rss_bytes(),
        elapsed_s: started.elapsed().as_secs_f64(),
        points,
    };
    let md = bench::write_outputs(&args.out, &results, &mut |line| eprintln!("[bench] {line}"))?;
    println!("{md}");
    Ok(())
}
