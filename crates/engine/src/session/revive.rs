//! Revival of pruned prompt tokens while decoding: LazyLLM's aux cache.
//!
//! A `lazy` prefill stage at layer `l` computes nothing more for the tokens it prunes, but
//! they keep their entries in layers `0..l`. With `revive = N` the session also keeps
//! their hidden states at the input of layer `l` (the aux cache). At each decoding step,
//! the new token's attention at layer `l - 1` ranks every entry there; a pruned token
//! that ranks within the share of the prompt the stage kept comes back (at most `N` per
//! stage and step, the best-ranked first): from its saved hidden state it runs through
//! layers `l..` at its original position, as extra rows of the step's own layer calls
//! (the weights are read once for all of them), attending to the entries before it, and
//! its keys and values join those layers' caches in position order. So a token is never
//! computed twice in a layer, and never recomputed from layer 0. Revived tokens stay;
//! the aux cache forgets them.

use sieve_backend::{Backend, BackendTensor as BTensor, LayerOutput, Probe};
use sieve_core::Tensor;

use super::Session;
use crate::error::Result;

/// The hidden states of what each stage pruned, and the tokens coming back in this step.
#[derive(Clone)]
pub(super) struct Aux<T> {
    /// Tokens a stage revives at most per step.
    max: usize,
    stages: Vec<Stage<T>>,
    /// Chosen after the layer before a stage, taken up at the stage's layer: the stage's
    /// index and rows of its aux cache.
    chosen: Vec<(usize, Vec<usize>)>,
    /// The rows being revived in this step: hidden states entering the next layer, at
    /// increasing positions.
    active: Option<(T, Vec<usize>)>,
}

#[derive(Clone)]
struct Stage<T> {
    /// The layer the stage prunes before.
    layer: usize,
    /// Share of the latest prompt the stage kept.
    keep: f64,
    /// `[rows, hidden]`: the pruned tokens' input to `layer`.
    hidden: Option<T>,
    /// Their positions, increasing.
    positions: Vec<usize>,
}

impl<T: Tensor> Aux<T> {
    /// An empty aux cache for stages pruning before `layers`.
    pub(super) fn new(layers: &[usize], max: usize) -> Self {
        let stages =
            layers.iter().map(|&layer| Stage { layer, keep: 1.0, hidden: None, positions: Vec::new() }).collect();
        Self { max, stages, chosen: Vec::new(), active: None }
    }

    /// Records what prefill stage `stage` pruned: the rows of `hidden` (at `positions`)
    /// not in `kept` (sorted indices), out of a prompt of `prompt` tokens.
    pub(super) fn record(
        &mut self,
        stage: usize,
        hidden: &T,
        positions: &[usize],
        kept: &[usize],
        prompt: usize,
    ) -> sieve_core::Result<()> {
        let Some(s) = self.stages.get_mut(stage) else { return Ok(()) };
        s.keep = kept.len() as f64 / prompt.max(1) as f64;
        let mut is_kept = vec![false; positions.len()];
        kept.iter().for_each(|&i| is_kept[i] = true);
        let pruned: Vec<usize> = (0..positions.len()).filter(|&i| !is_kept[i]).collect();
        if pruned.is_empty() {
            return Ok(());
        }
        let rows = hidden.index_select(0, &pruned)?;
        // A later prompt's positions follow every earlier one, so the order holds.
        s.hidden = Some(match s.hidden.take() {
            Some(old) => T::cat(&[&old, &rows], 0)?,
            None => rows,
        });
        s.positions.extend(pruned.iter().map(|&i| positions[i]));
        Ok(())
    }

    /// Forgets the tokens at position `pos` or later.
    pub(super) fn truncate(&mut self, pos: usize) -> sieve_core::Result<()> {
        for s in &mut self.stages {
            let keep = s.positions.partition_point(|&p| p < pos);
            s.positions.truncate(keep);
            s.hidden = match (s.hidden.take(), keep) {
                (_, 0) | (None, _) => None,
                (Some(h), k) => Some(h.narrow(0, 0, k)?),
            };
        }
        Ok(())
    }

    /// Forgets everything (the positions were renumbered).
    pub(super) fn clear(&mut self) {
        for s in &mut self.stages {
            s.hidden = None;
            s.positions.clear();
        }
    }

    /// Bytes of hidden states held.
    pub(super) fn bytes(&self, hidden: usize) -> usize {
        self.stages.iter().map(|s| s.positions.len() * hidden * std::mem::size_of::<f32>()).sum()
    }

    /// The stage scored by layer `l`'s attention (the one pruning before `l + 1`), if it
    /// holds any token.
    fn scored_by(&self, l: usize) -> Option<usize> {
        self.stages.iter().position(|s| s.layer == l + 1 && !s.positions.is_empty())
    }
}

impl<'b, B: Backend> Session<'b, B> {
    /// What layer `l` must report in a decode step for revival: the new token's attention
    /// (the call's last row) when a stage with pruned tokens follows.
    pub(super) fn revival_probe(&self, l: usize, probe: &mut Probe) {
        if self.aux.as_ref().is_some_and(|a| a.scored_by(l).is_some()) {
            probe.last_queries = probe.last_queries.max(1);
        }
    }

