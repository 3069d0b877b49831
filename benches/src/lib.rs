//! Helpers of sieve's benchmarks: the WikiText-2 prompt, the default model, small
//! statistics.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use sieve_engine::tokenizer::Tokenizer;

/// Peak f32 GEMM throughput of the benchmark machine, GFLOP/s. Measured for ONNX Runtime's
/// 512x576x576 matmul on this 2-core machine, per the project's recipes; prefill GFLOP/s
/// are reported as a fraction of it.
pub const PEAK_GEMM_GFLOPS: f64 = 480.0;

/// WikiText-2's test split: `$SIEVE_DATA/wikitext-2/wiki.test.raw`, by default from the
/// `shared/data` folder beside the workspace root.
pub fn wikitext_path() -> PathBuf {
    let path = sieve_eval::data::wikitext_test_split(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data"));
    std::fs::canonicalize(&path).unwrap_or(path)
}

/// Exactly `n` tokens from the start of the text in `path`, tokenizing a growing prefix
/// until it is long enough.
pub fn prompt_tokens(tokenizer: &Tokenizer, path: &Path, n: usize) -> Result<Vec<u32>> {
    if n == 0 {
        bail!("the prompt needs at least one token");
    }
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading {} (set SIEVE_DATA or pass --text FILE)", path.display()))?;
    sieve_eval::data::first_tokens(tokenizer, &text, n).with_context(|| format!("the prompt from {}", path.display()))
}

/// The workspace root (the folder above this crate), where `configs/` lives.
pub fn workspace_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    std::fs::canonicalize(&dir).unwrap_or(dir)
}

/// The default model's path, or an error naming the command that fetches it.
pub fn default_model() -> Result<PathBuf> {
    sieve_fetch::model::cached().ok_or_else(|| {
        anyhow!(
            "the default model is not in the cache ({}); fetch it with `cargo xtask fetch-model`",
            sieve_fetch::model::path().display()
        )
    })
}

/// This process's command line, with arguments that need it single-quoted for a shell.
pub fn command_line() -> String {
    let quote = |a: String| {
        let plain = !a.is_empty() && a.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=,:+@%".contains(c));
        if plain { a } else { format!("'{}'", a.replace('\'', "'\\''")) }
    };
    std::env::args().map(quote).collect::<Vec<_>>().join(" ")
}

pub use sieve_eval::data::median;

/// Bytes in MiB.
pub fn mib(bytes: f64) -> f64 {
    bytes / (1024.0 * 1024.0)
}
