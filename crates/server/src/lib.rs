//! `sieve-server`: `sieve serve`, an OpenAI-compatible HTTP server over the engine.
//!
//! - [`api`]: the request bodies (chat and completions, with the `sieve` extension that
//!   chooses a request's pruning policy) and their checks.
//! - [`routes`]: the endpoints (`/v1/chat/completions`, `/v1/completions`, `/v1/models`,
//!   `/health`, `/metrics`); answers as JSON or server-sent events.
//! - [`engine`]: the thread that owns the backend and every sequence, interleaving one
//!   prefill with batched decode steps.
//! - [`prefix`]: compressed contexts kept for reuse by later requests with the same prefix.
//! - [`metrics`]: what `/metrics` reports.
//!
//! Requests are checked before they are queued: a bad one gets a 4xx with an OpenAI-style
//! error body naming the field, and never reaches the engine.

pub mod api;
pub mod engine;
mod error;
pub mod metrics;
pub mod prefix;
pub mod routes;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use sieve_backend::Backend;
use sieve_core::Policy;
use sieve_engine::Model;

pub use engine::EngineConfig;
pub use error::{Error, Result};

/// How `sieve serve` runs.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Address to listen on.
    pub host: String,
    /// Port (0: any free port; the one chosen is passed to `on_ready`).
    pub port: u16,
    /// The id clients name the model by.
    pub model_id: String,
    /// Policy of requests that do not choose one.
    pub policy: Policy,
    /// Folder of preset policies requests may name.
    pub presets: PathBuf,
    /// `max_tokens` of requests that do not say.
    pub default_max_tokens: usize,
    /// Most requests waiting for the engine; more get HTTP 429.
    pub max_queue: usize,
    /// The engine's limits.
    pub engine: EngineConfig,
}

/// Loads the backend on the engine thread, then serves until SIGINT or SIGTERM: stops
/// accepting, lets every request in flight finish, and returns. `on_ready` gets the
/// address once the server accepts connections.
pub fn serve<B, F>(options: ServeOptions, model: Model, load: F, on_ready: impl FnOnce(SocketAddr)) -> Result<()>
where
    B: Backend,
    F: FnOnce() -> std::result::Result<B, String> + Send + 'static,
{
    serve_until(options, model, load, on_ready, shutdown_signal())
}

/// [`serve`] until `shutdown` resolves (instead of a signal), for programs that embed the
/// server.
pub fn serve_until<B, F>(
    options: ServeOptions,
    model: Model,
    load: F,
    on_ready: impl FnOnce(SocketAddr),
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()>
where
    B: Backend,
    F: FnOnce() -> std::result::Result<B, String> + Send + 'static,
{
    let model = Arc::new(model);
    let metrics = Arc::new(metrics::Metrics::default());
    let (jobs, queue) = std::sync::mpsc::channel();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let engine = {
        let (model, metrics, config) = (model.clone(), metrics.clone(), options.engine);
        std::thread::Builder::new()
            .name("sieve-engine".into())
            .spawn(move || {
                let backend = match load() {
                    Ok(b) => b,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(()));
                engine::run(&backend, &model.tokenizer, queue, metrics, config);
            })
            .map_err(|e| Error::Startup(format!("starting the engine thread: {e}")))?
    };
    ready_rx
        .recv()
        .map_err(|_| Error::Startup("the engine thread stopped while loading".into()))?
        .map_err(Error::Startup)?;
    let state = Arc::new(routes::AppState {
        model_id: options.model_id.clone(),
        created: std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
        model,
        policy: options.policy.clone(),
        presets: options.presets.clone(),
        default_max_tokens: options.default_max_tokens,
        max_queue: options.max_queue,
        jobs: Mutex::new(Some(jobs)),
        metrics,
        ids: AtomicU64::new(0),
    });
    // One thread for HTTP: the cores belong to the engine's kernels, and the HTTP work
    // (parsing, tokenizing, sending events) is small beside a decode step.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| Error::Startup(format!("starting the async runtime: {e}")))?;
    let served = runtime.block_on(async {
        let addr = format!("{}:{}", options.host, options.port);
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .map_err(|e| Error::Startup(format!("listening on {addr}: {e}")))?;
        let local = listener.local_addr().map_err(|e| Error::Startup(e.to_string()))?;
        on_ready(local);
        axum::serve(listener, routes::router(state.clone()))
            .with_graceful_shutdown(shutdown)
            .await
            .map_err(|e| Error::Startup(format!("serving: {e}")))
    });
    // Every request has been answered: close the queue and let the engine finish.
    state.jobs.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
    drop(state);
    engine.join().map_err(|_| Error::Engine("the engine thread panicked".into()))?;
    served
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let interrupt = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {},
        () = terminate => {},
    }
}
