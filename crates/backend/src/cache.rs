//! [`LayerCache`]: one layer's keys and values, with the original position of each entry.

use sieve_core::{Result, Tensor};

/// One layer's KV cache.
///
/// The engine owns it, so that it can compact it with the core's tensor trait after
/// scoring; the backend appends to it in [`crate::Backend::layer`]. Keys are stored after
/// the rotary embedding. Each layer's cache may have its own length.
///
/// The tensors are *storage* `[kv_heads, capacity, head_dim]` of which the first
/// [`LayerCache::len`] rows along dimension 1 are live. A backend that can write in place
/// reserves capacity ahead ([`LayerCache::storage`], [`LayerCache::set_storage`]) so that
/// a decode step writes one row instead of copying the whole cache; a backend that cannot
/// uses [`LayerCache::append`], which keeps capacity equal to the length. Readers see only
/// the live rows ([`LayerCache::keys`], [`LayerCache::values`]).
///
/// After [`LayerCache::retain_heads`] the KV heads need not keep the same entries: each
/// head then has its own positions ([`LayerCache::head_positions`]). Heads may even keep
/// different numbers of entries (Ada-KV budgets): the tensors stay rectangular, `[kv_heads,
/// rows, head_dim]`, and a head with fewer entries starts with *padding* rows
/// ([`LayerCache::padding`]) that hold no entry. Every backend's attention masks a head's
/// padding rows; entries appended later follow the last row in every head, so each head's
/// live entries are always one contiguous run of rows, `padding(h)..len()`.
#[derive(Debug, Clone)]
pub struct LayerCache<T> {
    keys: Option<T>,
    values: Option<T>,
    /// The position of each row: the positions of a head without padding (every head's
    /// while they agree).
    positions: Vec<usize>,
    /// Each head's positions (its live rows only), once heads keep different entries.
    per_head: Option<Vec<Vec<usize>>>,
    /// Each head's leading rows that hold no entry, once heads keep different counts.
    padding: Option<Vec<usize>>,
}

impl<T> Default for LayerCache<T> {
    fn default() -> Self {
        Self { keys: None, values: None, positions: Vec::new(), per_head: None, padding: None }
    }
}

impl<T: Tensor> LayerCache<T> {
    /// Number of rows: live entries, plus any head's padding ([`LayerCache::padding`]).
    pub fn len(&self) -> usize {
        self.positions.len()
    }

    /// Each KV head's leading rows that hold no entry, when heads keep different numbers of
    /// entries; `None` while every row of every head is live. Attention must not read a
    /// head's first `padding[h]` rows.
    pub fn padding(&self) -> Option<&[usize]> {
        self.padding.as_deref()
    }

    /// Head `h`'s padding rows (0 without padding).
    pub fn head_padding(&self, h: usize) -> usize {
        self.padding.as_ref().and_then(|p| p.get(h).copied()).unwrap_or(0)
    }

    /// Live entries summed over the KV heads (`kv_heads * len()` without padding).
    pub fn live_entries(&self) -> usize {
        let heads = self.keys.as_ref().and_then(|k| k.shape().first().copied()).unwrap_or(0);
        heads * self.len() - self.padding.as_ref().map_or(0, |p| p.iter().sum())
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.positions.is_empty()
    }

    /// Original position of each row, increasing: every head's while the heads agree,
    /// otherwise those of a head without padding. Entries of earlier calls precede the
    /// current call's tokens in every head, so a causal mask built from these positions is
    /// right for every head (with each head's padding masked besides).
    pub fn positions(&self) -> &[usize] {
        &self.positions
    }

    /// Whether the KV heads keep different entries.
    pub fn is_per_head(&self) -> bool {
        self.per_head.is_some()
    }

    /// Original positions of head `h`'s live entries (rows `head_padding(h)..len()`),
    /// increasing.
    pub fn head_positions(&self, h: usize) -> &[usize] {
        self.per_head.as_ref().and_then(|p| p.get(h)).map_or(&self.positions, Vec::as_slice)
    }

    fn extend_positions(&mut self, positions: &[usize]) {
        self.positions.extend_from_slice(positions);
        for head in self.per_head.iter_mut().flatten() {
            head.extend_from_slice(positions);
        }
    }

