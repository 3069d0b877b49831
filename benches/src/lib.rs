//! Helpers of sieve's end-to-end benchmarks: the WikiText-2 prompt, the default model,
//! the candle-transformers reference model.

use std::io::Cursor;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use candle_core::Device;
use candle_core::quantized::{GgmlDType, QTensor, gguf_file};
use candle_transformers::models::quantized_llama::ModelWeights;
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

/// candle-transformers' `quantized_llama` on the GGUF file at `path` with every tensor
/// dequantized to f32 (as in sieve-candle's reference test), so that both sides compute
/// in f32 from the same values.
pub fn reference_f32(path: &Path) -> Result<ModelWeights> {
    let ctx = || format!("building the f32 reference from {}", path.display());
    let mut file = std::fs::File::open(path).with_context(ctx)?;
    let content = gguf_file::Content::read(&mut file).with_context(ctx)?;
    let mut tensors = Vec::new();
    for name in content.tensor_infos.keys() {
        let q = content.tensor(&mut file, name, &Device::Cpu).with_context(|| format!("reading tensor {name}"))?;
        let f = q.dequantize(&Device::Cpu).with_context(|| format!("dequantizing tensor {name}"))?;
        tensors.push((name.clone(), QTensor::quantize(&f, GgmlDType::F32).with_context(ctx)?));
    }
    let metadata: Vec<(&str, &gguf_file::Value)> = content.metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tensor_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let mut buf = Cursor::new(Vec::new());
    gguf_file::write(&mut buf, &metadata, &tensor_refs).with_context(ctx)?;
    buf.set_position(0);
    let content = gguf_file::Content::read(&mut buf).with_context(ctx)?;
    ModelWeights::from_gguf(content, &mut buf, &Device::Cpu).with_context(ctx)
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
