//! `sieve-eval`: measuring what pruning costs and saves, on any backend.
//!
//! - [`perplexity`]: compressed-context perplexity (prefill a context with the policy,
//!   score the continuation against the pruned cache) and streaming perplexity (one token
//!   at a time under a cache budget); [`perplexity::nll`] is the one log-likelihood.
//! - [`passkey`]: a key hidden at some depth of filler text, asked for after it, over a
//!   grid of lengths, depths and seeds.
//! - [`bench`]: time to first token, decode speed, KV memory and perplexity of policies ×
//!   kept fractions × lengths, each beside the unpruned model in the same run, with
//!   [`table`]s and [`plot`]s.
//! - [`data`]: the evaluation text (WikiText-2's test split) and prompts cut from any text.

pub mod bench;
pub mod data;
pub mod device;
pub mod error;
pub mod passkey;
pub mod perplexity;
pub mod plot;
pub mod table;

pub use error::{Error, Result};
