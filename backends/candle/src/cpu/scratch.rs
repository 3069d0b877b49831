//! Reused buffers: a prefill allocates tens of megabytes per layer, and fresh allocations
//! of that size cost page faults and zeroing every time. A [`Buf`] returns its memory to
//! the thread that drops it, for the next [`zeroed`] of that thread.

use std::cell::RefCell;
use std::ops::{Deref, DerefMut};

/// Buffers kept per thread at most.
const KEEP: usize = 16;

thread_local! {
    static FREE: RefCell<Vec<Vec<f32>>> = const { RefCell::new(Vec::new()) };
}

/// A buffer of `f32` that goes back to its thread's free list when dropped.
pub struct Buf(Vec<f32>);

/// `len` zeros, in memory this thread used before when it has some large enough.
pub fn zeroed(len: usize) -> Buf {
    let mut v = FREE
        .with(|f| {
            let mut free = f.borrow_mut();
            let best = free.iter().position(|b| b.capacity() >= len);
            best.map(|i| free.swap_remove(i)).or_else(|| free.pop())
        })
        .unwrap_or_default();
    v.clear();
    v.resize(len, 0.0);
    Buf(v)
}

impl Buf {
    /// The values, leaving the buffer empty (for a tensor that takes them over).
    pub fn take(mut self) -> Vec<f32> {
        std::mem::take(&mut self.0)
    }
}

impl Deref for Buf {
    type Target = [f32];

    fn deref(&self) -> &[f32] {
        &self.0
    }
}

impl DerefMut for Buf {
    fn deref_mut(&mut self) -> &mut [f32] {
        &mut self.0
    }
}

impl Drop for Buf {
    fn drop(&mut self) {
        let v = std::mem::take(&mut self.0);
        if v.capacity() > 0 {
            FREE.with(|f| {
                let mut free = f.borrow_mut();
                if free.len() < KEEP {
                    free.push(v);
                }
            });
        }
    }
}
