pub mod bench;
pub mod chat;
pub mod generate;
pub mod inspect;
pub mod passkey;
pub mod perplexity;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
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
    let policy = match &args.policy {
        Some(path) => file.validate().with_context(|| format!("policy {}", path.display()))?,
        None => file.validate().context("invalid policy")?,
    };
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

/// A policy named on a grid's command line: `none` (built in), the name of
/// `configs/<name>.toml` relative to the current directory, or a path to a .toml file;
/// `SPEC@K` is that policy with its kept fraction overridden to K, as `--keep K` does.
pub fn resolve_policy(spec: &str) -> Result<Policy> {
    let spec = spec.trim();
    if let Some((base, keep)) = spec.rsplit_once('@') {
        let keep: f64 = keep.parse().with_context(|| format!("policy `{spec}`: `{keep}` is not a fraction"))?;
        let mut policy = with_keep(&resolve_policy(base)?, keep).with_context(|| format!("policy `{spec}`"))?;
        policy.name = spec.to_string();
        return Ok(policy);
    }
    if spec == "none" {
        return Ok(Policy::none());
    }
    if spec.is_empty() {
        bail!("an empty policy name");
    }
    let path = if spec.ends_with(".toml") || spec.contains('/') {
        PathBuf::from(spec)
    } else {
        Path::new("configs").join(format!("{spec}.toml"))
    };
    if !path.is_file() {
        bail!(
            "policy `{spec}`: {} does not exist (policies are names of configs/<name>.toml in the current directory, \
             or paths to .toml files)",
            path.display()
        );
    }
    load_policy(&PolicyArgs { policy: Some(path), keep: None, scorer: None })
}

/// `policy` with its kept fraction overridden to `keep`, as `--keep` does; the name is kept.
pub fn with_keep(policy: &Policy, keep: f64) -> Result<Policy> {
    let mut file = policy.to_file();
    file.override_keep(keep);
    let mut out = file.validate()?;
    out.name = policy.name.clone();
    Ok(out)
}

/// A UTF-8 text file, with the file named in errors.
pub fn read_text(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    String::from_utf8(bytes)
        .map_err(|e| anyhow::anyhow!("{} is not valid UTF-8 (offset {})", path.display(), e.utf8_error().valid_up_to()))
}
