//! `cargo xtask ci`: the checks CI runs, cheapest first, stopping at the first failure.
//! It installs what the tests need first: the default model and libtorch (from PyPI).

use super::cargo;

pub fn run() -> anyhow::Result<()> {
    cargo(&["fmt", "--all", "--", "--check"])?;
    super::fetch::run()?;
    super::libtorch::setup()?;
    cargo(&["clippy", "--workspace", "--all-targets", "--locked", "--", "-D", "warnings"])?;
    cargo(&["clippy", "-p", "sieve-cli", "--all-targets", "--features", "tch", "--locked", "--", "-D", "warnings"])?;
    cargo(&["test", "--workspace", "--locked", "--release"])?;
    // The `sieve` binary with the libtorch backend compiled in.
    cargo(&["test", "-p", "sieve-cli", "--features", "tch", "--locked", "--release", "--", "tch"])?;
    eprintln!("\nxtask ci: all checks passed");
    Ok(())
}