    /// Entries the storage can hold without growing (at least [`LayerCache::len`]).
    pub fn capacity(&self) -> usize {
        self.keys.as_ref().and_then(|k| k.shape().get(1).copied()).unwrap_or(0)
    }

    fn live(&self, t: Option<&T>) -> Result<Option<T>> {
        match t {
            None => Ok(None),
            Some(_) if self.is_empty() => Ok(None),
            Some(t) if t.dim(1)? == self.len() => Ok(Some(t.clone())),
            Some(t) => t.narrow(1, 0, self.len()).map(Some),
        }
    }

    /// The live keys `[kv_heads, len, head_dim]`, `None` while empty.
    pub fn keys(&self) -> Result<Option<T>> {
        self.live(self.keys.as_ref())
    }

    /// The live values `[kv_heads, len, head_dim]`, `None` while empty.
    pub fn values(&self) -> Result<Option<T>> {
        self.live(self.values.as_ref())
    }

    /// The storage tensors (live rows first, then spare capacity), for a backend that
    /// writes in place.
    pub fn storage(&self) -> Option<(&T, &T)> {
        self.keys.as_ref().zip(self.values.as_ref())
    }

    /// Replaces the storage. The backend guarantees that the first [`LayerCache::len`]
    /// rows of the new tensors hold the live entries; follow with
    /// [`LayerCache::push_positions`] for rows it wrote after them.
    pub fn set_storage(&mut self, keys: T, values: T) {
        self.keys = Some(keys);
        self.values = Some(values);
    }

    /// An independent copy of the live entries, in fresh tensors on the same device (a
    /// clone would share storage that a backend writes in place).
    pub fn deep_copy(&self) -> Result<Self> {
        let copy = |t: Option<T>| -> Result<Option<T>> {
            t.map(|t| T::from_host(&t.to_host()?, &t.shape(), &t.device())).transpose()
        };
        Ok(Self {
            keys: copy(self.keys()?)?,
            values: copy(self.values()?)?,
            positions: self.positions.clone(),
            per_head: self.per_head.clone(),
            padding: self.padding.clone(),
        })
    }

    /// Records entries that the backend wrote into the storage right after the live ones.
    pub fn push_positions(&mut self, positions: &[usize]) {
        self.extend_positions(positions);
    }

    /// Appends `keys`/`values` (`[kv_heads, n, head_dim]`) at `positions` by
    /// concatenation: the storage becomes exactly the live entries. The portable path for
    /// runtimes without in-place writes. Positions that fall among the cached ones (revived
    /// tokens) take their places in position order ([`LayerCache::sort_rows`]).
    pub fn append(&mut self, keys: T, values: T, positions: &[usize]) -> Result<()> {
        if positions.first().is_some_and(|&p| self.positions.last().is_some_and(|&last| p <= last))
            && let Some(p) = positions.iter().find(|p| self.positions.binary_search(p).is_ok())
        {
            let detail = format!("position {p} is cached already");
            return Err(sieve_core::Error::Shape { op: "LayerCache::append", detail });
        }
        let (keys, values) = match (self.keys()?, self.values()?) {
            (Some(k), Some(v)) => (T::cat(&[&k, &keys], 1)?, T::cat(&[&v, &values], 1)?),
            _ => (keys, values),
        };
        self.keys = Some(keys);
        self.values = Some(values);
        self.extend_positions(positions);
        self.sort_rows().map(drop)
    }

