//! A session: the KV cache of one conversation, prefill and decode steps, with the
//! policy's pruning applied.
//!
//! Prefill runs the prompt through the layers. After a layer whose successor is a
//! pruning layer of `[prefill]`, the prompt's remaining tokens are scored from that
//! layer's attention and only the kept rows (with their original positions) go on, so
//! later layers compute nothing for the others. After each layer, `[kv]` cuts that
//! layer's entries from this prefill to their budget (entries an earlier prefill of the
//! conversation kept stay as they are). During decoding, `[decode]` holds each layer's cache under
//! its budget, evicting the lowest-scoring entries (never sinks or recent ones).
//!
//! A `gemfilter` prefill first runs the layers before its pruning layer on the whole prompt
//! only to score it, forgets what they cached, and then runs every layer on the kept tokens
//! alone (at their original positions).

use std::time::Instant;

use sieve_core::policy::{DecodePolicy, PrefillPolicy};
use sieve_core::{Observation, Policy, PrefillKind, Scorer, Selection, Tensor};

use sieve_backend::{Backend, BackendTensor as BTensor, LayerCache, LayerCall, LayerOutput, Probe};

use crate::error::{Error, Result};
use crate::stats::{RunStats, causal_pairs, layer_flops};

mod renumber;
mod revive;

/// Which logits [`Session::prefill`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logits {
    /// The last prompt token's.
    Last,
    /// Every row that reached the last layer (all prompt tokens unless prefill pruned).
    All,
}

/// Logits of a prefill, row by row.
#[derive(Debug, Clone)]
pub struct PrefillOutput {
    /// `rows x vocab`, row-major.
    pub logits: Vec<f32>,
    /// Original position of each row.
    pub positions: Vec<usize>,
    /// Vocabulary size (row length).
    pub vocab: usize,
}

impl PrefillOutput {
    /// Logits of the last row.
    pub fn last(&self) -> &[f32] {
        &self.logits[self.logits.len() - self.vocab..]
    }

    /// Logits of row `i`.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.logits[i * self.vocab..(i + 1) * self.vocab]
    }
}

struct DecodeState<T> {
    policy: DecodePolicy,
    scorers: Vec<Box<dyn Scorer<T>>>,
    /// Each layer's latest scores: one per entry, or (per-head selection) one row per KV
    /// head, row after row.
    scores: Vec<Option<Vec<f32>>>,
}

impl<T: Tensor> DecodeState<T> {
    fn per_head(&self) -> bool {
        self.policy.selection == Selection::Head
    }

    /// Scores of an observation, in the layout of [`DecodeState::scores`].
    fn score(&mut self, l: usize, obs: &Observation<'_, T>) -> sieve_core::Result<Vec<f32>> {
        if self.per_head() {
            self.scorers[l].score_kv_heads(obs)?.to_host()
        } else {
            self.scorers[l].score_tokens(obs)?.to_host()
        }
    }
}

/// `scores` (rows of `len` values) with only the values at `kept` (one list for every row,
/// or one per row) left in each row.
fn keep_scores(scores: &[f32], len: usize, kept: &[Vec<usize>]) -> Vec<f32> {
    scores
        .chunks_exact(len.max(1))
        .enumerate()
        .flat_map(|(r, row)| kept[r.min(kept.len() - 1)].iter().map(move |&i| row[i]))
        .collect()
}

/// `out`'s probes without their first `d` key columns (entries the cache just dropped),
/// `m` columns left.
fn narrow_keys<T: Tensor>(mut out: LayerOutput<T>, d: usize, m: usize) -> sieve_core::Result<LayerOutput<T>> {
    out.attention = out.attention.map(|a| a.narrow(2, d, m)).transpose()?;
    out.attention_sums = out.attention_sums.map(|a| a.narrow(2, d, m)).transpose()?;
    Ok(out)
}

