//! `sieve device-check`: a backend on a device against candle's CPU kernels, on a
//! synthetic model with the default model's shapes ([`sieve_eval::device`]). Writes
//! `device-check.md` and `device-check.json` to `--out`, prints the markdown, and fails
//! when a conformance case or a comparison does.

use anyhow::{Context, Result, bail};
use sieve_backend::{DeviceSpec, ModelConfig, Weights};
use sieve_core::Policy;
use sieve_engine::Dtype;
use sieve_eval::device::{self, DeviceReport};
use sieve_runtime::{BackendKind, Runtime};

use crate::args::DeviceCheckArgs;

/// Decode steps after each comparison's prefill.
const CHECK_STEPS: usize = 16;

/// `weights` with their matrices as `dtype` asks.
fn in_dtype(weights: &Weights, dtype: Dtype) -> Weights {
    match dtype {
        Dtype::F16 => weights.clone().with_matrices_in(sieve_backend::GgmlType::F16),
        Dtype::BF16 => weights.clone().with_matrices_in(sieve_backend::GgmlType::BF16),
        Dtype::Native | Dtype::F32 => weights.clone(),
    }
}

/// `none` and every built-in preset (`configs/`), by name.
fn every_preset() -> Vec<String> {
    let names = sieve_core::preset::BUILTIN.iter().map(|(n, _)| *n).filter(|n| *n != "none");
    std::iter::once("none").chain(names).map(String::from).collect()
}

fn policies(names: &[String], layers: usize) -> Result<Vec<Policy>> {
    names
        .iter()
        .map(|name| {
            let policy = super::resolve_policy(name)?;
            policy.check_model(layers).with_context(|| format!("policy `{name}` does not fit the model"))?;
            Ok(policy)
        })
        .collect()
}

fn load(kind: BackendKind, device: DeviceSpec, config: &ModelConfig, weights: Weights) -> Result<Runtime> {
    Runtime::load(kind, device, config, weights).with_context(|| format!("--backend {kind} --device {device}"))
}

pub fn run(args: DeviceCheckArgs) -> Result<()> {
    if args.check_tokens < 2 || args.decode_tokens == 0 || args.dtypes.is_empty() {
        bail!("--check-tokens must be at least 2, --decode-tokens at least 1, and --dtypes must name one type");
    }
    let (kind, spec) = (args.backend, args.device);
    // Fails early, with one line, when the device is not there.
    let tiny = sieve_backend::synthetic::tiny_config();
    load(kind, spec, &tiny, sieve_backend::synthetic::weights(&tiny, 0, false))?;

    eprintln!("[device-check] conformance suite: {kind} on {spec}");
    let make = |c: &ModelConfig, w: Weights| {
        Runtime::load(kind, spec, c, w).unwrap_or_else(|e| panic!("{kind} on {spec} failed after it had opened: {e}"))
    };
    let conformance = device::conformance::<Runtime>(&make);

    let longest = args.lengths.iter().max().copied().unwrap_or(0).max(args.check_tokens);
    let (config, weights) = device::synthetic_model(longest + args.decode_tokens.max(CHECK_STEPS));
    let check_names = if args.check_policies.is_empty() { every_preset() } else { args.check_policies.clone() };
    let check_policies = policies(&check_names, config.n_layers)?;
    let speed_policies = policies(&args.policies, config.n_layers)?;
    let tokens = device::tokens(config.vocab, longest);

    let (mut agreement, mut speed) = (Vec::new(), Vec::new());
    for &dtype in &args.dtypes {
        let name = match dtype {
            Dtype::Native => "f32",
            d => d.name(),
        };
        let weights = in_dtype(&weights, dtype);
        let target = load(kind, spec, &config, weights.clone())?;
        let reference = load(BackendKind::Candle, DeviceSpec::Cpu, &config, weights)?;
        for policy in &check_policies {
            eprintln!("[device-check] {name} {}: {spec} against the CPU", policy.name);
            let a = device::agreement(&target, &reference, name, policy, &tokens[..args.check_tokens], CHECK_STEPS)
                .with_context(|| format!("comparing policy `{}` at {name}", policy.name))?;
            agreement.push(a);
        }
        drop(reference);
        let memory = || target.device_memory_in_use();
        for &length in &args.lengths {
            for policy in &speed_policies {
                eprintln!("[device-check] {name} {} at {length} tokens: timing", policy.name);
                let s = device::speed(&target, name, policy, &tokens[..length], args.decode_tokens, &memory)
                    .with_context(|| format!("timing policy `{}` at {length} tokens, {name}", policy.name))?;
                speed.push(s);
            }
        }
    }

    let report = DeviceReport {
        command: std::env::args().collect::<Vec<_>>().join(" "),
        backend: kind.to_string(),
        device: spec.to_string(),
        peak_tflops: args.peak_tflops,
        conformance,
        agreement,
        speed,
    };
    let md = report.markdown();
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    let json = serde_json::to_string_pretty(&report)?;
    for (file, text) in [("device-check.md", &md), ("device-check.json", &json)] {
        let path = args.out.join(file);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    println!("{md}");
    if !report.passed() {
        let cases = report.conformance.iter().filter(|c| !c.passed).count();
        let comparisons = report.agreement.iter().filter(|a| !a.passed).count();
        bail!(
            "the device check failed: {cases} conformance cases and {comparisons} comparisons with the CPU (see {})",
            args.out.join("device-check.md").display()
        );
    }
    Ok(())
}