    /// For a backend that writes in place: puts the positions in order after entries were
    /// added behind later ones, and returns the first row that changes and the old row of
    /// each row from there on; the caller must then move its storage's rows the same way
    /// (rows before the first are untouched, so only that tail is rewritten). `None` when
    /// the order already held. Errors as [`LayerCache::sort_rows`].
    pub fn order_positions(&mut self) -> Result<Option<(usize, Vec<usize>)>> {
        let Some(first) = self.positions.windows(2).position(|w| w[0] >= w[1]) else { return Ok(None) };
        self.check_shared_rows("LayerCache::order_positions")?;
        // Rows before the first out-of-order one are sorted; the rest follow them
        // wherever their positions go.
        let from = self.positions[..=first]
            .partition_point(|&p| p < self.positions[first + 1..].iter().copied().min().unwrap_or(usize::MAX));
        let mut order: Vec<usize> = (from..self.len()).collect();
        order.sort_by_key(|&i| self.positions[i]);
        self.check_distinct(&order, "LayerCache::order_positions")?;
        let tail: Vec<usize> = order.iter().map(|&i| self.positions[i]).collect();
        self.positions.splice(from.., tail);
        Ok(Some((from, order)))
    }

    /// Puts the rows in position order after entries were added behind later ones (a
    /// call whose rows fall among the cached positions: revived tokens), so that attention
    /// may rely on increasing positions. Returns `None` when the order already held, else
    /// the old row of each new row (to reorder a probe's columns the same way); the storage
    /// then holds exactly the live entries. A position present twice, or heads keeping
    /// their own entries, is an error.
    pub fn sort_rows(&mut self) -> Result<Option<Vec<usize>>> {
        if self.positions.windows(2).all(|w| w[0] < w[1]) {
            return Ok(None);
        }
        self.check_shared_rows("LayerCache::sort_rows")?;
        let mut order: Vec<usize> = (0..self.len()).collect();
        order.sort_by_key(|&i| self.positions[i]);
        self.check_distinct(&order, "LayerCache::sort_rows")?;
        // From the whole storage (a narrowed view may not be contiguous); only live rows
        // are picked.
        let reorder = |t: &Option<T>| t.as_ref().map(|t| t.index_select(1, &order)).transpose();
        let (keys, values) = (reorder(&self.keys)?, reorder(&self.values)?);
        (self.keys, self.values) = (keys, values);
        self.positions = order.iter().map(|&i| self.positions[i]).collect();
        Ok(Some(order))
    }

    /// Fails when two rows of `order` (sorted by position) hold the same position.
    fn check_distinct(&self, order: &[usize], op: &'static str) -> Result<()> {
        match order.windows(2).find(|w| self.positions[w[0]] == self.positions[w[1]]) {
            Some(w) => {
                let detail = format!("position {} is cached twice", self.positions[w[0]]);
                Err(sieve_core::Error::Shape { op, detail })
            }
            None => Ok(()),
        }
    }

    fn check_shared_rows(&self, op: &'static str) -> Result<()> {
        if self.per_head.is_some() || self.padding.is_some() {
            return Err(sieve_core::Error::Shape { op, detail: "the KV heads keep different entries".into() });
        }
        Ok(())
    }

    /// Keeps only the entries at `kept` (sorted indices into the live entries). The old
    /// tensors are dropped, so their memory is freed; the new storage holds exactly the
    /// kept entries.
    pub fn retain(&mut self, kept: &[usize]) -> Result<()> {
        if self.padding.is_some() {
            let heads = self.keys.as_ref().map_or(Ok(0), |k| k.dim(0))?;
            return self.retain_heads(&vec![kept.to_vec(); heads]).map(drop);
        }
        if kept.len() == self.len() && self.capacity() == self.len() {
            return Ok(());
        }
        if let Some(&bad) = kept.iter().find(|&&i| i >= self.len()) {
            return Err(sieve_core::Error::Index { op: "LayerCache::retain", index: bad, size: self.len() });
        }
        if kept.is_empty() {
            *self = Self::default();
            return Ok(());
        }
        if let Some(k) = &self.keys {
            self.keys = Some(k.index_select(1, kept)?);
        }
        if let Some(v) = &self.values {
            self.values = Some(v.index_select(1, kept)?);
        }
        self.positions = kept.iter().map(|&i| self.positions[i]).collect();
        for head in self.per_head.iter_mut().flatten() {
            *head = kept.iter().map(|&i| head[i]).collect();
        }
        Ok(())
    }

    /// Position of row `i` of head `h` (a live row: `i >= head_padding(h)`).
    fn row_position(&self, h: usize, i: usize) -> usize {
        self.head_positions(h)[i - self.head_padding(h)]
    }

