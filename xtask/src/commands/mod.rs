pub mod ci;
pub mod cuda;
pub mod fetch;
pub mod fuzz;
pub mod libtorch;
pub mod llamacpp;
pub mod onnxruntime;
pub mod parity;

use std::process::Command;

use anyhow::{Context, bail};

/// Runs `cargo ARGS` from the workspace root, failing if it fails.
pub fn cargo(args: &[&str]) -> anyhow::Result<()> {
    cargo_with(args, &[])
}

/// [`cargo`] with extra environment variables.
pub fn cargo_with(args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut command = Command::new(&cargo);
    // Builds that include the tch backend find libtorch where setup-libtorch put it.
    let libtorch = libtorch::dir();
    if libtorch.join("build-version").is_file() && std::env::var_os("LIBTORCH").is_none() {
        command.env("LIBTORCH", &libtorch);
    }
    command.envs(env.iter().copied()).args(args).current_dir(workspace_root());
    let first = args.first().copied().unwrap_or("");
    run_step(&format!("cargo {}", args.join(" ")), &format!("cargo {first}"), &mut command)
}

/// Runs `command` as one step of a task: `==> what` before, `<== short (N s)` after, and
/// an error naming `what` if it fails.
pub fn run_step(what: &str, short: &str, command: &mut Command) -> anyhow::Result<()> {
    eprintln!("\n==> {what}");
    let started = std::time::Instant::now();
    let status = command.status().with_context(|| format!("could not start `{what}`"))?;
    eprintln!("<== {short} ({:.0} s)", started.elapsed().as_secs_f64());
    if !status.success() {
        bail!("`{what}` failed ({status})");
    }
    Ok(())
}

/// Cargo's target directory: `$CARGO_TARGET_DIR`, else `target/` in the workspace.
pub fn target_dir() -> std::path::PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR").filter(|d| !d.is_empty()) {
        Some(dir) => workspace_root().join(dir),
        None => workspace_root().join("target"),
    }
}

/// The workspace root (the parent of this crate's directory).
pub fn workspace_root() -> std::path::PathBuf {
    let here = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    here.parent().unwrap_or(here).to_path_buf()
}

/// Removes a folder and what it holds, if it is there.
pub fn remove_if_there(path: &std::path::Path) -> anyhow::Result<()> {
    match std::fs::remove_dir_all(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", path.display()))
        }
        _ => Ok(()),
    }
}
