//! A load test of `sieve serve` on loopback, with a real OpenAI client (async-openai):
//!
//! 1. Every distinct (question, policy) pair is first asked alone, greedy, streamed: its
//!    sequential answer.
//! 2. `--requests` streaming requests, `--clients` at a time, cycling through the pairs:
//!    errors, answers that differ from the sequential one (a lost, duplicated or changed
//!    token), time to first token (p50, p99) and aggregate tokens per second.
//! 3. Decode throughput of 8 concurrent sequences against one (the batched decode steps).
//! 4. A `--document-tokens` WikiText-2 document asked twice with different questions: the
//!    second request's time to first token against the first's (reuse of the compressed
//!    context).
//!
//! Every figure comes from this run. `cargo run --release -p sieve-benches --bin load`

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use async_openai::Client;
use async_openai::config::OpenAIConfig;
use clap::Parser;
use futures_util::StreamExt;
use serde_json::{Value, json};
use sieve_backend::DeviceSpec;
use sieve_engine::Model;
use sieve_runtime::{BackendKind, Runtime};
use sieve_server::{EngineConfig, ServeOptions};

#[derive(Parser)]
struct Args {
    /// Requests of the load phase.
    #[arg(long, default_value_t = 200)]
    requests: usize,
    /// Concurrent clients of the load phase.
    #[arg(long, default_value_t = 32)]
    clients: usize,
    /// Tokens per answer.
    #[arg(long, default_value_t = 32)]
    max_tokens: usize,
    /// Sequences decoded together by the server.
    #[arg(long, default_value_t = 8)]
    max_batch: usize,
    /// Tokens of the document asked twice.
    #[arg(long, default_value_t = 2048)]
    document_tokens: usize,
    /// Policy of the document requests.
    #[arg(long, default_value = "snapkv")]
    document_policy: String,
}

const MODEL: &str = "smollm2-135m";

const QUESTIONS: [&str; 5] = [
    "What is the capital of France?",
    "Name three colors.",
    "Write a haiku about the sea.",
    "Who wrote Hamlet?",
    "Explain what a rainbow is.",
];

const POLICIES: [&str; 8] =
    ["none", "snapkv", "h2o-head", "tova", "streaming", "knorm", "expected-attention", "lazy-prefill"];

/// One streamed answer: its text, when its first text came and when it ended (from the
/// request's start), its token count.
struct Answer {
    text: String,
    ttft: Duration,
    total: Duration,
    tokens: usize,
}

async fn ask(client: &Client<OpenAIConfig>, body: Value) -> Result<Answer> {
    let started = Instant::now();
    let mut stream = client.chat().create_stream_byot::<Value, Value>(body).await?;
    let (mut text, mut ttft, mut tokens) = (String::new(), None, 0);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        if let Some(c) = chunk["choices"].get(0).and_then(|c| c["delta"]["content"].as_str()) {
            ttft.get_or_insert_with(|| started.elapsed());
            text.push_str(c);
        }
        if let Some(n) = chunk["usage"]["completion_tokens"].as_u64() {
            tokens = n as usize;
        }
    }
    let total = started.elapsed();
    Ok(Answer { text, ttft: ttft.unwrap_or(total), total, tokens })
}

