//! `sieve serve`.

use std::io::Write;

use anyhow::{Context, Result, bail};
use sieve_runtime::Runtime;
use sieve_server::{EngineConfig, ServeOptions};

use crate::args::ServeArgs;

/// The id a model is served under: `--model-id`, else the name it was fetched by, else its
/// file's (or folder's) stem.
fn model_id(args: &ServeArgs) -> String {
    if let Some(id) = &args.model_id {
        return id.clone();
    }
    match &args.runtime.model.model {
        None => sieve_fetch::model::SMOLLM2.name.to_string(),
        Some(p) if !p.exists() => p.display().to_string(),
        Some(p) => p.file_stem().map_or_else(|| p.display().to_string(), |s| s.to_string_lossy().into_owned()),
    }
}

pub fn run(args: ServeArgs) -> Result<()> {
    if !(1..=64).contains(&args.max_batch) {
        bail!("--max-batch {} is out of range: 1 to 64 sequences", args.max_batch);
    }
    if args.max_queue == 0 {
        bail!("--max-queue must be at least 1");
    }
    if args.max_tokens == 0 {
        bail!("--max-tokens must be at least 1");
    }
    let presets = match &args.presets {
        Some(dir) if !dir.is_dir() => bail!("--presets {}: no such folder", dir.display()),
        Some(dir) => dir.clone(),
        None => std::path::PathBuf::from("configs"),
    };
    let policy = super::load_policy(&args.policy)?;
    let mut model = super::load_model(&args.runtime.model)?;
    policy.check_model(model.config.n_layers).context("--policy")?;
    super::limit_context(&args.runtime, &mut model)?;
    let weights = model.take_weights();
    let (kind, device, config) = (args.runtime.backend, args.runtime.device, model.config.clone());
    let options = ServeOptions {
        host: args.host.clone(),
        port: args.port,
        model_id: model_id(&args),
        policy,
        presets,
        default_max_tokens: args.max_tokens,
        max_queue: args.max_queue,
        engine: EngineConfig {
            max_batch: args.max_batch,
            prefix_cache_bytes: args.prefix_cache_mib << 20,
            prefix_min_tokens: args.prefix_min_tokens,
        },
    };
    let id = options.model_id.clone();
    let load = move || {
        Runtime::load(kind, device, &config, weights).map_err(|e| format!("--backend {kind} --device {device}: {e}"))
    };
    sieve_server::serve(options, model, load, |addr| {
        println!("sieve: serving {id} on http://{addr} (OpenAI API under /v1; /health, /metrics)");
        let _ = std::io::stdout().flush();
    })?;
    eprintln!("sieve: stopped");
    Ok(())
}
