//! Policies by name: the one resolver of what users write on command lines and in
//! requests.
//!
//! A name is `none` (no pruning), the name of a preset `<folder>/<name>.toml`, or a path to
//! a `.toml` file; `NAME@K` is that policy with its kept fraction overridden to `K` (as
//! [`PolicyFile::override_keep`] does). The policy's name is the file's stem unless the
//! file names itself, and `NAME@K` for an override.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::policy::{Policy, PolicyFile};

/// Reads and validates a policy file; a file without a `name` is named after its stem.
pub fn load_file(path: &Path) -> Result<Policy> {
    load_file_with(path, |_| Ok(()))
}

/// [`load_file`] with `edit` applied to the parsed file before validation (command-line
/// overrides such as `--keep` and `--scorer`).
pub fn load_file_with(path: &Path, edit: impl FnOnce(&mut PolicyFile) -> Result<()>) -> Result<Policy> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io { path: path.to_path_buf(), source })?;
    let mut file = PolicyFile::from_toml(&text)?;
    if file.name.is_none() {
        file.name = path.file_stem().map(|s| s.to_string_lossy().into_owned());
    }
    edit(&mut file)?;
    file.validate()
}

/// `policy` with its kept fraction overridden to `keep`; the name is kept.
pub fn with_keep(policy: &Policy, keep: f64) -> Result<Policy> {
    let mut file = policy.to_file();
    file.override_keep(keep);
    let mut out = file.validate()?;
    out.name = policy.name.clone();
    Ok(out)
}

/// The file a preset name stands for, in `presets`; paths (with a `/` or ending in
/// `.toml`) stand for themselves.
pub fn preset_path(spec: &str, presets: &Path) -> PathBuf {
    if spec.ends_with(".toml") || spec.contains('/') {
        PathBuf::from(spec)
    } else {
        presets.join(format!("{spec}.toml"))
    }
}

/// The policy `spec` names (see the module docs), presets looked up in `presets`.
pub fn resolve(spec: &str, presets: &Path) -> Result<Policy> {
    let spec = spec.trim();
    if let Some((base, keep)) = spec.rsplit_once('@') {
        let keep: f64 = keep
            .parse()
            .map_err(|_| Error::UnknownPolicy { spec: spec.into(), detail: format!("`{keep}` is not a fraction") })?;
        let mut policy = with_keep(&resolve(base, presets)?, keep)?;
        policy.name = spec.to_string();
        return Ok(policy);
    }
    if spec == "none" {
        return Ok(Policy::none());
    }
    if spec.is_empty() {
        return Err(Error::UnknownPolicy { spec: spec.into(), detail: "an empty name".into() });
    }
    let path = preset_path(spec, presets);
    if !path.is_file() {
        return Err(Error::UnknownPolicy {
            spec: spec.into(),
            detail: format!(
                "{} does not exist (a policy is `none`, a preset name in {}, or a path to a .toml file)",
                path.display(),
                presets.display()
            ),
        });
    }
    load_file(&path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn presets() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs")
    }

    #[test]
    fn names_paths_and_overrides() {
        assert!(resolve("none", &presets()).unwrap().is_none());
        let snap = resolve("snapkv", &presets()).unwrap();
        assert_eq!(snap.name, "snapkv");
        let quarter = resolve("snapkv@0.125", &presets()).unwrap();
        assert_eq!(quarter.name, "snapkv@0.125");
        assert_ne!(quarter, snap);
        let by_path = resolve(&presets().join("snapkv.toml").display().to_string(), Path::new("/nowhere")).unwrap();
        assert_eq!(by_path, snap);
    }

    #[test]
    fn bad_names_are_errors_naming_them() {
        for (spec, needle) in
            [("nosuch", "nosuch.toml does not exist"), ("snapkv@x", "`x` is not a fraction"), ("", "empty")]
        {
            let e = resolve(spec, &presets()).unwrap_err().to_string();
            assert!(e.contains(needle), "{spec}: {e}");
        }
        let e = resolve("snapkv@1.5", &presets()).unwrap_err().to_string();
        assert!(e.contains("1.5"), "{e}");
    }
}