    /// After layer `l` of a decode step: when a stage follows, chooses which of its pruned
    /// tokens come back, by the new token's attention over layer `l`'s entries.
    pub(super) fn choose_revivals(&mut self, l: usize, out: &LayerOutput<BTensor<B>>) -> Result<()> {
        let Some(aux) = &mut self.aux else { return Ok(()) };
        let Some(s) = aux.scored_by(l) else { return Ok(()) };
        let Some(attention) = &out.attention else { return Ok(()) };
        let cache = self.caches[l].positions();
        let m = cache.len();
        // `[heads, rows, m]`: the last row is the new token's.
        let (heads, rows) = (attention.dim(0)?, attention.dim(1)?);
        let last = attention.to_host()?;
        let mut scores = vec![0f32; m];
        for h in 0..heads {
            let row = &last[(h * rows + rows - 1) * m..(h * rows + rows) * m];
            scores.iter_mut().zip(row).for_each(|(s, &p)| *s += p);
        }
        // The entries the stage would keep now: its share of this layer's entries.
        let stage = &aux.stages[s];
        let k = ((stage.keep * m as f64).ceil() as usize).clamp(1, m);
        let mut order: Vec<usize> = (0..m).collect();
        order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
        // Its pruned tokens among them, best-ranked first, as rows of its aux cache.
        let mut rows: Vec<usize> =
            order[..k].iter().filter_map(|&i| stage.positions.binary_search(&cache[i]).ok()).take(aux.max).collect();
        if rows.is_empty() {
            return Ok(());
        }
        rows.sort_unstable();
        aux.chosen.push((s, rows));
        Ok(())
    }

    /// The rows layer `l` of a decode step runs before the new token's: the tokens being
    /// revived, joined by those chosen for a stage at `l` (which leave the aux cache).
    /// Their hidden states and positions (increasing, all before the new token's).
    pub(super) fn revived_rows(&mut self, l: usize) -> Result<Option<(BTensor<B>, Vec<usize>)>> {
        let Some(aux) = &mut self.aux else { return Ok(None) };
        if let Some(at) = aux.chosen.iter().position(|(s, _)| aux.stages[*s].layer == l) {
            let (s, rows) = aux.chosen.swap_remove(at);
            let stage = &mut aux.stages[s];
            if let Some(hidden) = &stage.hidden {
                let joining = hidden.index_select(0, &rows)?;
                let joining_pos: Vec<usize> = rows.iter().map(|&r| stage.positions[r]).collect();
                let rest: Vec<usize> = (0..stage.positions.len()).filter(|r| rows.binary_search(r).is_err()).collect();
                stage.hidden = if rest.is_empty() { None } else { Some(hidden.index_select(0, &rest)?) };
                stage.positions = rest.iter().map(|&r| stage.positions[r]).collect();
                self.stats.revived_tokens += joining_pos.len();
                aux.active = Some(match aux.active.take() {
                    None => (joining, joining_pos),
                    Some((h, pos)) => {
                        let all = BTensor::<B>::cat(&[&h, &joining], 0)?;
                        let merged: Vec<usize> = pos.iter().chain(&joining_pos).copied().collect();
                        let mut order: Vec<usize> = (0..merged.len()).collect();
                        order.sort_by_key(|&i| merged[i]);
                        (all.index_select(0, &order)?, order.iter().map(|&i| merged[i]).collect())
                    }
                });
            }
        }
        Ok(aux.active.take())
    }

    /// Layer `l`'s call for a decode step: the revived rows, then the new token's `hidden`
    /// at `position`.
    pub(super) fn step_input(
        &mut self,
        l: usize,
        hidden: BTensor<B>,
        position: usize,
    ) -> Result<(BTensor<B>, Vec<usize>, usize)> {
        match self.revived_rows(l)? {
            None => Ok((hidden, vec![position], 0)),
            Some((rows, mut positions)) => {
                let n = positions.len();
                positions.push(position);
                Ok((BTensor::<B>::cat(&[&rows, &hidden], 0)?, positions, n))
            }
        }
    }

    /// After layer `l` of a decode step that revived the call's first `revived` rows (at
    /// `positions`): the decode scorer learns where they joined the cache, before it
    /// observes the step.
    pub(super) fn note_revived(&mut self, l: usize, positions: &[usize], revived: usize) -> Result<()> {
        let Some(d) = &mut self.decode else { return Ok(()) };
        if revived == 0 {
            return Ok(());
        }
        let cache = self.caches[l].positions();
        let rows: Vec<usize> = positions[..revived].iter().filter_map(|p| cache.binary_search(p).ok()).collect();
        d.scorers[l].insert(&rows)?;
        if let Some(scores) = &mut d.scores[l] {
            // One score per entry before the call (selection per layer): none yet for these.
            for &r in &rows {
                if r <= scores.len() {
                    scores.insert(r, 0.0);
                }
            }
        }
        Ok(())
    }

    /// Splits a decode step's layer output: the first `revived` rows go on as the revived
    /// tokens' hidden states (at the call's first positions), the last is the new token's.
    pub(super) fn step_output(
        &mut self,
        hidden: BTensor<B>,
        positions: Vec<usize>,
        revived: usize,
    ) -> Result<BTensor<B>> {
        if revived == 0 {
            return Ok(hidden);
        }
        let rows = hidden.narrow(0, 0, revived)?;
        let mut positions = positions;
        positions.truncate(revived);
        if let Some(aux) = &mut self.aux {
            aux.active = Some((rows, positions));
        }
        Ok(hidden.narrow(0, revived, 1)?)
    }

    /// After the last layer of a decode step: the revived tokens are done.
    pub(super) fn end_revival(&mut self) {
        if let Some(aux) = &mut self.aux {
            aux.active = None;
            aux.chosen.clear();
        }
    }
}
