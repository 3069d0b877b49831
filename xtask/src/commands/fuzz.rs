//! `cargo xtask fuzz [--seconds N] [--target NAME]...`: runs the fuzz targets in `fuzz/`
//! with cargo-fuzz (libFuzzer), one after the other, for N seconds each.
//!
//! cargo-fuzz is installed from crates.io when missing. The targets build on the stable
//! toolchain without a sanitizer (`--sanitizer none`: AddressSanitizer needs nightly);
//! Rust's own checks, debug assertions and overflow checks included, still turn memory
//! and arithmetic bugs into crashes. Seeds are written into `fuzz/corpus/<target>` first:
//! a tiny valid GGUF model for `gguf`, the presets of `configs/` for `policy`. A crash
//! stops the run with the input saved under `fuzz/artifacts/<target>/`.

use std::fs;
use std::process::Command;

use anyhow::{Context, Result, bail};

use super::workspace_root;

/// The fuzz targets, in the order they run.
pub const TARGETS: &[&str] = &["gguf", "policy"];

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

/// Installs cargo-fuzz unless `cargo fuzz` already runs.
fn ensure_cargo_fuzz() -> Result<()> {
    let present = Command::new(cargo()).args(["fuzz", "--version"]).output().is_ok_and(|o| o.status.success());
    if present {
        return Ok(());
    }
    eprintln!("==> cargo install cargo-fuzz --locked");
    let status = Command::new(cargo())
        .args(["install", "cargo-fuzz", "--locked"])
        .status()
        .context("could not start `cargo install`")?;
    if !status.success() {
        bail!("`cargo install cargo-fuzz` failed ({status})");
    }
    Ok(())
}

/// Writes the seed inputs of `target` into its corpus directory.
fn seed(target: &str) -> Result<()> {
    let root = workspace_root();
    let dir = root.join("fuzz").join("corpus").join(target);
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    match target {
        "gguf" => {
            // Written by sieve-engine's `tiny_gguf_fuzz_seed_is_current` test, which keeps
            // it equal to the synthetic model of `sieve_engine::testing`.
            let seed = root.join("fuzz").join("seeds").join("tiny-llama.gguf.bin");
            fs::copy(&seed, dir.join("tiny-llama.gguf")).with_context(|| format!("copying {}", seed.display()))?;
        }
        "policy" => {
            let configs = root.join("configs");
            for entry in fs::read_dir(&configs).with_context(|| format!("reading {}", configs.display()))? {
                let path = entry?.path();
                if let Some(name) = path.file_name().filter(|_| path.extension().is_some_and(|e| e == "toml")) {
                    fs::copy(&path, dir.join(name)).with_context(|| format!("copying {}", path.display()))?;
                }
            }
        }
        _ => {}
    }
    Ok(())
}

pub fn run(seconds: u64, targets: &[String]) -> Result<()> {
    let targets: Vec<&str> =
        if targets.is_empty() { TARGETS.to_vec() } else { targets.iter().map(String::as_str).collect() };
    if let Some(unknown) = targets.iter().find(|t| !TARGETS.contains(t)) {
        bail!("unknown fuzz target `{unknown}` (the targets are {})", TARGETS.join(", "));
    }
    ensure_cargo_fuzz()?;
    for target in targets {
        seed(target)?;
        let max_time = format!("-max_total_time={seconds}");
        let mut args = vec![
            "fuzz",
            "run",
            "--sanitizer",
            "none",
            target,
            "--",
            max_time.as_str(),
            // An input that takes this long counts as a hang.
            "-timeout=10",
            "-rss_limit_mb=2048",
            "-print_final_stats=1",
        ];
        if target == "gguf" {
            // Mutate whole models from the start: libFuzzer otherwise caps inputs at a few
            // hundred bytes at first, and cut models never get past the header check.
            args.extend(["-max_len=16384", "-len_control=0"]);
        }
        eprintln!("\n==> cargo {}", args.join(" "));
        let status = Command::new(cargo())
            .args(args)
            .current_dir(workspace_root())
            .status()
            .context("could not start `cargo fuzz`")?;
        if !status.success() {
            bail!("fuzz target `{target}` failed ({status}); the input is under fuzz/artifacts/{target}/");
        }
    }
    eprintln!("\nxtask fuzz: no crash in {seconds} s per target");
    Ok(())
}
