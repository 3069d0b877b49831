//! The one error type of `sieve-fetch`.

use std::path::{Path, PathBuf};

/// Errors of downloading, verifying and extracting.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A downloaded file did not match its known digest.
    #[error("{}: sha256 {actual} does not match the expected {expected}", path.display())]
    Checksum { path: PathBuf, expected: String, actual: String },

    /// pip could not be started or failed.
    #[error("pip download {requirements}: {detail}")]
    Pip { requirements: String, detail: String },

    /// A wheel that is not a readable zip archive, or lacks a member.
    #[error("{}: {detail}", path.display())]
    Wheel { path: PathBuf, detail: String },
}

impl Error {
    /// An I/O error on `path`.
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        Error::Io { path: path.to_path_buf(), source }
    }
}

/// Result with this crate's error.
pub type Result<T> = std::result::Result<T, Error>;
