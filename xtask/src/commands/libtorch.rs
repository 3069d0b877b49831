//! `cargo xtask setup-libtorch`: libtorch 2.13.0 (CPU) assembled from PyPI wheels into the
//! cache, idempotently, for the `tch` backend.
//!
//! The torch wheel carries libtorch; its `libtorch.so` needs the CUDA library, so it is
//! replaced by an empty stub that links the CPU library, and the two CUDA runtime libraries
//! that `libtorch_cpu.so` loads come from their own wheels. The result works without a GPU.

use std::fs;
use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result, bail};

use sieve_fetch::pypi::{download, extract, find_wheel};

/// The libtorch version tch 0.26 expects.
pub const VERSION: &str = "2.13.0";
const WHEELS: &[&str] = &["torch==2.13.0", "nvidia-cuda-runtime==13.0.96", "nvidia-cuda-cupti==13.0.85"];

/// Where libtorch goes: `<sieve cache>/libtorch-2.13.0`.
pub fn dir() -> PathBuf {
    sieve_fetch::cache_dir().join(format!("libtorch-{VERSION}"))
}

/// Assembles libtorch unless a complete copy is there; returns its directory.
pub fn setup() -> Result<PathBuf> {
    let target = dir();
    let marker = target.join("build-version");
    if fs::read_to_string(&marker).is_ok_and(|v| v.trim() == VERSION) && target.join("lib/libtorch_cpu.so").is_file() {
        eprintln!("libtorch {VERSION} already there: {}", target.display());
        return Ok(target);
    }
    let wheels = download(WHEELS)?;
    let staging = target.with_extension("partial");
    let _ = fs::remove_dir_all(&staging);
    fs::create_dir_all(staging.join("lib"))?;
    let keep = ["lib/libtorch_cpu.so", "lib/libc10.so", "lib/libgomp.so.1"];
    let n = extract(&find_wheel(&wheels, "torch-2.13.0")?, &staging, &|name| {
        let rel = name.strip_prefix("torch/")?;
        (rel.starts_with("include/") || keep.contains(&rel)).then(|| rel.to_string())
    })?;
    eprintln!("extracted {n} files of libtorch");
    for (prefix, lib) in [("nvidia_cuda_runtime-", "libcudart.so.13"), ("nvidia_cuda_cupti-", "libcupti.so.13")] {
        let found = extract(&find_wheel(&wheels, prefix)?, &staging.join("lib"), &|name| {
            name.ends_with(&format!("/lib/{lib}")).then(|| lib.to_string())
        })?;
        if found != 1 {
            bail!("{lib} not found in the {prefix} wheel");
        }
    }
    // libtorch.so from the wheel needs libtorch_cuda.so: an empty stub linking the CPU
    // library stands in for it.
    let stub_src = staging.join("stub.c");
    fs::write(&stub_src, "")?;
    let lib = staging.join("lib");
    let status = Command::new("cc")
        .args(["-shared", "-fPIC", "-o"])
        .arg(lib.join("libtorch.so"))
        .arg(&stub_src)
        .args(["-Wl,-soname,libtorch.so", "-Wl,--no-as-needed"])
        .arg(format!("-L{}", lib.display()))
        .args(["-ltorch_cpu", "-lc10", "-Wl,-rpath,$ORIGIN"])
        .status()
        .context("running cc for the libtorch stub")?;
    if !status.success() {
        bail!("building the libtorch stub failed ({status})");
    }
    fs::remove_file(&stub_src)?;
    fs::write(staging.join("build-version"), format!("{VERSION}\n"))?;
    let _ = fs::remove_dir_all(&target);
    fs::rename(&staging, &target).with_context(|| format!("moving libtorch to {}", target.display()))?;
    eprintln!("libtorch {VERSION} ready: {}", target.display());
    Ok(target)
}

pub fn run() -> Result<()> {
    let dir = setup()?;
    println!("LIBTORCH={}", dir.display());
    Ok(())
}

/// `cargo xtask build-tch`: libtorch, then `target/release/sieve-tch` (the CLI with the
/// `tch` feature, an rpath to the cached libtorch) beside the default `target/release/sieve`,
/// which hands `--backend tch` to it, and `target/release/sieve-parity-tch`, the parity
/// tool with all three backends, which `cargo xtask ci` runs.
///
/// The binaries are built as `cargo test --workspace` builds them (with the tests that
/// need them, not run): the same features for every dependency, so that the workspace's
/// tests reuse all of it instead of compiling most crates a second time under other
/// features.
pub fn build() -> Result<()> {
    setup()?;
    // One build gives `sieve` and `sieve-parity` with libtorch (the tests `cli` and
    // `perturbed` need their packages' binaries); the second, without, only what the
    // feature changes.
    let tests = ["test", "--release", "--locked", "--workspace", "--no-run", "--test", "cli", "--test", "perturbed"];
    super::cargo(&[&tests[..], &["--features", "sieve-cli/tch,sieve-parity/tch"]].concat())?;
    let release = super::target_dir().join("release");
    keep_copy(&release.join("sieve"), &release.join("sieve-tch"))?;
    keep_copy(&release.join("sieve-parity"), &parity_bin())?;
    super::cargo(&tests)?;
    eprintln!(
        "built {} and {} (libtorch) beside {}; `sieve --backend tch` runs the first",
        release.join("sieve-tch").display(),
        parity_bin().display(),
        release.join("sieve").display()
    );
    Ok(())
}

/// `sieve-parity` with the tch backend, written by [`build`].
pub fn parity_bin() -> PathBuf {
    super::target_dir().join("release").join("sieve-parity-tch")
}

/// Copies `built` to `kept` through a temporary name, so that a running copy is never
/// half-written.
fn keep_copy(built: &std::path::Path, kept: &std::path::Path) -> Result<()> {
    let partial = kept.with_extension("partial");
    fs::copy(built, &partial).with_context(|| format!("copying {} to {}", built.display(), partial.display()))?;
    fs::rename(&partial, kept)?;
    Ok(())
}
