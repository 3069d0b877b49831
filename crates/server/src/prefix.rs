//! Reuse of compressed contexts: sessions that hold a prompt prefix already computed and
//! pruned under a policy, kept in an LRU bounded in bytes.
//!
//! A request whose prefix (a chat's messages before the last one, such as a long document)
//! is here forks the kept session and computes only the rest of its prompt. The prefix was
//! compressed without the question that follows it: the question-agnostic setting.

use std::collections::HashMap;

use sieve_backend::Backend;
use sieve_engine::{Result, Session};

/// Which policy and which tokens a kept session holds.
pub type Key = (String, Vec<u32>);

struct Entry<'b, B: Backend> {
    session: Session<'b, B>,
    bytes: usize,
    used: u64,
}

/// Kept sessions, least recently used evicted first.
pub struct PrefixCache<'b, B: Backend> {
    entries: HashMap<Key, Entry<'b, B>>,
    capacity: usize,
    bytes: usize,
    clock: u64,
}

impl<'b, B: Backend> PrefixCache<'b, B> {
    /// A cache of at most `capacity` bytes of KV storage (0 turns reuse off).
    pub fn new(capacity: usize) -> Self {
        Self { entries: HashMap::new(), capacity, bytes: 0, clock: 0 }
    }

    /// Whether anything can be kept.
    pub fn enabled(&self) -> bool {
        self.capacity > 0
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// A fork of the session kept for `key`, if any.
    pub fn fork(&mut self, key: &Key) -> Result<Option<Session<'b, B>>> {
        self.clock += 1;
        match self.entries.get_mut(key) {
            Some(e) => {
                e.used = self.clock;
                Ok(Some(e.session.fork()?))
            }
            None => Ok(None),
        }
    }

    /// Keeps `session` for `key`, evicting the least recently used sessions to make room;
    /// a session larger than the whole cache is not kept.
    pub fn insert(&mut self, key: Key, session: Session<'b, B>) {
        let bytes = session.kv_bytes_allocated();
        if bytes > self.capacity {
            return;
        }
        self.clock += 1;
        if let Some(old) = self.entries.remove(&key) {
            self.bytes -= old.bytes;
        }
        while self.bytes + bytes > self.capacity {
            let Some(oldest) = self.entries.iter().min_by_key(|(_, e)| e.used).map(|(k, _)| k.clone()) else { break };
            if let Some(e) = self.entries.remove(&oldest) {
                self.bytes -= e.bytes;
            }
        }
        self.bytes += bytes;
        self.entries.insert(key, Entry { session, bytes, used: self.clock });
    }
}
