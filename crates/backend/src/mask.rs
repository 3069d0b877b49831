//! The causal mask by original positions, for backends that add it to attention scores.

use std::sync::Mutex;

/// `[queries, keys]` row-major: 0 where key position <= query position, -inf elsewhere.
pub fn causal_mask(queries: &[usize], keys: &[usize]) -> Vec<f32> {
    windowed_mask(queries, keys, None)
}

/// [`causal_mask`] of a layer that, with `window`, also hides the keys at or before
/// `query - window` (a local layer).
pub fn windowed_mask(queries: &[usize], keys: &[usize], window: Option<usize>) -> Vec<f32> {
    let w = window.unwrap_or(usize::MAX);
    let mut data = Vec::with_capacity(queries.len() * keys.len());
    for &q in queries {
        data.extend(keys.iter().map(|&k| if k <= q && k.saturating_add(w) > q { 0.0 } else { f32::NEG_INFINITY }));
    }
    data
}

/// The additive mask `[kv_heads * visible]` of the keys `k0..k0 + visible` that masks each
/// KV head's padding rows (a cache whose heads keep different counts); `None` when no
/// padding row is among them.
pub fn padding_bias(padding: Option<&[usize]>, k0: usize, visible: usize) -> Option<Vec<f32>> {
    let padding = padding.filter(|p| p.iter().any(|&p| p > k0))?;
    Some(
        padding
            .iter()
            .flat_map(|&p| (k0..k0 + visible).map(move |j| if j < p { f32::NEG_INFINITY } else { 0.0 }))
            .collect(),
    )
}

/// The last mask a backend built for each window (global layers: none), kept for the
/// next layers, which see the same positions unless pruning changed them.
pub struct MaskCache<T> {
    last: Mutex<Vec<Entry<T>>>,
}

/// Window, query positions, key positions, the mask.
type Entry<T> = (Option<usize>, Vec<usize>, Vec<usize>, T);

impl<T: Clone> Default for MaskCache<T> {
    fn default() -> Self {
        Self { last: Mutex::new(Vec::new()) }
    }
}

impl<T: Clone> MaskCache<T> {
    /// The mask of `queries` over `keys` as the backend's tensor, made by `make` from
    /// [`causal_mask`]'s values (rows, columns) when the positions differ from the last call's.
    pub fn get<E>(
        &self,
        queries: &[usize],
        keys: &[usize],
        make: impl FnOnce(Vec<f32>) -> Result<T, E>,
    ) -> Result<T, E> {
        self.get_windowed(queries, keys, None, make)
    }

    /// [`MaskCache::get`] for a layer with `window` ([`windowed_mask`]).
    pub fn get_windowed<E>(
        &self,
        queries: &[usize],
        keys: &[usize],
        window: Option<usize>,
        make: impl FnOnce(Vec<f32>) -> Result<T, E>,
    ) -> Result<T, E> {
        // A poisoned lock only means another thread panicked while caching: the entry is
        // replaced below whatever it holds.
        let mut last = self.last.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((_, _, _, t)) = last.iter().find(|(w, q, k, _)| *w == window && q == queries && k == keys) {
            return Ok(t.clone());
        }
        let t = make(windowed_mask(queries, keys, window))?;
        last.retain(|(w, ..)| *w != window);
        last.push((window, queries.to_vec(), keys.to_vec(), t.clone()));
        Ok(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padding_bias_masks_each_heads_leading_rows() {
        let inf = f32::NEG_INFINITY;
        assert_eq!(padding_bias(None, 0, 3), None);
        assert_eq!(padding_bias(Some(&[0, 2]), 2, 2), None, "padding before the keys read");
        assert_eq!(padding_bias(Some(&[0, 2]), 1, 3), Some(vec![0.0, 0.0, 0.0, inf, 0.0, 0.0]));
    }

    #[test]
    fn masks_by_position_and_caches_the_last() {
        let m = causal_mask(&[2, 5], &[0, 3, 5]);
        assert_eq!(m[..3], [0.0, f32::NEG_INFINITY, f32::NEG_INFINITY]);
        assert_eq!(m[3..], [0.0, 0.0, 0.0]);
        let cache = MaskCache::<usize>::default();
        let made = std::cell::Cell::new(0);
        let get = |q: &[usize]| {
            cache
                .get(q, &[0, 1], |v| {
                    Ok::<_, ()>({
                        made.set(made.get() + 1);
                        v.len()
                    })
                })
                .unwrap()
        };
        assert_eq!((get(&[1]), get(&[1]), get(&[0, 1])), (2, 2, 4));
        assert_eq!(made.get(), 2);
    }
}
