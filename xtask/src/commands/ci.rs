//! `cargo xtask ci`: the checks CI runs, cheapest first, stopping at the first failure.

use super::cargo;

pub fn run() -> anyhow::Result<()> {
    cargo(&["fmt", "--all", "--", "--check"])?;
    cargo(&["clippy", "--workspace", "--all-targets", "--locked", "--", "-D", "warnings"])?;
    super::fetch::run()?;
    cargo(&["test", "--workspace", "--locked", "--release"])?;
    eprintln!("\nxtask ci: all checks passed");
    Ok(())
}
