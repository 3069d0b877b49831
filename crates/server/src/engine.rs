//! The engine thread: owns the backend and every sequence, and interleaves admitting new
//! requests (one prefill between two decode steps, so running streams never wait for more
//! than one prompt) with batched decode steps of all active sequences
//! ([`Session::step_batch`]: the weights are read once per step for all of them, each
//! sequence attending over its own, differently pruned cache).

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::time::Instant;

use serde::Serialize;
use sieve_backend::Backend;
use sieve_core::Policy;
use sieve_engine::generate::TextStream;
use sieve_engine::sampling::Sampler;
use sieve_engine::tokenizer::Tokenizer;
use sieve_engine::{Logits, Session};
use tokio::sync::mpsc::UnboundedSender;

use crate::api::Settings;
use crate::error::Error;
use crate::metrics::Metrics;
use crate::prefix::PrefixCache;

/// A request, checked and tokenized, on its way to the engine.
pub struct Job {
    /// Prompt ids.
    pub prompt: Vec<u32>,
    /// How many of the first prompt ids form a reusable prefix (0: none).
    pub prefix: usize,
    /// Whether the prefix cache may be used.
    pub reuse: bool,
    /// The request's policy.
    pub policy: Policy,
    /// Sampling and length.
    pub settings: Settings,
    /// Where the text goes; a closed channel (the client left) cancels the request.
    pub events: UnboundedSender<Event>,
    /// When the request arrived.
    pub received: Instant,
}

/// What the engine sends back for a request.
#[derive(Debug)]
pub enum Event {
    /// Text that became final.
    Text(String),
    /// The request is complete.
    Done(Done),
    /// The request failed.
    Failed(Error),
}

/// How a request ended.
#[derive(Debug, Clone, Serialize)]
pub struct Done {
    /// `stop` (end of sequence or a stop string) or `length` (the token limit or the end
    /// of the context).
    pub finish_reason: &'static str,
    /// Tokens and what pruning did.
    pub usage: Usage,
}

/// OpenAI's usage, extended with what pruning did.
#[derive(Debug, Clone, Serialize)]
pub struct Usage {
    /// Prompt tokens.
    pub prompt_tokens: usize,
    /// Generated tokens.
    pub completion_tokens: usize,
    /// Their sum.
    pub total_tokens: usize,
    /// sieve's part.
    pub sieve: Pruning,
}

/// What pruning did for a request.
#[derive(Debug, Clone, Serialize)]
pub struct Pruning {
    /// The policy's name.
    pub policy: String,
    /// Prompt tokens summed over the layers that computed them for this request (a
    /// reused prefix computed nothing).
    pub prompt_token_layers: usize,
    /// The same without pruning or reuse: prompt tokens times layers.
    pub prompt_token_layers_unpruned: usize,
    /// Bytes of live KV entries at the end.
    pub kv_bytes: usize,
    /// Bytes the same sequence would hold without pruning.
    pub kv_bytes_unpruned: usize,
    /// `hit` (the prefix came from the cache of compressed contexts), `miss` (it was
    /// computed and kept) or `off` (no reusable prefix).
    pub prefix_cache: &'static str,
    /// Prompt tokens of the reusable prefix.
    pub prefix_tokens: usize,
}

/// Limits of the engine.
#[derive(Debug, Clone, Copy)]
pub struct EngineConfig {
    /// Most sequences decoded together.
    pub max_batch: usize,
    /// Bytes of compressed contexts kept for reuse (0: none).
    pub prefix_cache_bytes: usize,
    /// Shortest prefix worth keeping, tokens.
    pub prefix_min_tokens: usize,
}

/// One sequence being decoded.
struct Sequence<'b, B: Backend> {
    session: Session<'b, B>,
    job: Job,
    sampler: Sampler,
    history: Vec<u32>,
    text: TextStream,
    /// The sampled token not yet fed to the model.
    next: u32,
    usage: Usage,
}

