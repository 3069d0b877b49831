//! Policies by name: the one resolver of what users write on command lines and in
//! requests.
//!
//! A name is `none` (no pruning), the name of a preset `<folder>/<name>.toml`, or a path to
//! a `.toml` file; `NAME@K` is that policy with its kept fraction overridden to `K` (as
//! [`PolicyFile::override_keep`] does). The policy's name is the file's stem unless the
//! file names itself, and `NAME@K` for an override.
//!
//! The presets of the repository's `configs/` are built in ([`BUILTIN`]), so a name works
//! from any directory; a file of that name in the folder given takes precedence.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::policy::{Policy, PolicyFile};

/// The repository's presets (`configs/*.toml`), by name, as compiled into every binary.
pub const BUILTIN: [(&str, &str); 16] = [
    ("adaptive", include_str!("../../../configs/adaptive.toml")),
    ("combined", include_str!("../../../configs/combined.toml")),
    ("expected-attention", include_str!("../../../configs/expected-attention.toml")),
    ("fastkv", include_str!("../../../configs/fastkv.toml")),
    ("gemfilter", include_str!("../../../configs/gemfilter.toml")),
    ("h2o", include_str!("../../../configs/h2o.toml")),
    ("h2o-head", include_str!("../../../configs/h2o-head.toml")),
    ("knorm", include_str!("../../../configs/knorm.toml")),
    ("lazy-prefill", include_str!("../../../configs/lazy-prefill.toml")),
    ("lazy-revive", include_str!("../../../configs/lazy-revive.toml")),
    ("none", include_str!("../../../configs/none.toml")),
    ("novelty", include_str!("../../../configs/novelty.toml")),
    ("pyramid", include_str!("../../../configs/pyramid.toml")),
    ("snapkv", include_str!("../../../configs/snapkv.toml")),
    ("streaming", include_str!("../../../configs/streaming.toml")),
    ("tova", include_str!("../../../configs/tova.toml")),
];

/// The built-in preset `name`, parsed and validated.
fn builtin(name: &str) -> Option<Result<Policy>> {
    let (_, text) = BUILTIN.iter().find(|(n, _)| *n == name)?;
    Some(parse(text, Some(name.to_string()), |_| Ok(())))
}

/// A policy file's text parsed, named `default_name` unless it names itself, edited, then
/// validated.
fn parse(text: &str, default_name: Option<String>, edit: impl FnOnce(&mut PolicyFile) -> Result<()>) -> Result<Policy> {
    let mut file = PolicyFile::from_toml(text)?;
    if file.name.is_none() {
        file.name = default_name;
    }
    edit(&mut file)?;
    file.validate()
}

/// Reads and validates a policy file; a file without a `name` is named after its stem.
pub fn load_file(path: &Path) -> Result<Policy> {
    load_file_with(path, |_| Ok(()))
}

/// [`load_file`] with `edit` applied to the parsed file before validation (command-line
/// overrides such as `--keep` and `--scorer`).
pub fn load_file_with(path: &Path, edit: impl FnOnce(&mut PolicyFile) -> Result<()>) -> Result<Policy> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io { path: path.to_path_buf(), source })?;
    parse(&text, path.file_stem().map(|s| s.to_string_lossy().into_owned()), edit)
}

/// `policy` with its kept fraction overridden to `keep`; the name is kept.
pub fn with_keep(policy: &Policy, keep: f64) -> Result<Policy> {
    edited(policy, |file| {
        file.override_keep(keep);
        Ok(())
    })
}

/// `policy` with `edit` applied to its file form, validated again; the name is kept.
pub fn edited(policy: &Policy, edit: impl FnOnce(&mut PolicyFile) -> Result<()>) -> Result<Policy> {
    let mut file = policy.to_file();
    edit(&mut file)?;
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
    if path.is_file() {
        return load_file(&path);
    }
    let is_name = path != Path::new(spec);
    if let Some(policy) = builtin(spec).filter(|_| is_name) {
        return policy;
    }
    let names: Vec<&str> = BUILTIN.iter().map(|(n, _)| *n).collect();
    Err(Error::UnknownPolicy {
        spec: spec.into(),
        detail: format!(
            "{} does not exist (a policy is `none`, a preset name in {} or built in: {}; or a path to a .toml file)",
            path.display(),
            presets.display(),
            names.join(", ")
        ),
    })
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

    /// Every preset of `configs/` is built in, as its file reads.
    #[test]
    fn the_built_in_presets_are_the_configs_folder() {
        let mut files: Vec<String> = std::fs::read_dir(presets())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "toml"))
            .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
            .collect();
        files.sort();
        let names: Vec<&str> = BUILTIN.iter().map(|(n, _)| *n).collect();
        assert_eq!(names, files, "BUILTIN lists configs/*.toml in order");
        let nowhere = Path::new("/nowhere");
        for name in names {
            let built_in = resolve(name, nowhere).unwrap();
            assert_eq!(built_in, resolve(name, &presets()).unwrap(), "{name}");
            assert_eq!(built_in.name, name);
        }
        // A name is looked up in the folder first; a path is never a built-in preset.
        let e = resolve("snapkv.toml", nowhere).unwrap_err().to_string();
        assert!(e.contains("snapkv.toml does not exist"), "{e}");
        assert_eq!(resolve("snapkv@0.5", nowhere).unwrap(), resolve("snapkv@0.5", &presets()).unwrap());
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