/// The state of one conversation on one backend.
pub struct Session<'b, B: Backend> {
    backend: &'b B,
    policy: Policy,
    caches: Vec<LayerCache<BTensor<B>>>,
    /// Position the next token gets: the number of tokens fed until the cache is
    /// renumbered ([`Session::renumber`]), below it afterwards.
    next_pos: usize,
    /// Tokens fed since the session began (or the position truncated to).
    seen: usize,
    /// Whether the positions were renumbered, so that they no longer count tokens.
    renumbered: bool,
    decode: Option<DecodeState<BTensor<B>>>,
    /// What prefill pruned, kept for revival while decoding (a policy with `revive`).
    aux: Option<revive::Aux<BTensor<B>>>,
    /// Per layer, the position below which a local layer has dropped every entry (0 for
    /// global layers): a conversation cannot go back past what that leaves visible.
    window_floor: Vec<usize>,
    /// Statistics of the latest prefill and the steps after it.
    pub stats: RunStats,
}

/// Adds a scorer's needs to a probe: `usize::MAX` queries (every query) is served by the
/// column sums, which is all an accumulating scorer reads.
fn add_needs(probe: &mut Probe, queries: usize, rows: usize) {
    if queries == usize::MAX {
        probe.column_sums = true;
    } else {
        probe.last_queries = probe.last_queries.max(queries.min(rows));
    }
}

/// Wraps a backend's own error with its name.
fn backend_error<B: Backend>(backend: &B) -> impl Fn(B::Error) -> Error + '_ {
    move |e| Error::backend(backend.name(), e)
}

/// The attention a scorer with these needs observes.
fn attention_for<T>(out: &LayerOutput<T>, queries: usize) -> Option<&T> {
    if queries == usize::MAX { out.attention_sums.as_ref() } else { out.attention.as_ref() }
}

impl<'b, B: Backend> Session<'b, B> {
    /// A new, empty session; fails if the policy does not fit the model.
    pub fn new(backend: &'b B, policy: Policy) -> Result<Self> {
        let config = backend.config();
        let n_layers = config.n_layers;
        policy.check_model(n_layers)?;
        // Backends mask a local layer's window by the first KV head's positions, which are
        // every head's only while heads keep the same entries.
        let per_head = policy.kv.as_ref().is_some_and(|k| k.selection.is_per_head())
            || policy.decode.as_ref().is_some_and(|d| d.selection.is_per_head());
        if per_head && config.n_kv_heads > 1 && config.style.sliding_window.is_some() {
            return Err(Error::Invalid(format!(
                "policy `{}` selects per KV head, which sieve does not support on a model with sliding-window layers and {} KV heads; use selection = \"layer\"",
                policy.name, config.n_kv_heads
            )));
        }
        let decode = policy.decode.clone().map(|d| DecodeState {
            scorers: (0..n_layers).map(|_| d.scorer.build()).collect(),
            scores: vec![None; n_layers],
            policy: d,
        });
        let stats = RunStats { backend: backend.name().into(), policy: policy.name.clone(), ..RunStats::default() };
        let aux = policy.prefill.as_ref().filter(|p| p.revive > 0).map(|p| revive::Aux::new(&p.layers, p.revive));
        Ok(Self {
            aux,
            backend,
            policy,
            caches: (0..n_layers).map(|_| LayerCache::default()).collect(),
            window_floor: vec![0; n_layers],
            next_pos: 0,
            seen: 0,
            renumbered: false,
            decode,
            stats,
        })
    }

