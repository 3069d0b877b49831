//! `cargo xtask fetch-model`: every model sieve fetches by name (the default model and
//! Gemma 3 270M, which the tests read) into the cache, verified, idempotent.

pub fn run() -> anyhow::Result<()> {
    for known in sieve_fetch::model::KNOWN {
        let path = known.fetch(&mut |msg| eprintln!("{msg}"))?;
        eprintln!("{} ready: {}", known.name, path.display());
    }
    Ok(())
}