/// Runs the engine until `jobs` is closed and every sequence has finished.
pub fn run<B: Backend>(
    backend: &B,
    tokenizer: &Tokenizer,
    jobs: Receiver<Job>,
    metrics: Arc<Metrics>,
    config: EngineConfig,
) {
    let mut engine =
        Engine { backend, tokenizer, metrics, config, prefix: PrefixCache::new(config.prefix_cache_bytes) };
    let mut waiting: VecDeque<Job> = VecDeque::new();
    let mut active: Vec<Sequence<'_, B>> = Vec::new();
    let mut open = true;
    loop {
        // Wait only when there is nothing to do.
        if open && active.is_empty() && waiting.is_empty() {
            match jobs.recv() {
                Ok(job) => waiting.push_back(job),
                Err(_) => open = false,
            }
        }
        while open {
            match jobs.try_recv() {
                Ok(job) => waiting.push_back(job),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => open = false,
            }
        }
        if !open && active.is_empty() && waiting.is_empty() {
            break;
        }
        // Clients that left free their sequence at once.
        let (before, running) = (waiting.len(), active.len());
        waiting.retain(|j| !j.events.is_closed());
        active.retain(|s| !s.job.events.is_closed());
        let left = before - waiting.len();
        engine.metrics.queue_depth.fetch_sub(left, Ordering::Relaxed);
        engine.metrics.cancelled.fetch_add((left + running - active.len()) as u64, Ordering::Relaxed);
        if active.len() < engine.config.max_batch
            && let Some(job) = waiting.pop_front()
        {
            engine.metrics.queue_depth.fetch_sub(1, Ordering::Relaxed);
            if let Some(seq) = engine.start(job) {
                active.push(seq);
            }
        }
        if !active.is_empty() {
            engine.step(&mut active);
        }
        engine.metrics.active.store(active.len(), Ordering::Relaxed);
        let live: usize = active.iter().map(|s| s.session.kv_bytes()).sum();
        let unpruned: usize = active.iter().map(|s| s.session.stats.kv_bytes_unpruned).sum();
        engine.metrics.kv_live.store(live, Ordering::Relaxed);
        engine.metrics.kv_saved.store(unpruned.saturating_sub(live), Ordering::Relaxed);
        engine.metrics.prefix_bytes.store(engine.prefix.bytes(), Ordering::Relaxed);
    }
}

struct Engine<'b, B: Backend> {
    backend: &'b B,
    tokenizer: &'b Tokenizer,
    metrics: Arc<Metrics>,
    config: EngineConfig,
    prefix: PrefixCache<'b, B>,
}

