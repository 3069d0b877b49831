//! `sieve serve` driven by a real OpenAI client library (async-openai) over loopback: the
//! answers are those of `sieve generate` for the same prompt and policy, streamed or not;
//! concurrent requests with different policies each get their sequential answer; a repeated
//! conversation prefix is reused; bad requests get OpenAI-style errors naming the field; a
//! full queue answers 429; a client that leaves frees its sequence; SIGTERM lets requests in
//! flight finish and exits 0.

mod common;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use async_openai::Client;
use async_openai::config::OpenAIConfig;
use async_openai::error::OpenAIError;
use async_openai::types::chat::{ChatCompletionRequestUserMessageArgs, CreateChatCompletionRequestArgs};
use async_openai::types::completions::CreateCompletionRequestArgs;
use futures_util::StreamExt;
use serde_json::{Value, json};

const MODEL: &str = "smollm2-135m";

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A `sieve serve` process on a free loopback port, killed when dropped.
struct Server {
    child: Child,
    base: String,
}

impl Server {
    fn start(extra: &[&str]) -> Self {
        let presets = workspace().join("configs");
        let mut child = Command::new(env!("CARGO_BIN_EXE_sieve"))
            .args(["serve", "--port", "0", "--presets"])
            .arg(&presets)
            .args(extra)
            .env_remove("SIEVE_CACHE")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting sieve serve");
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let line = lines.next().expect("sieve serve printed nothing").unwrap();
        let addr = line.split("http://").nth(1).and_then(|r| r.split_whitespace().next()).unwrap_or_else(|| {
            panic!("no address in `{line}`");
        });
        // Keep reading stdout so that the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines.by_ref() {});
        Server { base: format!("http://{addr}"), child }
    }

    fn client(&self) -> Client<OpenAIConfig> {
        Client::with_config(OpenAIConfig::new().with_api_base(format!("{}/v1", self.base)).with_api_key("unused"))
    }