    /// Keeps, in each KV head `h`, only the rows at `kept[h]` (increasing indices into the
    /// rows; a head's padding rows are skipped, they hold nothing). Heads may keep different
    /// numbers of entries: a head with fewer than the most is padded at the front
    /// ([`LayerCache::padding`]). The storage becomes exactly the kept rows, as with
    /// [`LayerCache::retain`].
    ///
    /// Returns, per head, the old row behind each new row (padding rows repeat a kept one),
    /// for state kept row by row beside the cache (a scorer's running sums) to follow.
    pub fn retain_heads(&mut self, kept: &[Vec<usize>]) -> Result<Vec<Vec<usize>>> {
        let op = "LayerCache::retain_heads";
        let heads = self.keys.as_ref().map_or(Ok(0), |k| k.dim(0))?;
        if kept.len() != heads {
            return Err(sieve_core::Error::Shape {
                op,
                detail: format!("{} kept lists for {heads} KV heads", kept.len()),
            });
        }
        if let Some(&bad) = kept.iter().flatten().find(|&&i| i >= self.len()) {
            return Err(sieve_core::Error::Index { op, index: bad, size: self.len() });
        }
        if kept.iter().any(|k| k.windows(2).any(|w| w[0] >= w[1])) {
            return Err(sieve_core::Error::Shape { op, detail: "kept rows must increase".into() });
        }
        let kept: Vec<Vec<usize>> = kept
            .iter()
            .enumerate()
            .map(|(h, k)| k.iter().copied().filter(|&i| i >= self.head_padding(h)).collect())
            .collect();
        let rows = kept.iter().map(Vec::len).max().unwrap_or(0);
        if rows == 0 {
            *self = Self::default();
            return Ok(kept);
        }
        if self.padding.is_none() && kept.iter().all(|k| k == &kept[0]) {
            self.retain(&kept[0])?;
            return Ok(kept);
        }
        let gather: Vec<Vec<usize>> = kept
            .iter()
            .map(|k| {
                std::iter::repeat_n(k.first().copied().unwrap_or(0), rows - k.len()).chain(k.iter().copied()).collect()
            })
            .collect();
        let take = |t: &T| -> Result<T> {
            let parts = gather
                .iter()
                .enumerate()
                .map(|(h, k)| t.narrow(0, h, 1)?.index_select(1, k))
                .collect::<Result<Vec<T>>>()?;
            T::cat(&parts.iter().collect::<Vec<_>>(), 0)
        };
        self.keys = self.keys.as_ref().map(take).transpose()?;
        self.values = self.values.as_ref().map(take).transpose()?;
        let per_head: Vec<Vec<usize>> =
            kept.iter().enumerate().map(|(h, k)| k.iter().map(|&i| self.row_position(h, i)).collect()).collect();
        let padding: Vec<usize> = kept.iter().map(|k| rows - k.len()).collect();
        let full = padding.iter().position(|&p| p == 0).unwrap_or(0);
        self.positions = per_head[full].clone();
        self.per_head = Some(per_head);
        self.padding = padding.iter().any(|&p| p > 0).then_some(padding);
        Ok(gather)
    }