impl<'b, B: Backend> Engine<'b, B> {
    /// Prefills a request and samples its first token; `None` when it is already complete
    /// or failed (its client was told).
    fn start(&mut self, job: Job) -> Option<Sequence<'b, B>> {
        match self.prefill(&job) {
            Ok((session, logits, usage)) => {
                let mut sampler = match Sampler::new(job.settings.sampling.clone()) {
                    Ok(s) => s,
                    Err(e) => {
                        let _ = job.events.send(Event::Failed(e.into()));
                        return None;
                    }
                };
                let history = job.prompt.clone();
                match sampler.sample(&logits, &history) {
                    Ok(next) => {
                        self.metrics.ttft(job.received.elapsed().as_secs_f64());
                        let text = TextStream::new(&job.settings.stop);
                        let seq = Sequence { session, job, sampler, history, text, next, usage };
                        self.advance(seq)
                    }
                    Err(e) => {
                        let _ = job.events.send(Event::Failed(e.into()));
                        None
                    }
                }
            }
            Err(e) => {
                let _ = job.events.send(Event::Failed(e));
                None
            }
        }
    }

    /// The prompt through the model, its prefix from or into the cache of compressed
    /// contexts when it has one: the session, the last logits, the usage so far.
    fn prefill(&mut self, job: &Job) -> Result<(Session<'b, B>, Vec<f32>, Usage), Error> {
        let layers = self.backend.config().n_layers;
        let computed = |s: &Session<'b, B>| s.stats.tokens_per_layer.iter().sum::<usize>();
        let reusable = job.reuse
            && self.prefix.enabled()
            && job.prefix >= self.config.prefix_min_tokens
            && job.prefix < job.prompt.len();
        let (session, logits, token_layers, status) = if reusable {
            let key = (
                job.policy.to_file().to_toml().map_err(|e| Error::Engine(e.to_string()))?,
                job.prompt[..job.prefix].to_vec(),
            );
            let (mut session, before, status) = match self.prefix.fork(&key)? {
                Some(session) => {
                    self.metrics.prefix_hits.fetch_add(1, Ordering::Relaxed);
                    (session, 0, "hit")
                }
                None => {
                    self.metrics.prefix_misses.fetch_add(1, Ordering::Relaxed);
                    let mut session = Session::new(self.backend, job.policy.clone())?;
                    session.prefill(&job.prompt[..job.prefix], Logits::Last)?;
                    let before = computed(&session);
                    self.prefix.insert(key, session.fork()?);
                    (session, before, "miss")
                }
            };
            let out = session.prefill(&job.prompt[job.prefix..], Logits::Last)?;
            let after = computed(&session);
            (session, out.last().to_vec(), before + after, status)
        } else {
            let mut session = Session::new(self.backend, job.policy.clone())?;
            let out = session.prefill(&job.prompt, Logits::Last)?;
            let c = computed(&session);
            (session, out.last().to_vec(), c, "off")
        };
        let usage = Usage {
            prompt_tokens: job.prompt.len(),
            completion_tokens: 0,
            total_tokens: job.prompt.len(),
            sieve: Pruning {
                policy: job.policy.name.clone(),
                prompt_token_layers: token_layers,
                prompt_token_layers_unpruned: job.prompt.len() * layers,
                kv_bytes: 0,
                kv_bytes_unpruned: 0,
                prefix_cache: status,
                prefix_tokens: if status == "off" { 0 } else { job.prefix },
            },
        };
        Ok((session, logits, usage))
    }

    /// Sends the text of `seq.next` and ends the sequence when it should end: returns the
    /// sequence while it goes on.
    fn advance(&self, mut seq: Sequence<'b, B>) -> Option<Sequence<'b, B>> {
        let reason = (|| -> Result<Option<&'static str>, Error> {
            if self.tokenizer.eos.contains(&seq.next) {
                return Ok(Some("stop"));
            }
            seq.history.push(seq.next);
            let (piece, stopped) = seq.text.push(self.tokenizer, seq.next)?;
            if !piece.is_empty() {
                let _ = seq.job.events.send(Event::Text(piece));
            }
            if stopped {
                return Ok(Some("stop"));
            }
            if seq.text.tokens().len() >= seq.job.settings.max_tokens || !seq.session.can_take(1) {
                return Ok(Some("length"));
            }
            Ok(None)
        })();
        match reason {
            Ok(None) => Some(seq),
            Ok(Some(finish_reason)) => {
                self.finish(seq, finish_reason);
                None
            }
            Err(e) => {
                let _ = seq.job.events.send(Event::Failed(e));
                None
            }
        }
    }

    fn finish(&self, mut seq: Sequence<'b, B>, finish_reason: &'static str) {
        match seq.text.finish(self.tokenizer) {
            Ok(rest) if !rest.is_empty() => {
                let _ = seq.job.events.send(Event::Text(rest));
            }
            Ok(_) => {}
            Err(e) => {
                let _ = seq.job.events.send(Event::Failed(e.into()));
                return;
            }
        }
        let generated = seq.text.tokens().len();
        let mut usage = seq.usage;
        usage.completion_tokens = generated;
        usage.total_tokens = usage.prompt_tokens + generated;
        usage.sieve.kv_bytes = seq.session.kv_bytes();
        usage.sieve.kv_bytes_unpruned = seq.session.stats.kv_bytes_unpruned;
        self.metrics.tokens(usage.prompt_tokens, generated);
        let _ = seq.job.events.send(Event::Done(Done { finish_reason, usage }));
    }

    /// One decode step for every active sequence.
    fn step(&self, active: &mut Vec<Sequence<'b, B>>) {
        let tokens: Vec<u32> = active.iter().map(|s| s.next).collect();
        let rows = {
            let mut sessions: Vec<&mut Session<'b, B>> = active.iter_mut().map(|s| &mut s.session).collect();
            Session::step_batch(&mut sessions, &tokens)
        };
        let rows = match rows {
            Ok(rows) => rows,
            Err(e) => {
                // Only a backend failure gets here (inputs were checked): every sequence
                // of the step is unusable.
                for seq in active.drain(..) {
                    let _ = seq.job.events.send(Event::Failed(Error::Engine(e.to_string())));
                }
                return;
            }
        };
        let sequences = std::mem::take(active);
        for (mut seq, logits) in sequences.into_iter().zip(rows) {
            match seq.sampler.sample(&logits, &seq.history) {
                Ok(next) => {
                    seq.next = next;
                    if let Some(seq) = self.advance(seq) {
                        active.push(seq);
                    }
                }
                Err(e) => {
                    let _ = seq.job.events.send(Event::Failed(e.into()));
                }
            }
        }
    }
}
