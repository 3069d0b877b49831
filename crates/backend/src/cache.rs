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
#[derive(Debug, Clone)]
pub struct LayerCache<T> {
    keys: Option<T>,
    values: Option<T>,
    positions: Vec<usize>,
}

impl<T> Default for LayerCache<T> {
    fn default() -> Self {
        Self { keys: None, values: None, positions: Vec::new() }
    }
}

impl<T: Tensor> LayerCache<T> {
    /// Number of live entries.
    pub fn len(&self) -> usize {
        self.positions.len()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.positions.is_empty()
    }

    /// Original position of each live entry, increasing.
    pub fn positions(&self) -> &[usize] {
        &self.positions
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

    /// Records entries that the backend wrote into the storage right after the live ones.
    pub fn push_positions(&mut self, positions: &[usize]) {
        self.positions.extend_from_slice(positions);
    }

    /// Appends `keys`/`values` (`[kv_heads, n, head_dim]`) at `positions` by
    /// concatenation: the storage becomes exactly the live entries. The portable path for
    /// runtimes without in-place writes.
    pub fn append(&mut self, keys: T, values: T, positions: &[usize]) -> Result<()> {
        let (keys, values) = match (self.keys()?, self.values()?) {
            (Some(k), Some(v)) => (T::cat(&[&k, &keys], 1)?, T::cat(&[&v, &values], 1)?),
            _ => (keys, values),
        };
        self.keys = Some(keys);
        self.values = Some(values);
        self.positions.extend_from_slice(positions);
        Ok(())
    }

    /// Keeps only the entries at `kept` (sorted indices into the live entries). The old
    /// tensors are dropped, so their memory is freed; the new storage holds exactly the
    /// kept entries.
    pub fn retain(&mut self, kept: &[usize]) -> Result<()> {
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
        Ok(())
    }

    /// The same cache with its tensors converted by `f` (moved, not copied): how a
    /// dispatching backend hands a cache of its own tensor type to the backend inside.
    pub fn map<U, E>(self, f: impl Fn(T) -> std::result::Result<U, E>) -> std::result::Result<LayerCache<U>, E> {
        Ok(LayerCache {
            keys: self.keys.map(&f).transpose()?,
            values: self.values.map(&f).transpose()?,
            positions: self.positions,
        })
    }

    /// Forgets every entry at position `pos` or later. Positions increase, so those are
    /// the last entries; the storage is kept for the entries that follow.
    pub fn truncate(&mut self, pos: usize) {
        let keep = self.positions.partition_point(|&p| p < pos);
        self.positions.truncate(keep);
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
}
