//! The HTTP endpoints: requests checked and tokenized here, computed by the engine thread,
//! answered as JSON or as server-sent events.

use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{Uri, header};
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{get, post};
use futures_util::stream::{self, Stream};
use serde_json::{Value, json};
use sieve_core::Policy;
use sieve_engine::Model;
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};

use crate::api::{ChatRequest, Common, CompletionRequest, Settings};
use crate::engine::{Event, Job};
use crate::error::{Error, Result};
use crate::metrics::Metrics;

/// What every handler shares.
pub struct AppState {
    /// The id clients name the model by.
    pub model_id: String,
    /// Unix time the server started.
    pub created: u64,
    /// Tokenizer and chat template (weights live in the engine's backend).
    pub model: Arc<Model>,
    /// The server's policy, for requests that do not choose one.
    pub policy: Policy,
    /// Where preset names are looked up.
    pub presets: PathBuf,
    /// `max_tokens` of a request that does not say.
    pub default_max_tokens: usize,
    /// Most requests waiting for the engine.
    pub max_queue: usize,
    /// The engine's queue; `None` once the server stops.
    pub jobs: Mutex<Option<std::sync::mpsc::Sender<Job>>>,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// Request ids.
    pub ids: AtomicU64,
}

/// The router over `state`.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/health", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/metrics", get(metrics))
        .route("/v1/models", get(models))
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .fallback(|uri: Uri| async move { Error::NotFound(uri.path().to_string()) })
        .layer(DefaultBodyLimit::max(32 << 20))
        .with_state(state)
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

async fn metrics(State(s): State<Arc<AppState>>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], s.metrics.render()).into_response()
}

async fn models(State(s): State<Arc<AppState>>) -> Json<Value> {
    Json(json!({
        "object": "list",
        "data": [{"id": s.model_id, "object": "model", "created": s.created, "owned_by": "sieve"}],
    }))
}

/// Which endpoint a response belongs to.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Chat,
    Completion,
}

impl Kind {
    fn endpoint(self) -> &'static str {
        match self {
            Kind::Chat => "chat_completions",
            Kind::Completion => "completions",
        }
    }
}

async fn chat(State(s): State<Arc<AppState>>, body: Bytes) -> Response {
    let prepared = ChatRequest::parse(&body).and_then(|r| {
        let settings = r.common.settings(&s.model_id, s.default_max_tokens)?;
        let (prompt, prefix) = chat_prompt(&s.model, &r)?;
        Ok((r.common, settings, prompt, prefix))
    });
    respond(s, Kind::Chat, prepared).await
}

async fn completions(State(s): State<Arc<AppState>>, body: Bytes) -> Response {
    let prepared = CompletionRequest::parse(&body).and_then(|r| {
        let settings = r.common.settings(&s.model_id, s.default_max_tokens)?;
        let prompt = s.model.tokenizer.encode(&r.prompt_text()?)?;
        // A raw prompt has no message boundary to keep a compressed prefix at.
        Ok((r.common, settings, prompt, 0))
    });
    respond(s, Kind::Completion, prepared).await
}

/// A chat's prompt ids, and how many of them are the conversation before its last
/// message (the prefix another request may share).
fn chat_prompt(model: &Model, r: &ChatRequest) -> Result<(Vec<u32>, usize)> {
    let template = model.chat_template.as_ref().ok_or_else(|| {
        Error::invalid("messages", "this model has no chat template; send the prompt to /v1/completions")
    })?;
    let messages = r.messages.iter().enumerate().map(|(i, m)| m.to_message(i)).collect::<Result<Vec<_>>>()?;
    let render = |m: &[sieve_engine::template::Message], open: bool| {
        template.render(m, open).map_err(|e| Error::invalid("messages", e.to_string()))
    };
    let prompt = model.tokenizer.encode(&render(&messages, true)?)?;
    let mut prefix = 0;
    if messages.len() > 1 {
        let before = model.tokenizer.encode(&render(&messages[..messages.len() - 1], false)?)?;
        if prompt.starts_with(&before) {
            prefix = before.len();
        }
    }
    Ok((prompt, prefix))
}

/// Queues a prepared request and answers it.
async fn respond(s: Arc<AppState>, kind: Kind, prepared: Result<(Common, Settings, Vec<u32>, usize)>) -> Response {
    let submitted =
        prepared.and_then(|(common, settings, prompt, prefix)| submit(&s, kind, common, settings, prompt, prefix));
    let (settings, events) = match submitted {
        Ok(x) => x,
        Err(e) => {
            s.metrics.request(kind.endpoint(), e.status().as_u16());
            return e.into_response();
        }
    };
    let id =
        format!("{}-{}", if kind == Kind::Chat { "chatcmpl" } else { "cmpl" }, s.ids.fetch_add(1, Ordering::Relaxed));
    if settings.stream {
        s.metrics.request(kind.endpoint(), 200);
        let head = Head { id, created: now(), model: s.model_id.clone(), kind };
        return Sse::new(sse_stream(head, events, settings.include_usage)).into_response();
    }
    let response = collect(&s, kind, id, events).await;
    s.metrics.request(kind.endpoint(), response.status().as_u16());
    response
}