    /// The backend.
    pub fn backend(&self) -> &'b B {
        self.backend
    }

    /// The policy.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Position the next token will get (the number of tokens fed, until the cache is
    /// renumbered).
    pub fn next_position(&self) -> usize {
        self.next_pos
    }

    /// Tokens fed since the session began (or since the position it was truncated to).
    pub fn tokens_seen(&self) -> usize {
        self.seen
    }

    /// An independent copy of the session (caches copied into fresh tensors, scorers with
    /// what they learnt): a conversation can go on from a common prefix in both, as when a
    /// server reuses a document's compressed cache for several questions.
    pub fn fork(&self) -> Result<Self> {
        let decode = self.decode.as_ref().map(|d| DecodeState {
            policy: d.policy.clone(),
            scorers: d.scorers.iter().map(|s| s.clone_box()).collect(),
            scores: d.scores.clone(),
        });
        Ok(Self {
            backend: self.backend,
            policy: self.policy.clone(),
            caches: self.caches.iter().map(LayerCache::deep_copy).collect::<sieve_core::Result<_>>()?,
            next_pos: self.next_pos,
            seen: self.seen,
            renumbered: self.renumbered,
            decode,
            aux: self.aux.clone(),
            window_floor: self.window_floor.clone(),
            stats: self.stats.clone(),
        })
    }

    /// The per-layer caches.
    pub fn caches(&self) -> &[LayerCache<BTensor<B>>] {
        &self.caches
    }

    /// Bytes of the live KV entries (a head's padding rows, when heads keep different
    /// counts, are allocated but not live).
    pub fn kv_bytes(&self) -> usize {
        let config = self.backend.config();
        let per_head = config.kv_bytes_per_token_layer() / config.n_kv_heads.max(1);
        self.caches.iter().map(|c| c.live_entries() * per_head).sum()
    }

    /// Bytes the KV storage has allocated: the live entries and the room a backend reserved
    /// for the next ones.
    pub fn kv_bytes_allocated(&self) -> usize {
        let per = self.backend.config().kv_bytes_per_token_layer();
        self.caches.iter().map(|c| c.capacity() * per).sum()
    }

    /// Forgets every token at position `pos` or later, so that a conversation can continue
    /// from a common prefix. Fails, changing nothing, when a local layer has already dropped
    /// entries that a token at `pos` would see (the conversation went on for more than a
    /// window past `pos`): the caller then starts a new session.
    pub fn truncate(&mut self, pos: usize) -> Result<()> {
        if pos >= self.seen {
            return Ok(());
        }
        if self.renumbered {
            return Err(Error::Invalid(format!(
                "cannot go back to token {pos}: the cache was renumbered to run past the context (or to keep positions within the cache)"
            )));
        }
        let config = self.backend.config();
        for (l, &floor) in self.window_floor.iter().enumerate() {
            if let Some(w) = config.window(l)
                && pos < self.next_pos
                && floor > (pos + 1).saturating_sub(w)
            {
                return Err(Error::Invalid(format!(
                    "cannot go back to position {pos}: local layer {l} (window {w}) has dropped the positions before {floor}"
                )));
            }
        }
        for (l, cache) in self.caches.iter_mut().enumerate() {
            let before = cache.len();
            cache.truncate(pos);
            // The decode scorer keeps what it learnt about the surviving entries (H2O's
            // running sums), as after any eviction.
            if let Some(d) = &mut self.decode
                && cache.len() < before
            {
                let kept: Vec<usize> = (0..cache.len()).collect();
                d.scorers[l].retain(&kept)?;
                if let Some(scores) = &mut d.scores[l] {
                    *scores = keep_scores(scores, before, &[kept]);
                }
            }
        }
        if let Some(aux) = &mut self.aux {
            aux.truncate(pos)?;
        }
        self.next_pos = self.next_pos.min(pos);
        self.seen = self.next_pos;
        Ok(())
    }

    /// The checks a backend relies on (see [`Backend`]): every token id indexes the
    /// vocabulary and every position fits the context. Positions are the engine's own, so
    /// they increase and follow the cache by construction.
    fn check_input(&self, tokens: &[u32]) -> Result<()> {
        let config = self.backend.config();
        if let Some(&id) = tokens.iter().find(|&&t| t as usize >= config.vocab) {
            return Err(Error::TokenId { id, vocab: config.vocab });
        }
        let needed = self.next_pos + tokens.len();
        if needed > config.context {
            return Err(Error::ContextOverflow { needed, context: config.context });
        }
        Ok(())
    }

    /// What layer `l` must report during a prefill of `rows` tokens.
    fn probe_for(&self, l: usize, prune_next: bool, rows: usize) -> Probe {
        let mut probe = Probe::NONE;
        if let (true, Some(p)) = (prune_next, &self.policy.prefill) {
            add_needs(&mut probe, p.scorer.build::<BTensor<B>>().needs().attention_queries, rows);
        }
        if let Some(kv) = &self.policy.kv {
            let needs = kv.scorer.build::<BTensor<B>>().needs();
            add_needs(&mut probe, needs.attention_queries, rows);
            probe.queries |= needs.queries;
        }
        if let Some(d) = &self.decode {
            add_needs(&mut probe, d.scorers[l].needs().attention_queries, rows);
        }
        probe
    }

    /// Runs the prompt `tokens` through every layer and returns logits.
    pub fn prefill(&mut self, tokens: &[u32], want: Logits) -> Result<PrefillOutput> {
        if tokens.is_empty() {
            return Err(Error::EmptyPrompt);
        }
        self.make_room(tokens.len())?;
        self.check_input(tokens)?;
        let config = self.backend.config().clone();
        let err = backend_error(self.backend);
        let n_layers = config.n_layers;
        let n = tokens.len();
        let mut positions: Vec<usize> = (self.next_pos..self.next_pos + n).collect();
        let mut hidden = self.backend.embed(tokens).map_err(&err)?;
        let mut stage = 0;
        let mut stats = RunStats {
            backend: self.backend.name().into(),
            policy: self.policy.name.clone(),
            prompt_tokens: n,
            tokens_per_layer: vec![0; n_layers],
            ..RunStats::default()
        };
        let device = self.backend.device();
        let prefill = self.policy.prefill.as_ref().map(|p| p.for_prompt(tokens));
        let lazy = prefill.clone().filter(|p| p.kind == PrefillKind::Lazy);
        if let Some(p) = prefill.filter(|p| p.kind == PrefillKind::Gemfilter) {
            let kept = self.filter_pass(&hidden, &positions, &p, &mut stats)?;
            if kept.len() < n {
                hidden = hidden.index_select(0, &kept)?;
                positions = kept.iter().map(|&i| positions[i]).collect();
            }
        }
        for l in 0..n_layers {
            let prune_next = lazy.as_ref().is_some_and(|p| p.layers.get(stage) == Some(&(l + 1)));
            let probe = self.probe_for(l, prune_next, positions.len());
            let call = LayerCall::new(l, &hidden, &positions, probe);
            let out = self.backend.layer(call, &mut self.caches[l]).map_err(&err)?;
            // The rows of this call, for a query probe (prefill pruning may drop some below).
            let call_positions = if probe.queries { positions.clone() } else { Vec::new() };
            let rows = positions.len();
            stats.tokens_per_layer[l] += rows;
            stats.prefill_flops += layer_flops(&config, rows, causal_pairs(&positions, self.caches[l].positions()));
            let unpruned_pairs = n * self.seen + n * (n + 1) / 2;
            stats.prefill_flops_unpruned += layer_flops(&config, n, unpruned_pairs);
            hidden = out.hidden.clone();
            let started = Instant::now();

            // Prefill pruning: choose which current rows go on to layer l + 1.
            if let (true, Some(p)) = (prune_next, &lazy) {
                let scores = self.prompt_scores(l, &out, &positions, p)?;
                let kept = p.selector.select_with(&scores, p.budget(stage, n))?;
                if let Some(aux) = &mut self.aux {
                    aux.record(stage, &hidden, &positions, &kept, n)?;
                }
                if kept.len() < rows {
                    hidden = hidden.index_select(0, &kept)?;
                    positions = kept.iter().map(|&i| positions[i]).collect();
                }
                stage += 1;
            }

            // A local layer forgets what no later query can see; the probes lose those columns.
            let known = self.caches[l].positions().partition_point(|&p| p < self.next_pos);
            let out = match self.evict_outside_window(l, self.next_pos + n - 1, known)? {
                0 => out,
                d => narrow_keys(out, d, self.caches[l].len())?,
            };

            // Observation of the whole cache, for KV eviction and the decode budget.
            if self.policy.kv.is_some() || self.decode.is_some() {
                let cache = &self.caches[l];
                let (keys, values) = (cache.keys()?, cache.values()?);
                let inv_freq = config.layer_rope_inv_freq(l);
                let query_probe = out.queries.as_ref().map(|queries| sieve_core::QueryProbe {
                    queries,
                    positions: &call_positions,
                    rope_inv_freq: &inv_freq,
                });
                let observe = |queries: usize| Observation {
                    layer: l,
                    step: 0,
                    kv_heads: config.n_kv_heads,
                    positions: cache.positions(),
                    attention: attention_for(&out, queries),
                    keys: keys.as_ref(),
                    values: values.as_ref(),
                    queries: query_probe.clone(),
                    device: device.clone(),
                };
                let mut decode_scores = None;
                if let Some(d) = &mut self.decode {
                    let obs = observe(d.scorers[l].needs().attention_queries);
                    decode_scores = Some(d.score(l, &obs)?);
                }
                let mut kept_kv = None;
                let mut kept_heads = None;
                if let Some(kv) = &self.policy.kv {
                    let mut scorer = kv.scorer.build::<BTensor<B>>();
                    let obs = observe(scorer.needs().attention_queries);
                    // Only this call's entries are cut: what an earlier call kept stays (a
                    // conversation's context is compressed once, not again at every turn).
                    let old = cache.positions().partition_point(|&p| p < self.next_pos);
                    let budget = kv.budget_of(l, n_layers, cache.len() - old, n)?;
                    let mut selector = kv.selector.clone();
                    selector.sinks = selector.sinks.saturating_sub(old);
                    let with_old =
                        |new: Vec<usize>| (0..old).chain(new.into_iter().map(|i| i + old)).collect::<Vec<_>>();
                    match kv.selection {
                        Selection::Layer => {
                            let scores = scorer.score_tokens(&obs)?.to_host()?;
                            kept_kv = Some(with_old(selector.select_with(&scores[old..], budget)?));
                        }
                        Selection::Head => {
                            let scores = scorer.score_kv_heads(&obs)?.to_host()?;
                            let k = cache.len();
                            kept_heads = Some(
                                scores
                                    .chunks_exact(k)
                                    .map(|row| selector.select_with(&row[old..], budget).map(with_old))
                                    .collect::<sieve_core::Result<Vec<_>>>()?,
                            );
                        }
                        Selection::Ada => {
                            let scores = scorer.score_kv_heads(&obs)?.to_host()?;
                            let rows: Vec<&[f32]> = scores.chunks_exact(cache.len()).map(|r| &r[old..]).collect();
                            let kept = selector.select_ada(&rows, budget, kv.safeguard)?;
                            kept_heads = Some(kept.into_iter().map(with_old).collect());
                        }
                    }
                }
                let cache_len = self.caches[l].len();
                if let Some(kept) = &kept_kv {
                    self.caches[l].retain(kept)?;
                }
                // The rows behind each head's new rows (its padding repeats a kept one).
                let kept_rows = kept_heads.as_ref().map(|kept| self.caches[l].retain_heads(kept)).transpose()?;
                if let Some(d) = &mut self.decode {
                    let mut s = decode_scores.unwrap_or_default();
                    if let Some(kept) = &kept_kv {
                        d.scorers[l].retain(kept)?;
                        s = keep_scores(&s, cache_len, std::slice::from_ref(kept));
                    }
                    if let Some(kept) = &kept_rows {
                        d.scorers[l].retain_heads(kept)?;
                        s = keep_scores(&s, cache_len, kept);
                    }
                    d.scores[l] = Some(s);
                }
            }
            stats.prune_ms += started.elapsed().as_secs_f64() * 1e3;
        }
        let rows = positions.len();
        let head_in = match want {
            Logits::Last => hidden.narrow(0, rows - 1, 1)?,
            Logits::All => hidden,
        };
        let logits = self.backend.logits(&head_in).map_err(&err)?;
        let vocab = logits.dim(1)?;
        let logits = logits.to_host()?;
        let out_positions = match want {
            Logits::Last => vec![positions[rows - 1]],
            Logits::All => positions,
        };
        self.next_pos += n;
        self.seen += n;
        stats.flops_saved = 1.0 - stats.prefill_flops / stats.prefill_flops_unpruned.max(1.0);
        self.stats = stats;
        self.update_kv_stats();
        Ok(PrefillOutput { logits, positions: out_positions, vocab })
    }

    /// Scores of this call's `positions` (the rows of `out`, the output of layer `l`) by the
    /// prefill scorer of `p`.
    fn prompt_scores(
        &self,
        l: usize,
        out: &LayerOutput<BTensor<B>>,
        positions: &[usize],
        p: &PrefillPolicy,
    ) -> Result<Vec<f32>> {
        let cache = &self.caches[l];
        let (m, total) = (positions.len(), cache.len());
        let mut scorer = p.scorer.build::<BTensor<B>>();
        let queries = scorer.needs().attention_queries;
        let attention = attention_for(out, queries).map(|a| a.narrow(2, total - m, m)).transpose()?;
        let keys = cache.keys()?.map(|k| k.narrow(1, total - m, m)).transpose()?;
        let values = cache.values()?.map(|v| v.narrow(1, total - m, m)).transpose()?;
        let obs = Observation {
            layer: l,
            step: 0,
            kv_heads: self.backend.config().n_kv_heads,
            positions,
            attention: attention.as_ref(),
            keys: keys.as_ref(),
            values: values.as_ref(),
            queries: None,
            device: self.backend.device(),
        };
        Ok(scorer.score_tokens(&obs)?.to_host()?)
    }

    /// The first pass of a `gemfilter` prefill: the layers before `p`'s pruning layer on
    /// every row of `hidden` (the prompt's embeddings), the last of them scored, the rows
    /// kept; then those layers' caches lose this call's entries again. Their work is added
    /// to `stats`.
    fn filter_pass(
        &mut self,
        hidden: &BTensor<B>,
        positions: &[usize],
        p: &PrefillPolicy,
        stats: &mut RunStats,
    ) -> Result<Vec<usize>> {
        let config = self.backend.config().clone();
        let err = backend_error(self.backend);
        let last = p.layers[0] - 1;
        let mut h = hidden.clone();
        let mut kept = Vec::new();
        for l in 0..=last {
            let mut probe = Probe::NONE;
            if l == last {
                add_needs(&mut probe, p.scorer.build::<BTensor<B>>().needs().attention_queries, positions.len());
            }
            let out = self.backend.layer(LayerCall::new(l, &h, positions, probe), &mut self.caches[l]).map_err(&err)?;
            stats.tokens_per_layer[l] += positions.len();
            stats.prefill_flops +=
                layer_flops(&config, positions.len(), causal_pairs(positions, self.caches[l].positions()));
            if l == last {
                let started = Instant::now();
                let scores = self.prompt_scores(l, &out, positions, p)?;
                kept = p.selector.select_with(&scores, p.budget(0, positions.len()))?;
                stats.prune_ms += started.elapsed().as_secs_f64() * 1e3;
            }
            h = out.hidden;
        }
        for cache in &mut self.caches[..=last] {
            cache.truncate(self.next_pos);
        }
        Ok(kept)
    }

    /// Feeds `tokens` after what the session holds, unpruned, in one call per layer: what
    /// `tokens.len()` decode steps would compute (teacher forcing, e.g. a continuation
    /// scored against a compressed context), without the policy's prefill pruning or KV
    /// compression. The statistics then describe this call. A policy with a `[decode]`
    /// budget evicts between tokens, so its tokens must go one [`Session::step`] at a time:
    /// an error here.
    pub fn extend(&mut self, tokens: &[u32], want: Logits) -> Result<PrefillOutput> {
        if self.decode.is_some() {
            return Err(Error::Invalid(format!(
                "policy `{}` evicts while decoding: feed its tokens one step at a time",
                self.policy.name
            )));
        }
        let (prefill, kv) = (self.policy.prefill.take(), self.policy.kv.take());
        let out = self.prefill(tokens, want);
        (self.policy.prefill, self.policy.kv) = (prefill, kv);
        out
    }

    /// Feeds one token and returns the logits of the next.
    pub fn step(&mut self, token: u32) -> Result<Vec<f32>> {
        self.prepare_step(token)?;
        let err = backend_error(self.backend);
        let mut hidden = self.backend.embed(&[token]).map_err(&err)?;
        for l in 0..self.backend.config().n_layers {
            let (input, positions, revived) = self.step_input(l, hidden, self.next_pos)?;
            let probe = self.before_step_layer(l)?;
            let call = LayerCall::new(l, &input, &positions, probe);
            let out = self.backend.layer(call, &mut self.caches[l]).map_err(&err)?;
            self.note_revived(l, &positions, revived)?;
            self.choose_revivals(l, &out)?;
            self.after_step_layer(l, &out)?;
            hidden = self.step_output(out.hidden, positions, revived)?;
        }
        self.end_revival();
        self.next_pos += 1;
        self.seen += 1;
        self.update_kv_stats();
        Ok(self.backend.logits(&hidden).map_err(&err)?.to_host()?)
    }

    /// One decode step for several sessions of the same backend at once, `tokens[i]`
    /// fed to `sessions[i]`: each layer runs once for all of them
    /// ([`Backend::layer_batch`], so the weights are read once per step rather than once
    /// per session), each session attends over and prunes its own cache as
    /// [`Session::step`] does. Returns each session's next-token logits.
    ///
    /// The sessions must be distinct and share one backend. Inputs are checked for every
    /// session before any layer runs; a failure inside a layer leaves every session of the
    /// batch unusable (truncate or drop them).
    pub fn step_batch(sessions: &mut [&mut Session<'b, B>], tokens: &[u32]) -> Result<Vec<Vec<f32>>> {
        let Some(first) = sessions.first() else { return Ok(Vec::new()) };
        let backend = first.backend;
        if sessions.len() != tokens.len() {
            return Err(Error::Invalid(format!(
                "{} sessions but {} tokens in a batched step",
                sessions.len(),
                tokens.len()
            )));
        }
        if sessions.iter().any(|s| !std::ptr::eq(s.backend, backend)) {
            return Err(Error::Invalid("a batched step needs sessions of one backend".into()));
        }
        for (s, &t) in sessions.iter_mut().zip(tokens) {
            s.prepare_step(t)?;
        }
        let err = backend_error(backend);
        let positions: Vec<[usize; 1]> = sessions.iter().map(|s| [s.next_pos]).collect();
        let embedded = backend.embed(tokens).map_err(&err)?;
        let mut hidden = (0..tokens.len()).map(|i| embedded.narrow(0, i, 1)).collect::<sieve_core::Result<Vec<_>>>()?;
        for l in 0..backend.config().n_layers {
            // Each session's rows: the tokens it revives, then its new token.
            let mut inputs = Vec::with_capacity(sessions.len());
            for (s, (h, p)) in sessions.iter_mut().zip(hidden.drain(..).zip(&positions)) {
                inputs.push(s.step_input(l, h, p[0])?);
            }
            let probes = sessions.iter_mut().map(|s| s.before_step_layer(l)).collect::<Result<Vec<_>>>()?;
            let calls: Vec<_> =
                inputs.iter().zip(probes).map(|((h, p, _), probe)| LayerCall::new(l, h, p, probe)).collect();
            let mut caches: Vec<_> = sessions.iter_mut().map(|s| &mut s.caches[l]).collect();
            let outs = backend.layer_batch(&calls, &mut caches).map_err(&err)?;
            drop((caches, calls));
            for ((s, out), (_, p, revived)) in sessions.iter_mut().zip(outs).zip(inputs) {
                s.note_revived(l, &p, revived)?;
                s.choose_revivals(l, &out)?;
                s.after_step_layer(l, &out)?;
                hidden.push(s.step_output(out.hidden, p, revived)?);
            }
        }
        for s in sessions.iter_mut() {
            s.end_revival();
            s.next_pos += 1;
            s.seen += 1;
            s.update_kv_stats();
        }
        let rows: Vec<&BTensor<B>> = hidden.iter().collect();
        let logits = backend.logits(&BTensor::<B>::cat(&rows, 0)?).map_err(&err)?.to_host()?;
        let vocab = logits.len() / tokens.len();
        Ok(logits.chunks_exact(vocab).map(<[f32]>::to_vec).collect())
    }

    /// What a decode step does before any layer runs: the decode policy's eviction in
    /// every layer whose cache is at its budget, renumbering if the positions must stay
    /// within the cache or the context is full, then the checks of the input.
    fn prepare_step(&mut self, token: u32) -> Result<()> {
        // Nothing of a step that failed midway is carried into this one.
        self.end_revival();
        for l in 0..self.caches.len() {
            self.evict_for_decode(l)?;
        }
        self.make_room(1)?;
        self.check_input(&[token])
    }

    /// The decode policy's eviction in layer `l` when its cache is at the budget.
    fn evict_for_decode(&mut self, l: usize) -> Result<()> {
        let config = self.backend.config();
        if let Some(d) = &mut self.decode
            && self.caches[l].len() >= d.policy.budget
        {
            let len = self.caches[l].len();
            let rows = if d.per_head() { config.n_kv_heads } else { 1 };
            let scores = d.scores[l]
                .take()
                .filter(|s| s.len() == rows * len)
                .ok_or_else(|| Error::Invalid(format!("layer {l}: no current scores for decode eviction")))?;
            if d.per_head() {
                // A head's padding rows (heads keeping different counts) are not candidates.
                let cache = &self.caches[l];
                let kept = scores
                    .chunks_exact(len)
                    .enumerate()
                    .map(|(h, row)| {
                        let pad = cache.head_padding(h);
                        Ok(d.policy.selector.select(&row[pad..])?.into_iter().map(|i| i + pad).collect())
                    })
                    .collect::<sieve_core::Result<Vec<Vec<usize>>>>()?;
                let rows = self.caches[l].retain_heads(&kept)?;
                d.scorers[l].retain_heads(&rows)?;
            } else {
                let kept = d.policy.selector.select(&scores)?;
                self.caches[l].retain(&kept)?;
                d.scorers[l].retain(&kept)?;
            }
        }
        Ok(())
    }

    /// The part of a decode step before layer `l` runs: a local layer's window; returns
    /// what the call must probe.
    fn before_step_layer(&mut self, l: usize) -> Result<Probe> {
        // A local layer forgets what this and later queries cannot see.
        let len = self.caches[l].len();
        self.evict_outside_window(l, self.next_pos, len)?;
        // One query: its attention row is also the sum over this call's queries.
        let mut probe = match &self.decode {
            Some(d) if d.scorers[l].needs().attention_queries > 0 => {
                Probe { last_queries: 1, column_sums: false, queries: false }
            }
            _ => Probe::NONE,
        };
        self.revival_probe(l, &mut probe);
        Ok(probe)
    }

    /// The part of a decode step after layer `l` ran: the decode scorer observes it.
    fn after_step_layer(&mut self, l: usize, out: &LayerOutput<BTensor<B>>) -> Result<()> {
        let config = self.backend.config();
        if let Some(d) = &mut self.decode {
            let cache = &self.caches[l];
            if d.scorers[l].is_stateful() || cache.len() >= d.policy.budget {
                let (keys, values) = (cache.keys()?, cache.values()?);
                let obs = Observation {
                    layer: l,
                    step: self.seen as u64,
                    kv_heads: config.n_kv_heads,
                    positions: cache.positions(),
                    attention: out.attention.as_ref(),
                    keys: keys.as_ref(),
                    values: values.as_ref(),
                    queries: None,
                    device: self.backend.device(),
                };
                d.scores[l] = Some(d.score(l, &obs)?);
            }
        }
        Ok(())
    }

    fn evict_outside_window(&mut self, l: usize, query: usize, known: usize) -> Result<usize> {
        let Some(window) = self.backend.config().window(l) else { return Ok(0) };
        let cache = &mut self.caches[l];
        let first_seen = (query + 1).saturating_sub(window);
        let heads = if cache.is_per_head() { self.backend.config().n_kv_heads } else { 1 };
        let d = (0..heads).map(|h| cache.head_positions(h).partition_point(|&p| p < first_seen)).min().unwrap_or(0);
        self.window_floor[l] = self.window_floor[l].max(first_seen);
        if d == 0 {
            return Ok(0);
        }
        let kept: Vec<usize> = (d..cache.len()).collect();
        cache.retain(&kept)?;
        if let Some(dec) = &mut self.decode {
            let kept: Vec<usize> = (d.min(known)..known).collect();
            dec.scorers[l].retain(&kept)?;
            if let Some(scores) = &mut dec.scores[l] {
                *scores = keep_scores(scores, known, std::slice::from_ref(&kept));
            }
        }
        Ok(d)
    }

    fn update_kv_stats(&mut self) {
        let config = self.backend.config();
        let per = config.kv_bytes_per_token_layer();
        // Live entries per KV head (a layer's rows when its heads keep the same count).
        let heads = config.n_kv_heads.max(1);
        self.stats.kv_entries = self.caches.iter().map(|c| c.live_entries().div_ceil(heads)).collect();
        self.stats.kv_bytes = self.kv_bytes();
        self.stats.kv_bytes_allocated = self.kv_bytes_allocated();
        // Unpruned, a local layer holds the last `window` positions.
        let unpruned = |l: usize| config.window(l).map_or(self.seen, |w| self.seen.min(w));
        self.stats.kv_bytes_unpruned = (0..self.caches.len()).map(unpruned).sum::<usize>() * per;
        self.stats.aux_bytes = self.aux.as_ref().map_or(0, |a| a.bytes(config.hidden));
    }
}
