pub mod chat;
pub mod generate;
pub mod inspect;
pub mod perplexity;

use anyhow::{Context, Result};
use sieve_core::Policy;
use sieve_core::policy::PolicyFile;
use sieve_engine::Model;

use crate::args::{ModelArgs, PolicyArgs, SamplingArgs};

/// `sieve fetch`.
pub fn fetch() -> Result<()> {
    let path = sieve_engine::fetch::fetch_default_model(&mut |m| eprintln!("{m}"))?;
    println!("{}", path.display());
    Ok(())
}

/// Loads `--model`, or the default model from the cache.
pub fn load_model(args: &ModelArgs) -> Result<Model> {
    let path = match &args.model {
        Some(p) => p.clone(),
        None => sieve_engine::fetch::require_default_model()?,
    };
    Model::load(&path).with_context(|| format!("loading model {}", path.display()))
}

/// The policy from `--policy`, with `--keep` and `--scorer` applied.
pub fn load_policy(args: &PolicyArgs) -> Result<Policy> {
    let mut file = match &args.policy {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading policy {}", path.display()))?;
            let mut f = PolicyFile::from_toml(&text).with_context(|| format!("policy {}", path.display()))?;
            if f.name.is_none() {
                f.name = path.file_stem().map(|s| s.to_string_lossy().into_owned());
            }
            f
        }
        None => PolicyFile { name: Some("none".into()), ..PolicyFile::default() },
    };
    if let Some(keep) = args.keep {
        file.override_keep(keep);
    }
    if let Some(scorer) = &args.scorer {
        file.override_scorer(scorer)?;
    }
    let policy = file.validate().context("invalid policy")?;
    Ok(policy)
}

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