    /// Moves every entry from its position `p` to `new(p)`, rotating its key by the
    /// difference with the layer's rotary frequencies `inv_freq` (rotation by `a` then `b`
    /// is rotation by `a + b`, so the key becomes what the layer would have cached at the
    /// new position). `new` must keep the positions increasing. The keys' storage is
    /// replaced by a fresh tensor of the same capacity; the values' stays as it is.
    pub fn renumber(&mut self, inv_freq: &[f64], new: impl Fn(usize) -> usize) -> Result<()> {
        let Some(keys) = self.keys.as_ref().filter(|_| !self.is_empty()) else { return Ok(()) };
        let shape = keys.shape();
        let (heads, capacity, hd) = (shape[0], shape[1], shape[2]);
        let half = inv_freq.len();
        if hd != 2 * half {
            return Err(sieve_core::Error::Shape {
                op: "LayerCache::renumber",
                detail: format!("{} rotary frequencies for head dim {hd}", inv_freq.len()),
            });
        }
        let mut data = keys.to_host()?;
        let mut rotations: std::collections::HashMap<i64, Vec<(f64, f64)>> = std::collections::HashMap::new();
        let mut positions: Vec<Vec<usize>> = Vec::with_capacity(heads);
        for h in 0..heads {
            let old = self.head_positions(h).to_vec();
            let mut moved = Vec::with_capacity(old.len());
            for (i, &p) in old.iter().enumerate() {
                let q = new(p);
                moved.push(q);
                if q == p {
                    continue;
                }
                // Entries moved by the same amount (most of them) share one table.
                let turn = rotations
                    .entry(q as i64 - p as i64)
                    .or_insert_with_key(|&delta| inv_freq.iter().map(|&f| (delta as f64 * f).sin_cos()).collect());
                let r = h * capacity + self.head_padding(h) + i;
                let row = &mut data[r * hd..(r + 1) * hd];
                for (j, &(sin, cos)) in turn.iter().enumerate() {
                    let (a, b) = (f64::from(row[j]), f64::from(row[j + half]));
                    row[j] = (a * cos - b * sin) as f32;
                    row[j + half] = (b * cos + a * sin) as f32;
                }
            }
            if moved.windows(2).any(|w| w[0] >= w[1]) {
                return Err(sieve_core::Error::Shape {
                    op: "LayerCache::renumber",
                    detail: format!("head {h}'s new positions do not increase"),
                });
            }
            positions.push(moved);
        }
        self.keys = Some(T::from_host(&data, &shape, &keys.device())?);
        let full = (0..heads).find(|&h| self.head_padding(h) == 0).unwrap_or(0);
        self.positions = positions[full].clone();
        if self.per_head.is_some() {
            self.per_head = Some(positions);
        }
        Ok(())
    }

    /// The same cache with its tensors converted by `f` (moved, not copied): how a
    /// dispatching backend hands a cache of its own tensor type to the backend inside.
    pub fn map<U, E>(self, f: impl Fn(T) -> std::result::Result<U, E>) -> std::result::Result<LayerCache<U>, E> {
        Ok(LayerCache {
            keys: self.keys.map(&f).transpose()?,
            values: self.values.map(&f).transpose()?,
            positions: self.positions,
            per_head: self.per_head,
            padding: self.padding,
        })
    }

    /// Forgets every entry at position `pos` or later. Positions increase, so those are
    /// the last rows; the storage is kept for the entries that follow. When the heads keep
    /// different entries, every head keeps as many rows as the head with the fewest before
    /// `pos` (a head with more loses its latest ones before `pos` too), so that the heads
    /// stay the same length.
    pub fn truncate(&mut self, pos: usize) {
        let keep = match &self.per_head {
            None => self.positions.partition_point(|&p| p < pos),
            Some(heads) => heads
                .iter()
                .enumerate()
                .map(|(h, ps)| self.head_padding(h) + ps.partition_point(|&p| p < pos))
                .min()
                .unwrap_or(0),
        };
        let padding: Option<Vec<usize>> = self.padding.as_ref().map(|p| p.iter().map(|&p| p.min(keep)).collect());
        self.positions.truncate(keep);
        for (h, head) in self.per_head.iter_mut().flatten().enumerate() {
            head.truncate(keep - padding.as_ref().map_or(0, |p| p[h]));
        }
        self.padding = padding.filter(|p| p.iter().any(|&p| p > 0));
        if keep == 0 {
            *self = Self::default();
        }
    }
}

#[cfg(test)]
mod tests {
    use sieve_core::HostTensor;

    use super::*;

    fn t(rows: &[f32]) -> HostTensor {
        HostTensor::new(rows.to_vec(), &[1, rows.len(), 1]).unwrap()
    }

