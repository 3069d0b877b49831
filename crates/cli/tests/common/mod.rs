//! What the `sieve` binary's tests share: the command, temporary paths, the data.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use assert_cmd::Command;

/// The `sieve` binary, with the real cache (CI fetches the model first) and a time limit.
pub fn sieve() -> Command {
    let mut cmd = Command::cargo_bin("sieve").expect("sieve binary");
    cmd.env_remove("SIEVE_CACHE").timeout(Duration::from_secs(600));
    cmd
}

/// Standard error of a finished command.
pub fn stderr_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A path under the temporary directory, removed (file or directory) when dropped.
pub struct TempPath(pub PathBuf);

impl TempPath {
    /// A new name; nothing is created.
    pub fn new(name: &str) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        Self(std::env::temp_dir().join(format!("sieve-test-{}-{n}-{name}", std::process::id())))
    }

    /// A new, empty directory.
    pub fn dir(name: &str) -> Self {
        let t = Self::new(name);
        std::fs::create_dir_all(&t.0).unwrap();
        t
    }

    /// A new file holding `bytes`.
    pub fn with_bytes(name: &str, bytes: &[u8]) -> Self {
        let t = Self::new(name);
        std::fs::write(&t.0, bytes).unwrap();
        t
    }

    /// The path, for messages and arguments.
    pub fn display(&self) -> String {
        self.0.display().to_string()
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// WikiText-2's test split (`$SIEVE_DATA`, else `shared/data` beside the workspace).
pub fn wikitext() -> String {
    let path =
        sieve_eval::data::wikitext_test_split(&PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e} (set SIEVE_DATA)", path.display()))
}

/// The default model's path.
pub fn default_model() -> PathBuf {
    sieve_fetch::model::cached().expect("the default model (cargo xtask fetch-model)")
}
