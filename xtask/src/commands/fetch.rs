//! `cargo xtask fetch-model`: the default model into the cache, verified, idempotent.

pub fn run() -> anyhow::Result<()> {
    let path = sieve_fetch::model::fetch(&mut |msg| eprintln!("{msg}"))?;
    eprintln!("default model ready: {}", path.display());
    Ok(())
}