fn body(question: &str, policy: &str, max_tokens: usize) -> Value {
    json!({
        "model": MODEL,
        "messages": [{"role": "user", "content": question}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": true,
        "stream_options": {"include_usage": true},
        "sieve": {"policy": policy},
    })
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() -> Result<()> {
    let args = Args::parse();
    let mut model = Model::load(&sieve_benches::default_model()?)?;
    let document = {
        let ids =
            sieve_benches::prompt_tokens(&model.tokenizer, &sieve_benches::wikitext_path(), args.document_tokens)?;
        model.tokenizer.decode(&ids)?
    };
    let weights = model.take_weights();
    let config = model.config.clone();
    let options = ServeOptions {
        host: "127.0.0.1".into(),
        port: 0,
        model_id: MODEL.into(),
        policy: sieve_core::Policy::none(),
        presets: sieve_benches::workspace_dir().join("configs"),
        default_max_tokens: args.max_tokens,
        max_queue: args.requests,
        engine: EngineConfig { max_batch: args.max_batch, prefix_cache_bytes: 1 << 30, prefix_min_tokens: 256 },
    };
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = std::thread::spawn(move || {
        let load =
            move || Runtime::load(BackendKind::Candle, DeviceSpec::Cpu, &config, weights).map_err(|e| e.to_string());
        sieve_server::serve_until(options, model, load, |a| addr_tx.send(a).unwrap_or(()), async move {
            let _ = stop_rx.await;
        })
    });
    let addr = addr_rx.recv().context("the server did not start")?;
    let client = Client::with_config(OpenAIConfig::new().with_api_base(format!("http://{addr}/v1")).with_api_key("-"));
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    let result = rt.block_on(run(&args, client, &document));
    let _ = &rt;
    let _ = stop_tx.send(());
    server.join().map_err(|_| anyhow::anyhow!("the server thread panicked"))??;
    result
}

async fn run(args: &Args, client: Client<OpenAIConfig>, document: &str) -> Result<()> {
    // 1. Sequential answers.
    let pairs: Vec<(&str, &str)> = QUESTIONS.iter().flat_map(|q| POLICIES.iter().map(move |p| (*q, *p))).collect();
    let mut sequential = Vec::new();
    for (q, p) in &pairs {
        sequential.push(ask(&client, body(q, p, args.max_tokens)).await.with_context(|| format!("{q} / {p}"))?.text);
    }
    println!("sequential answers: {} (question, policy) pairs", pairs.len());

    // 2. The load.
    let gate = Arc::new(tokio::sync::Semaphore::new(args.clients));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..args.requests {
        let (client, gate) = (client.clone(), gate.clone());
        let (q, p) = pairs[i % pairs.len()];
        let b = body(q, p, args.max_tokens);
        tasks.push(tokio::spawn(async move {
            let _permit = gate.acquire_owned().await;
            ask(&client, b).await
        }));
    }
    let (mut errors, mut mismatched, mut tokens, mut ttfts) = (0, 0, 0, Vec::new());
    for (i, t) in tasks.into_iter().enumerate() {
        match t.await? {
            Ok(a) => {
                if a.text != sequential[i % pairs.len()] {
                    mismatched += 1;
                    eprintln!("request {i}: {:?} differs from its sequential answer", pairs[i % pairs.len()]);
                }
                tokens += a.tokens;
                ttfts.push(a.ttft.as_secs_f64());
            }
            Err(e) => {
                errors += 1;
                eprintln!("request {i}: {e}");
            }
        }
    }
    let wall = started.elapsed().as_secs_f64();
    ttfts.sort_by(f64::total_cmp);
    println!("\n| load | value |\n|---|---:|");
    println!("| requests ({} clients at a time, {} policies) | {} |", args.clients, POLICIES.len(), args.requests);
    println!("| errors | {errors} |");
    println!("| answers different from their sequential run | {mismatched} |");
    if !ttfts.is_empty() {
        println!("| time to first token p50 | {:.0} ms |", 1e3 * percentile(&ttfts, 0.5));
        println!("| time to first token p99 | {:.0} ms |", 1e3 * percentile(&ttfts, 0.99));
    }
    println!("| aggregate tokens/s | {:.1} |", tokens as f64 / wall);

    // 3. Decode throughput: one sequence, then 8 at once.
    let story = |i: usize| body(&format!("Tell me a long story about a dragon named number {i}."), "none", 96);
    let rate = |answers: &[Answer], starts: &[Duration]| {
        // Tokens after each first token, over the time from the first first token to the last end.
        let first = answers.iter().zip(starts).map(|(a, s)| *s + a.ttft).min().unwrap_or_default();
        let end = answers.iter().zip(starts).map(|(a, s)| *s + a.total).max().unwrap_or_default();
        let n: usize = answers.iter().map(|a| a.tokens.saturating_sub(1)).sum();
        n as f64 / (end - first).as_secs_f64()
    };
    let one = ask(&client, story(0)).await?;
    let single = rate(&[one], &[Duration::ZERO]);
    let t0 = Instant::now();
    let handles: Vec<_> = (1..=8)
        .map(|i| {
            let (client, b) = (client.clone(), story(i));
            tokio::spawn(async move {
                let start = t0.elapsed();
                ask(&client, b).await.map(|a| (a, start))
            })
        })
        .collect();
    let (mut answers, mut starts) = (Vec::new(), Vec::new());
    for h in handles {
        let (a, s) = h.await??;
        answers.push(a);
        starts.push(s);
    }
    let batched = rate(&answers, &starts);
    println!("\n| decode | tokens/s |\n|---|---:|");
    println!("| one sequence | {single:.1} |");
    println!("| 8 concurrent sequences (aggregate, admissions included) | {batched:.1} |");
    println!("| ratio (goal >= 4x) | {:.2}x |", batched / single);

    // 4. A document asked twice.
    let ask_doc = |question: &str| {
        json!({
            "model": MODEL,
            "messages": [
                {"role": "system", "content": format!("Answer from this document.\n\n{document}")},
                {"role": "user", "content": question},
            ],
            "max_tokens": 8,
            "temperature": 0,
            "stream": true,
            "sieve": {"policy": args.document_policy},
        })
    };
    let first = ask(&client, ask_doc("What is this document about?")).await?;
    let second = ask(&client, ask_doc("Which name comes first in it?")).await?;
    if first.text.is_empty() && second.text.is_empty() {
        bail!("the document requests produced no text");
    }
    println!(
        "\n| {}-token document, policy {} | time to first token |\n|---|---:|",
        args.document_tokens, args.document_policy
    );
    println!("| first question (computed) | {:.0} ms |", 1e3 * first.ttft.as_secs_f64());
    println!("| second question (reused) | {:.0} ms |", 1e3 * second.ttft.as_secs_f64());
    println!("| ratio (goal <= 0.2x) | {:.3}x |", second.ttft.as_secs_f64() / first.ttft.as_secs_f64());
    Ok(())
}
