//! `--backend tch` in a `sieve` built without libtorch: the command runs in `sieve-tch`, the
//! same CLI built with the `tch` feature (`cargo xtask build-tch` puts it beside `sieve`).
//!
//! A binary linked against libtorch cannot start at all when libtorch is missing: the
//! dynamic loader refuses it before `main`. Keeping libtorch out of `sieve` itself means
//! every other command works regardless, and `--backend tch` first checks that `sieve-tch`
//! starts, turning the loader's refusal into one clear error line.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result, bail};

/// The file name of the tch-enabled CLI.
pub const BINARY: &str = "sieve-tch";

/// `sieve-tch` beside the running binary (`$SIEVE_TCH_BIN` overrides).
fn sibling() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("SIEVE_TCH_BIN").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe().context("locating the sieve binary")?;
    Ok(exe.with_file_name(BINARY))
}

/// Runs this command line in `sieve-tch` and returns its exit status, or a clear error when
/// it is not built or cannot start because libtorch cannot be loaded.
pub fn delegate(args: Vec<OsString>) -> Result<i32> {
    let bin = sibling()?;
    if !bin.is_file() {
        bail!(
            "backend `tch` is not compiled into this binary and {} does not exist; build it with `cargo xtask build-tch`",
            bin.display()
        );
    }
    let probe = Command::new(&bin).arg("--version").output().with_context(|| format!("starting {}", bin.display()))?;
    if !probe.status.success() {
        let stderr = String::from_utf8_lossy(&probe.stderr);
        let reason = stderr.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or("no message");
        if reason.contains("error while loading shared libraries") {
            bail!(
                "backend `tch`: libtorch cannot be loaded ({reason}); install it with `cargo xtask setup-libtorch`, \
                 then rebuild with `cargo xtask build-tch`"
            );
        }
        bail!("backend `tch`: {} does not start ({}): {reason}", bin.display(), probe.status);
    }
    let status = Command::new(&bin).args(args).status().with_context(|| format!("running {}", bin.display()))?;
    Ok(status.code().unwrap_or(1))
}