    #[test]
    fn append_retain_truncate() -> Result<()> {
        let mut c = LayerCache::default();
        c.append(t(&[1.0, 2.0]), t(&[10.0, 20.0]), &[0, 1])?;
        c.append(t(&[3.0]), t(&[30.0]), &[5])?;
        assert_eq!(c.positions(), &[0, 1, 5]);
        assert_eq!(c.keys()?.unwrap().to_host()?, vec![1.0, 2.0, 3.0]);
        c.retain(&[0, 2])?;
        assert_eq!(c.positions(), &[0, 5]);
        assert_eq!(c.values()?.unwrap().to_host()?, vec![10.0, 30.0]);
        assert!(c.retain(&[2]).is_err());
        c.truncate(3);
        assert_eq!(c.positions(), &[0]);
        assert_eq!(c.keys()?.unwrap().to_host()?, vec![1.0]);
        assert_eq!(c.capacity(), 2);
        c.truncate(0);
        assert!(c.is_empty() && c.keys()?.is_none() && c.capacity() == 0);
        Ok(())
    }

    #[test]
    fn rows_appended_among_cached_positions_take_their_places() -> Result<()> {
        let mut c = LayerCache::default();
        c.append(t(&[1.0, 4.0]), t(&[10.0, 40.0]), &[0, 7])?;
        c.append(t(&[2.0, 3.0, 5.0]), t(&[20.0, 30.0, 50.0]), &[2, 5, 9])?;
        assert_eq!(c.positions(), &[0, 2, 5, 7, 9]);
        assert_eq!(c.keys()?.unwrap().to_host()?, vec![1.0, 2.0, 3.0, 4.0, 5.0]);
        assert_eq!(c.values()?.unwrap().to_host()?, vec![10.0, 20.0, 30.0, 40.0, 50.0]);
        assert_eq!(c.sort_rows()?, None, "already in order");
        // An in-place writer's rows, then the sort, which reports the old row of each.
        c.set_storage(t(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 0.0]), t(&[0.0; 7]));
        c.push_positions(&[3]);
        assert_eq!(c.sort_rows()?, Some(vec![0, 1, 5, 2, 3, 4]));
        assert_eq!(c.positions(), &[0, 2, 3, 5, 7, 9]);
        assert_eq!(c.keys()?.unwrap().to_host()?, vec![1.0, 2.0, 6.0, 3.0, 4.0, 5.0]);
        assert!(c.append(t(&[9.0]), t(&[9.0]), &[5]).is_err(), "position 5 is cached already");
        // In place: only the positions are reordered, from the first row that moves.
        c.push_positions(&[4, 8]);
        assert_eq!(c.order_positions()?, Some((3, vec![6, 3, 4, 7, 5])));
        assert_eq!(c.positions(), &[0, 2, 3, 4, 5, 7, 8, 9]);
        assert_eq!(c.order_positions()?, None);
        Ok(())
    }

    #[test]
    fn spare_capacity_is_not_live() -> Result<()> {
        let mut c = LayerCache::default();
        c.set_storage(t(&[1.0, 2.0, 0.0, 0.0]), t(&[5.0, 6.0, 0.0, 0.0]));
        c.push_positions(&[3, 4]);
        assert_eq!((c.len(), c.capacity()), (2, 4));
        assert_eq!(c.keys()?.unwrap().to_host()?, vec![1.0, 2.0]);
        c.append(t(&[7.0]), t(&[8.0]), &[9])?;
        assert_eq!((c.len(), c.capacity()), (3, 3));
        assert_eq!(c.values()?.unwrap().to_host()?, vec![5.0, 6.0, 8.0]);
        c.set_storage(t(&[1.0, 2.0, 7.0, 0.0]), t(&[5.0, 6.0, 8.0, 0.0]));
        c.retain(&[0, 1, 2])?; // same entries, but the spare row is released
        assert_eq!((c.len(), c.capacity()), (3, 3));
        Ok(())
    }

    /// Two heads keep different entries; appending, retaining and truncating keep them
    /// the same length with their own positions.
    #[test]
    fn heads_keep_their_own_entries() -> Result<()> {
        let two_heads = |a: &[f32], b: &[f32]| HostTensor::new([a, b].concat(), &[2, a.len(), 1]).unwrap();
        let mut c = LayerCache::default();
        c.append(two_heads(&[1., 2., 3., 4.], &[5., 6., 7., 8.]), two_heads(&[0.; 4], &[0.; 4]), &[0, 1, 2, 3])?;
        c.retain_heads(&[vec![0, 2], vec![1, 3]])?;
        assert!(c.is_per_head());
        assert_eq!((c.head_positions(0), c.head_positions(1)), (&[0, 2][..], &[1, 3][..]));
        assert_eq!(c.positions(), &[0, 2]);
        assert_eq!(c.keys()?.unwrap().to_host()?, vec![1., 3., 6., 8.]);
        c.append(two_heads(&[9.], &[10.]), two_heads(&[0.], &[0.]), &[4])?;
        assert_eq!(c.head_positions(1), &[1, 3, 4]);
        c.retain(&[0, 2])?;
        assert_eq!((c.head_positions(0), c.head_positions(1)), (&[0, 4][..], &[1, 4][..]));
        assert_eq!(c.keys()?.unwrap().to_host()?, vec![1., 9., 6., 10.]);
        // A list per head missing, or rows out of order, are refused.
        assert!(c.retain_heads(&[vec![0]]).is_err());
        assert!(c.retain_heads(&[vec![1, 0], vec![0, 1]]).is_err());
        // Truncating at 2: head 0 has one entry before it, head 1 one: both keep one.
        c.truncate(2);
        assert_eq!((c.head_positions(0), c.head_positions(1)), (&[0][..], &[1][..]));
        Ok(())
    }

    /// Heads keep different numbers of entries: the shorter is padded at the front, the
    /// padding is skipped by later selections, and appends, truncation and renumbering
    /// keep every head's live rows contiguous at the end.
    #[test]
    fn heads_keep_different_counts() -> Result<()> {
        let two_heads = |a: &[f32], b: &[f32]| HostTensor::new([a, b].concat(), &[2, a.len(), 1]).unwrap();
        let mut c = LayerCache::default();
        c.append(two_heads(&[1., 2., 3., 4.], &[5., 6., 7., 8.]), two_heads(&[0.; 4], &[0.; 4]), &[0, 1, 2, 3])?;
        let gather = c.retain_heads(&[vec![2], vec![0, 1, 3]])?;
        assert_eq!(gather, vec![vec![2, 2, 2], vec![0, 1, 3]]);
        assert_eq!((c.len(), c.padding(), c.live_entries()), (3, Some(&[2, 0][..]), 4));
        assert_eq!((c.head_positions(0), c.head_positions(1)), (&[2][..], &[0, 1, 3][..]));
        assert_eq!(c.positions(), &[0, 1, 3], "rows take the positions of the head without padding");
        assert_eq!(c.keys()?.unwrap().to_host()?, vec![3., 3., 3., 5., 6., 8.]);
        c.append(two_heads(&[9.], &[10.]), two_heads(&[0.], &[0.]), &[4])?;
        assert_eq!((c.head_positions(0), c.head_positions(1)), (&[2, 4][..], &[0, 1, 3, 4][..]));
        assert_eq!(c.live_entries(), 6);
        // A shared selection never keeps a head's padding rows.
        let gather = c.retain_heads(&[vec![0, 1, 3], vec![0, 1, 3]])?;
        assert_eq!(gather, vec![vec![3, 3, 3], vec![0, 1, 3]]);
        assert_eq!((c.head_positions(0), c.head_positions(1)), (&[4][..], &[0, 1, 4][..]));
        assert_eq!(c.padding(), Some(&[2, 0][..]));
        assert_eq!(c.positions(), &[0, 1, 4]);
        // Truncating before 1: head 1 keeps one row; head 0 has only padding there.
        c.truncate(1);
        assert_eq!((c.len(), c.padding(), c.live_entries()), (1, Some(&[1, 0][..]), 1));
        assert_eq!((c.head_positions(0), c.head_positions(1)), (&[][..], &[0][..]));
        // Equal counts again: the padding is gone.
        c.append(two_heads(&[1.], &[2.]), two_heads(&[0.], &[0.]), &[20])?;
        c.retain_heads(&[vec![1], vec![0, 1]])?;
        c.retain_heads(&[vec![1], vec![1]])?;
        assert_eq!((c.padding(), c.len(), c.head_positions(0)), (None, 1, &[20][..]));
        Ok(())
    }
}