/// Checks a request against the model and the queue, and hands it to the engine.
fn submit(
    s: &AppState,
    kind: Kind,
    common: Common,
    settings: Settings,
    prompt: Vec<u32>,
    prefix: usize,
) -> Result<(Settings, UnboundedReceiver<Event>)> {
    let context = s.model.config.context;
    if prompt.len() > context {
        let param = if kind == Kind::Chat { "messages" } else { "prompt" };
        return Err(Error::invalid(
            param,
            format!("the prompt is {} tokens; the model's context is {context}", prompt.len()),
        ));
    }
    let options = common.sieve.unwrap_or_default();
    let policy = options.policy(&s.policy, &s.presets)?;
    policy.check_model(s.model.config.n_layers).map_err(|e| Error::invalid("sieve.policy", e.to_string()))?;
    let (tx, rx) = unbounded_channel();
    let job = Job {
        prompt,
        prefix,
        reuse: options.reuse.unwrap_or(true),
        policy,
        settings: settings.clone(),
        events: tx,
        received: Instant::now(),
    };
    let jobs = s.jobs.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let sender = jobs.as_ref().ok_or(Error::ShuttingDown)?;
    let waiting = s.metrics.queue_depth.fetch_add(1, Ordering::Relaxed);
    if waiting >= s.max_queue {
        s.metrics.queue_depth.fetch_sub(1, Ordering::Relaxed);
        return Err(Error::Busy(waiting));
    }
    if sender.send(job).is_err() {
        s.metrics.queue_depth.fetch_sub(1, Ordering::Relaxed);
        return Err(Error::ShuttingDown);
    }
    Ok((settings, rx))
}

/// The usage object of a finished request.
fn usage_json(usage: &crate::engine::Usage) -> Value {
    serde_json::to_value(usage).unwrap_or(Value::Null)
}

/// Waits for a whole answer.
async fn collect(s: &AppState, kind: Kind, id: String, mut events: UnboundedReceiver<Event>) -> Response {
    let mut text = String::new();
    while let Some(event) = events.recv().await {
        match event {
            Event::Text(t) => text.push_str(&t),
            Event::Failed(e) => return e.into_response(),
            Event::Done(done) => {
                let choice = match kind {
                    Kind::Chat => json!({
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "finish_reason": done.finish_reason,
                        "logprobs": null,
                    }),
                    Kind::Completion => json!({
                        "index": 0, "text": text, "finish_reason": done.finish_reason, "logprobs": null,
                    }),
                };
                let object = if kind == Kind::Chat { "chat.completion" } else { "text_completion" };
                return Json(json!({
                    "id": id,
                    "object": object,
                    "created": now(),
                    "model": s.model_id,
                    "choices": [choice],
                    "usage": usage_json(&done.usage),
                }))
                .into_response();
            }
        }
    }
    Error::Engine("the engine stopped before the answer was complete".into()).into_response()
}

/// What every chunk of a stream repeats.
struct Head {
    id: String,
    created: u64,
    model: String,
    kind: Kind,
}

impl Head {
    /// A chunk with one choice (`delta` for chat, `text` for completions).
    fn chunk(&self, text: Option<&str>, first: bool, finish_reason: Option<&str>) -> Value {
        let choice = match self.kind {
            Kind::Chat => {
                let mut delta = serde_json::Map::new();
                if first {
                    delta.insert("role".into(), json!("assistant"));
                }
                if let Some(t) = text {
                    delta.insert("content".into(), json!(t));
                }
                json!({"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": null})
            }
            Kind::Completion => {
                json!({"index": 0, "text": text.unwrap_or(""), "finish_reason": finish_reason, "logprobs": null})
            }
        };
        self.wrap(vec![choice], None)
    }

    fn wrap(&self, choices: Vec<Value>, usage: Option<Value>) -> Value {
        let object = if self.kind == Kind::Chat { "chat.completion.chunk" } else { "text_completion" };
        let mut v =
            json!({"id": self.id, "object": object, "created": self.created, "model": self.model, "choices": choices});
        if let Some(u) = usage {
            v["usage"] = u;
        }
        v
    }
}

/// State of a stream being sent.
struct Streaming {
    head: Head,
    events: UnboundedReceiver<Event>,
    include_usage: bool,
    first: bool,
    /// Events still to send after the engine's last one.
    tail: Vec<SseEvent>,
    done: bool,
}

fn data(v: &Value) -> SseEvent {
    SseEvent::default().data(v.to_string())
}

/// Server-sent events of an answer, ending with `data: [DONE]`.
fn sse_stream(
    head: Head,
    events: UnboundedReceiver<Event>,
    include_usage: bool,
) -> impl Stream<Item = std::result::Result<SseEvent, Infallible>> {
    let state = Streaming { head, events, include_usage, first: true, tail: Vec::new(), done: false };
    stream::unfold(state, |mut st| async move {
        if let Some(e) = st.tail.pop() {
            return Some((Ok(e), st));
        }
        if st.done {
            return None;
        }
        let event = match st.events.recv().await {
            Some(Event::Text(t)) => {
                let chunk = st.head.chunk(Some(&t), st.first, None);
                st.first = false;
                data(&chunk)
            }
            Some(Event::Done(done)) => {
                st.done = true;
                // In reverse: `tail` is popped from the end.
                st.tail.push(SseEvent::default().data("[DONE]"));
                if st.include_usage {
                    st.tail.push(data(&st.head.wrap(Vec::new(), Some(usage_json(&done.usage)))));
                }
                data(&st.head.chunk(None, st.first, Some(done.finish_reason)))
            }
            Some(Event::Failed(e)) => {
                st.done = true;
                st.tail.push(SseEvent::default().data("[DONE]"));
                data(&e.body())
            }
            None => {
                st.done = true;
                data(&Error::Engine("the engine stopped before the answer was complete".into()).body())
            }
        };
        Some((Ok(event), st))
    })
}
