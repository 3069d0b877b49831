//! `sieve-core`: the pruning core of sieve, independent of any tensor runtime.
//!
//! - [`Tensor`]: the small tensor trait that scoring needs; [`HostTensor`] is its reference
//!   implementation on host memory and the oracle for every backend's conformance tests.
//! - [`scorer`]: token-importance scorers (attention-based, norm-based, positional, random)
//!   and head aggregation that understands GQA groups.
//! - [`select`]: deterministic selection of the tokens to keep (ratio, fixed budget,
//!   cumulative mass) with protected sinks and recent tokens.
//! - [`schedule`]: how the kept fraction varies across layers (constant, progressive, pyramid).
//! - [`policy`]: the pruning policy as written in a TOML file, validated; [`preset`]:
//!   policies by name (`none`, a preset, a path, `NAME@K`).
//! - [`fuzzing`]: the checks of the policy fuzz target, which tests run too.

pub mod conformance;
pub mod error;
pub mod fuzzing;
pub mod host;
pub mod policy;
pub mod preset;
pub mod rng;
pub mod schedule;
pub mod scorer;
pub mod select;
pub mod tensor;

pub use error::{Error, Result};
pub use host::HostTensor;
pub use policy::{Budget, DecodePolicy, KvPolicy, Policy, Positions, PrefillKind, PrefillPolicy, Selection};
pub use schedule::Schedule;
pub use scorer::{Aggregation, Observation, QueryProbe, Scorer, ScorerClone, ScorerSpec};
pub use select::Selector;
pub use tensor::{Pool, Tensor};
