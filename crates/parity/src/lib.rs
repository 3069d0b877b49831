//! `sieve-parity`: runs one fixed suite (prompts × policies, see [`suite`]) on each of
//! sieve's backends and compares every pair (see [`compare`]) against the tolerances in
//! [`tolerances`]. `cargo xtask parity` installs what the backends need and runs the
//! `sieve-parity` binary.

pub mod compare;
pub mod perturb;
pub mod report;
pub mod suite;
pub mod tolerances;

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use sieve_backend::{Backend, DeviceSpec};
use sieve_engine::{Dtype, Model, Policy};
use sieve_runtime::{BackendKind, Runtime};

use crate::compare::{Comparison, Violation};
use crate::suite::{CaseRun, Prompt};

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Backends to compare (at least two).
    pub backends: Vec<BackendKind>,
    /// The model (GGUF file or HF directory).
    pub model: PathBuf,
    /// How every backend holds the weight matrices.
    pub dtype: Dtype,
    /// The passage's text (WikiText-2's test split).
    pub text: PathBuf,
    /// The folder of policy presets.
    pub configs: PathBuf,
    /// Only prompts whose names contain one of these (all when empty).
    pub prompts: Vec<String>,
    /// Only policies whose names contain one of these (all when empty).
    pub policies: Vec<String>,
    /// Test-only: the backend to bias (see [`perturb`]).
    pub perturb: Option<BackendKind>,
}

/// The result of a parity run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    pub model: String,
    pub backends: Vec<String>,
    pub perturbed: Option<String>,
    /// Per backend, every case it ran.
    pub runs: Vec<(String, Vec<CaseRun>)>,
    /// How the weights were held.
    pub dtype: String,
    /// Whether the weights were packed blocks (their own logits tolerance).
    pub packed: bool,
    /// The backends whose products round their input to 16 bits on f16 or bf16 matrices
    /// (their pairs have their own bounds when the weights have such matrices).
    pub half_products: Vec<String>,
    pub comparisons: Vec<Comparison>,
    pub violations: Vec<Violation>,
}

fn run_on<B: Backend>(b: &B, perturb: bool, prompts: &[Prompt], policies: &[Policy]) -> Result<Vec<CaseRun>> {
    if perturb { suite::run(&perturb::Perturbed(b), prompts, policies) } else { suite::run(b, prompts, policies) }
}

/// The backend's cases, and whether it rounds inputs to 16 bits for f16 and bf16 products.
fn run_backend(
    kind: BackendKind,
    o: &Options,
    prompts: &[Prompt],
    policies: &[Policy],
) -> Result<(Vec<CaseRun>, bool)> {
    let mut m = Model::load_with(&o.model, o.dtype)?;
    let weights = m.take_weights();
    let runtime = Runtime::load(kind, DeviceSpec::Cpu, &m.config, weights)?;
    let half = runtime.half_precision_products();
    Ok((run_on(&runtime, o.perturb == Some(kind), prompts, policies)?, half))
}

/// Runs the suite on every backend of `o` and compares every pair.
pub fn run(o: &Options, log: &mut dyn FnMut(&str)) -> Result<Report> {
    if o.backends.len() < 2 {
        bail!("parity needs at least two backends, got {:?}", o.backends);
    }
    let model = Model::load_with(&o.model, o.dtype)?;
    let text = std::fs::read_to_string(&o.text).with_context(|| format!("reading {}", o.text.display()))?;
    let keep = |name: &str, filters: &[String]| filters.is_empty() || filters.iter().any(|f| name.contains(f.as_str()));
    let prompts: Vec<Prompt> =
        suite::prompts(&model, &text)?.into_iter().filter(|p| keep(p.name, &o.prompts)).collect();
    let mut policies: Vec<Policy> =
        suite::policies(&o.configs)?.into_iter().filter(|p| keep(&p.name, &o.policies)).collect();
    // A preset written for a deeper model (prefill layers past the last) is left out.
    policies.retain(|p| match p.check_model(model.config.n_layers) {
        Ok(()) => true,
        Err(e) => {
            log(&format!("[parity] skipping {}: {e}", p.name));
            false
        }
    });
    if prompts.is_empty() || policies.is_empty() {
        bail!("the prompt and policy filters leave nothing to run");
    }
    let packed = model.weights.is_packed();
    let sixteen_bit = model.weights.tensors().any(|w| w.packed.as_ref().is_some_and(|p| p.dtype.is_half()));
    drop(model);
    let (mut runs, mut half_products) = (Vec::new(), Vec::new());
    for &name in &o.backends {
        let perturb = o.perturb == Some(name);
        log(&format!(
            "[parity] {name}{}: {} prompts x {} policies",
            if perturb { " (perturbed)" } else { "" },
            prompts.len(),
            policies.len()
        ));
        let (cases, half) = run_backend(name, o, &prompts, &policies).with_context(|| format!("backend {name}"))?;
        if half {
            half_products.push(name.to_string());
        }
        runs.push((name.to_string(), cases));
    }
    let (mut comparisons, mut violations) = (Vec::new(), Vec::new());
    for i in 0..runs.len() {
        for j in i + 1..runs.len() {
            let pair = compare::compare([&runs[i].0, &runs[j].0], &runs[i].1, &runs[j].1);
            let half = sixteen_bit && [&runs[i].0, &runs[j].0].iter().any(|n| half_products.contains(n));
            let bounds = tolerances::Bounds::of(packed, half);
            violations.extend(pair.iter().flat_map(|c| compare::violations(c, &bounds)));
            comparisons.extend(pair);
        }
    }
    Ok(Report {
        model: o.model.display().to_string(),
        backends: o.backends.iter().map(ToString::to_string).collect(),
        perturbed: o.perturb.map(|k| k.to_string()),
        runs,
        dtype: o.dtype.to_string(),
        packed,
        half_products,
        comparisons,
        violations,
    })
}
