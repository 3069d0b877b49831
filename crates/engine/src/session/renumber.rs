//! Renumbering a session's cache: positions for a bounded cache past the model's context,
//! or within the cache as StreamingLLM places them.

use sieve_backend::Backend;
use sieve_core::Positions;

use super::Session;
use crate::error::Result;

impl<B: Backend> Session<'_, B> {
    /// Whether `n` more tokens fit the model's context: at the next positions, or after
    /// renumbering the kept entries (which a bounded cache allows indefinitely).
    pub fn can_take(&self, n: usize) -> bool {
        let context = self.backend.config().context;
        self.next_pos + n <= context || self.live_positions().len() + n <= context
    }

    /// Every position some layer or head still holds, increasing.
    fn live_positions(&self) -> Vec<usize> {
        let mut held = vec![false; self.next_pos];
        let heads = self.backend.config().n_kv_heads;
        for cache in &self.caches {
            let heads = if cache.is_per_head() { heads } else { 1 };
            for h in 0..heads {
                for &p in cache.head_positions(h) {
                    if let Some(held) = held.get_mut(p) {
                        *held = true;
                    }
                }
            }
        }
        held.iter().enumerate().filter_map(|(p, &h)| h.then_some(p)).collect()
    }

    /// Renumbers the cached entries to their ranks among the positions still held by some
    /// layer or head, rotating each key to its new position, so that the next token gets
    /// the position just after them: a bounded cache then runs past the model's context.
    /// Relative distances shrink only across evicted tokens (with one kept set for every
    /// layer, as StreamingLLM keeps, every layer sees its cache without gaps). Returns
    /// whether anything moved. Afterwards the session cannot go back ([`Session::truncate`])
    /// before the tokens already fed.
    pub fn renumber(&mut self) -> Result<bool> {
        let live = self.live_positions();
        if live.len() == self.next_pos {
            return Ok(false);
        }
        let config = self.backend.config();
        let rank = |p: usize| live.partition_point(|&q| q < p);
        for (l, cache) in self.caches.iter_mut().enumerate() {
            cache.renumber(&config.layer_rope_inv_freq(l), rank)?;
        }
        for floor in &mut self.window_floor {
            *floor = rank(*floor);
        }
        self.next_pos = live.len();
        self.renumbered = true;
        // The aux cache's positions no longer match the cache's.
        if let Some(aux) = &mut self.aux {
            aux.clear();
        }
        Ok(true)
    }

    /// Renumbers the cache when the decode policy keeps positions within the cache and an
    /// eviction left a gap, or when `n` more tokens would pass the context.
    pub(super) fn make_room(&mut self, n: usize) -> Result<()> {
        let in_cache = self.decode.as_ref().is_some_and(|d| d.policy.positions == Positions::Cache);
        if in_cache || self.next_pos + n > self.backend.config().context {
            self.renumber()?;
        }
        Ok(())
    }
}