    /// Sends SIGTERM and waits for the exit.
    fn terminate(mut self) -> std::process::ExitStatus {
        let status = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().unwrap();
        assert!(status.success());
        let status = self.child.wait().unwrap();
        std::mem::forget(self);
        status
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

/// `sieve generate`'s greedy text for `prompt` (through the chat template unless `raw`).
fn generate(prompt: &str, max_tokens: usize, policy: Option<&str>, raw: bool) -> String {
    let mut cmd = common::sieve();
    cmd.args(["generate", prompt, "--json", "-n", &max_tokens.to_string()]);
    if let Some(p) = policy {
        cmd.arg("--policy").arg(workspace().join("configs").join(format!("{p}.toml")));
    }
    if raw {
        cmd.arg("--raw");
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{}", common::stderr_of(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["text"].as_str().unwrap().to_string()
}

/// A chat request body with the `sieve` extension.
fn chat_body(question: &str, max_tokens: usize, policy: &str, stream: bool) -> Value {
    json!({
        "model": MODEL,
        "messages": [{"role": "user", "content": question}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": stream,
        "sieve": {"policy": policy},
    })
}

/// Text of a streamed chat answer (byot chunks).
async fn streamed_chat(client: &Client<OpenAIConfig>, body: Value) -> Result<(String, Option<String>), OpenAIError> {
    let mut stream = client.chat().create_stream_byot::<Value, Value>(body).await?;
    let (mut text, mut finish) = (String::new(), None);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        if let Some(choice) = chunk["choices"].get(0) {
            text.push_str(choice["delta"]["content"].as_str().unwrap_or(""));
            if let Some(f) = choice["finish_reason"].as_str() {
                finish = Some(f.to_string());
            }
        }
    }
    Ok((text, finish))
}

#[test]
fn answers_openai_clients_like_sieve_generate() {
    let server = Server::start(&[]);
    let client = server.client();
    let question = "What is the capital of France?";
    let want = generate(question, 24, None, false);
    let want_snapkv = generate(question, 24, Some("snapkv"), false);
    let prompt = "The three primary colors are";
    let want_raw = generate(prompt, 16, None, true);
    runtime().block_on(async {
        let models = client.models().list().await.unwrap();
        assert_eq!(models.data[0].id, MODEL);

        // Chat through the client's own types.
        let request = CreateChatCompletionRequestArgs::default()
            .model(MODEL)
            .messages([ChatCompletionRequestUserMessageArgs::default().content(question).build().unwrap().into()])
            .max_tokens(24u32)
            .temperature(0.0)
            .build()
            .unwrap();
        let answer = client.chat().create(request.clone()).await.unwrap();
        assert_eq!(answer.choices[0].message.content.as_deref(), Some(want.as_str()));
        assert!(want.contains("Paris"), "{want}");
        let usage = answer.usage.unwrap();
        assert_eq!(usage.total_tokens, usage.prompt_tokens + usage.completion_tokens);

        // The same, streamed (with the client's `byot` feature on, the request must say so).
        let mut request = request;
        request.stream = Some(true);
        let mut stream = client.chat().create_stream(request).await.unwrap();
        let mut streamed = String::new();
        let mut finish = None;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.unwrap();
            for c in chunk.choices {
                streamed.push_str(c.delta.content.as_deref().unwrap_or(""));
                finish = finish.or(c.finish_reason);
            }
        }
        assert_eq!(streamed, want);
        assert!(finish.is_some(), "the last chunk carries a finish reason");

        // A request's own policy: the answer of `sieve generate --policy`.
        let v: Value = client.chat().create_byot(chat_body(question, 24, "snapkv", false)).await.unwrap();
        assert_eq!(v["choices"][0]["message"]["content"], want_snapkv.as_str());
        assert_eq!(v["usage"]["sieve"]["policy"], "snapkv");
        let (text, _) = streamed_chat(&client, chat_body(question, 24, "snapkv", true)).await.unwrap();
        assert_eq!(text, want_snapkv);

        // Completions, plain and streamed.
        let request = CreateCompletionRequestArgs::default()
            .model(MODEL)
            .prompt(prompt)
            .max_tokens(16u32)
            .temperature(0.0)
            .build()
            .unwrap();
        let answer = client.completions().create(request.clone()).await.unwrap();
        assert_eq!(answer.choices[0].text, want_raw);
        let mut request = request;
        request.stream = Some(true);
        let mut stream = client.completions().create_stream(request).await.unwrap();
        let mut streamed = String::new();
        while let Some(chunk) = stream.next().await {
            for c in chunk.unwrap().choices {
                streamed.push_str(&c.text);
            }
        }
        assert_eq!(streamed, want_raw);
    });
    assert!(server.terminate().success());
}

#[test]
fn concurrent_requests_with_different_policies_get_their_sequential_answers() {
    let server = Server::start(&["--max-batch", "8"]);
    let client = server.client();
    let questions = [
        "What is the capital of France?",
        "Name three colors.",
        "Write a haiku about the sea.",
        "What is 2 + 2?",
        "Who wrote Hamlet?",
        "Give me a synonym for happy.",
        "What is the largest planet?",
        "Say hello in Spanish.",
    ];
    let policies = ["none", "snapkv", "h2o-head", "tova", "streaming", "knorm", "lazy-prefill", "expected-attention"];
    runtime().block_on(async {
        let mut sequential = Vec::new();
        for (q, p) in questions.iter().zip(policies) {
            sequential.push(streamed_chat(&client, chat_body(q, 32, p, true)).await.unwrap().0);
        }
        let tasks: Vec<_> = questions
            .iter()
            .zip(policies)
            .map(|(q, p)| {
                let client = client.clone();
                let body = chat_body(q, 32, p, true);
                tokio::spawn(async move { streamed_chat(&client, body).await.unwrap().0 })
            })
            .collect();
        for (i, task) in tasks.into_iter().enumerate() {
            assert_eq!(task.await.unwrap(), sequential[i], "request {i} ({})", policies[i]);
        }
    });
}

#[test]
fn a_repeated_conversation_prefix_reuses_its_compressed_context() {
    let server = Server::start(&["--prefix-min-tokens", "64"]);
    let client = server.client();
    let document = common::wikitext();
    let document: String = document.chars().skip(2000).take(2500).collect();
    let ask = |question: &str| {
        json!({
            "model": MODEL,
            "messages": [
                {"role": "system", "content": format!("Answer from this document.\n\n{document}")},
                {"role": "user", "content": question},
            ],
            "max_tokens": 16,
            "temperature": 0,
            "sieve": {"policy": "snapkv", "keep": 0.5},
        })
    };
    runtime().block_on(async {
        let first: Value = client.chat().create_byot(ask("What is this text about?")).await.unwrap();
        assert_eq!(first["usage"]["sieve"]["prefix_cache"], "miss", "{first}");
        let second: Value = client.chat().create_byot(ask("Who is mentioned first?")).await.unwrap();
        assert_eq!(second["usage"]["sieve"]["prefix_cache"], "hit", "{second}");
        let computed = |v: &Value| v["usage"]["sieve"]["prompt_token_layers"].as_u64().unwrap();
        let prefix = second["usage"]["sieve"]["prefix_tokens"].as_u64().unwrap();
        assert!(prefix > 400, "{second}");
        assert!(computed(&second) < computed(&first) / 5, "a hit computes only the question: {second}");
        // The kept context is not changed by the requests that used it.
        let again: Value = client.chat().create_byot(ask("What is this text about?")).await.unwrap();
        assert_eq!(again["choices"][0]["message"]["content"], first["choices"][0]["message"]["content"]);
        assert_eq!(again["usage"]["sieve"]["prefix_cache"], "hit");
        let metrics = reqwest_text(&format!("{}/metrics", server.base)).await;
        assert!(metrics.contains("sieve_prefix_cache_hits_total 2"), "{metrics}");
        assert!(metrics.contains("sieve_prefix_cache_misses_total 1"), "{metrics}");
        // Another policy does not share the context.
        let mut other = ask("What is this text about?");
        other["sieve"] = json!({"policy": "knorm"});
        let v: Value = client.chat().create_byot(other).await.unwrap();
        assert_eq!(v["usage"]["sieve"]["prefix_cache"], "miss");
    });
}

/// A GET through plain TCP (the client library has no call for `/metrics`).
async fn reqwest_text(url: &str) -> String {
    let url = url.to_string();
    tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let rest = url.strip_prefix("http://").unwrap();
        let (host, path) = rest.split_once('/').unwrap();
        let mut s = std::net::TcpStream::connect(host).unwrap();
        write!(s, "GET /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    })
    .await
    .unwrap()
}

fn api_error(e: OpenAIError) -> (u16, Option<String>, Option<String>) {
    match e {
        OpenAIError::ApiError(r) => (r.status_code.as_u16(), r.api_error.param, r.api_error.code),
        other => panic!("not an API error: {other}"),
    }
}

#[test]
fn bad_requests_get_errors_naming_the_field_and_disturb_nobody() {
    let server = Server::start(&[]);
    let client = server.client();
    let user = json!([{"role": "user", "content": "hi"}]);
    let cases = [
        (json!({"model": MODEL, "messages": user, "temperature": 7}), 400, Some("temperature")),
        (json!({"model": MODEL, "messages": user, "bogus": 1}), 400, Some("bogus")),
        (json!({"model": MODEL, "messages": user, "sieve": {"policy": "snapkv", "keep": 0}}), 400, Some("sieve.keep")),
        (json!({"model": MODEL, "messages": user, "sieve": {"policy": "no-such-preset"}}), 400, Some("sieve.policy")),
        (json!({"model": MODEL, "messages": user, "sieve": {"polcy": "snapkv"}}), 400, Some("sieve.polcy")),
        (json!({"model": MODEL, "messages": [{"role": "robot", "content": "hi"}]}), 400, Some("messages[0].role")),
        (json!({"model": "gpt-4o", "messages": user}), 404, Some("model")),
        (json!({"model": MODEL, "messages": user, "n": 3}), 400, Some("n")),
    ];
    let long = "word ".repeat(9000);
    runtime().block_on(async {
        // A long answer runs while the bad requests come and go.
        let good = {
            let client = client.clone();
            tokio::spawn(async move { streamed_chat(&client, chat_body("Tell me a story.", 48, "none", true)).await })
        };
        for (body, status, param) in cases {
            let e = client.chat().create_byot::<Value, Value>(body.clone()).await.unwrap_err();
            let (got, got_param, _) = api_error(e);
            assert_eq!((got, got_param.as_deref()), (status, param), "{body}");
        }
        let e = client
            .completions()
            .create_byot::<Value, Value>(json!({"model": MODEL, "prompt": long, "max_tokens": 4}))
            .await
            .unwrap_err();
        assert_eq!(api_error(e).1.as_deref(), Some("prompt"), "a prompt longer than the context");
        let (text, finish) = good.await.unwrap().unwrap();
        assert!(!text.is_empty() && finish.is_some(), "the good request finished: {text:?}");
    });
}

#[test]
fn a_full_queue_answers_429_and_a_client_that_leaves_frees_its_sequence() {
    let server = Server::start(&["--max-batch", "1", "--max-queue", "1"]);
    let client = server.client();
    runtime().block_on(async {
        // One sequence runs, one waits, the next is refused.
        let body = chat_body("Tell me a long story about a dragon.", 120, "none", true);
        let mut running = client.chat().create_stream_byot::<Value, Value>(body.clone()).await.unwrap();
        running.next().await.unwrap().unwrap();
        let waiting = {
            let (client, body) = (client.clone(), body.clone());
            tokio::spawn(async move { streamed_chat(&client, body).await })
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let metrics = reqwest_text(&format!("{}/metrics", server.base)).await;
            if metrics.contains("sieve_queue_depth 1") {
                break;
            }
            assert!(Instant::now() < deadline, "the second request never queued: {metrics}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let e = client.chat().create_byot::<Value, Value>(chat_body("Hi", 4, "none", false)).await.unwrap_err();
        let (status, _, code) = api_error(e);
        assert_eq!((status, code.as_deref()), (429, Some("queue_full")));
        // The first client leaves: its sequence is freed and the waiting one runs.
        drop(running);
        let (text, finish) = waiting.await.unwrap().unwrap();
        assert!(!text.is_empty() && finish.is_some());
        let metrics = reqwest_text(&format!("{}/metrics", server.base)).await;
        assert!(metrics.contains("sieve_requests_cancelled_total 1"), "{metrics}");
        // (The client library retries a 429 a few times before giving up.)
        assert!(metrics.contains("sieve_requests_total{endpoint=\"chat_completions\",status=\"429\"}"), "{metrics}");
    });
}

#[test]
fn sigterm_finishes_requests_in_flight_then_exits_zero() {
    let server = Server::start(&[]);
    let client = server.client();
    let rt = runtime();
    let body = chat_body("Tell me a story about a lighthouse.", 64, "none", true);
    let mut stream = rt.block_on(client.chat().create_stream_byot::<Value, Value>(body)).unwrap();
    rt.block_on(stream.next()).unwrap().unwrap();
    let pid = server.child.id();
    let killer = std::thread::spawn(move || Command::new("kill").args(["-TERM", &pid.to_string()]).status().unwrap());
    assert!(killer.join().unwrap().success());
    let mut finish = None;
    while let Some(chunk) = rt.block_on(stream.next()) {
        let chunk = chunk.unwrap();
        if let Some(f) = chunk["choices"].get(0).and_then(|c| c["finish_reason"].as_str()) {
            finish = Some(f.to_string());
        }
    }
    assert!(finish.is_some(), "the request in flight was answered to its end");
    let mut server = server;
    let status = server.child.wait().unwrap();
    assert!(status.success(), "{status:?}");
}
