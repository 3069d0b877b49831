//! Pruning policies: the on-disk TOML form ([`PolicyFile`]) and the validated form
//! ([`Policy`]) that the engine runs.
//!
//! A policy has up to three independent sections:
//! - `[prefill]`: prompt tokens dropped between layers during prefill (LazyLLM), or chosen
//!   at an early layer for a second pass of the whole model (GemFilter);
//! - `[kv]`: each layer's KV cache cut to its budget after prefill (SnapKV, PyramidKV, ...);
//! - `[decode]`: a cache budget held while generating (H2O, StreamingLLM, TOVA).
//!
//! A policy with no section is the unpruned model. Unknown keys are errors, and every
//! value is range-checked with a message naming the key and the allowed range.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::schedule::Schedule;
use crate::scorer::{Aggregation, ScorerSpec};
pub use crate::select::Budget;
use crate::select::Selector;

/// `keep` in `[prefill]`: one fraction, or one per entry of `layers`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum KeepList {
    /// The same fraction at every pruning layer (only the first one prunes).
    One(f64),
    /// A fraction of the original prompt per pruning layer, non-increasing.
    Many(Vec<f64>),
}

/// `schedule` in `[kv]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScheduleKind {
    /// Every layer gets the same budget.
    #[default]
    Uniform,
    /// Budgets fall with depth (PyramidKV), summing to the uniform total.
    Pyramid,
}

/// `kind` in `[prefill]`: what happens to the tokens a pruning layer does not keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PrefillKind {
    /// LazyLLM (Fu et al., 2024): they stop being computed from that layer on; the layers
    /// before keep the whole prompt's entries.
    #[default]
    Lazy,
    /// GemFilter (Shi et al., 2024): the layers before the one pruning layer run on the whole
    /// prompt only to choose; then every layer runs again on the kept tokens alone (at
    /// their original positions), so no layer holds entries of the others.
    Gemfilter,
}

/// `relative_to` in `[kv]`: what a `keep` fraction is a fraction of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeepBasis {
    /// The layer's own cache (after any prefill pruning, a layer past a pruning layer holds
    /// fewer entries, and keeps the same fraction of them).
    #[default]
    Layer,
    /// Every token of the context so far, the same number of entries in every layer
    /// (FastKV: the budget is set apart from how many tokens prefill propagates).
    Context,
}

/// `selection` in `[kv]`: whether the KV heads of a layer share one kept set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Selection {
    /// One kept set per layer: scores averaged over every head.
    #[default]
    Layer,
    /// One kept set per KV head (the query heads of its group averaged), the same count in
    /// every head of a layer, so the cache stays one rectangular tensor.
    Head,
    /// Ada-KV budgets (`[kv]` only): one kept set per KV head, the layer's budget split
    /// across its heads by score ([`crate::Selector::select_ada`]), so heads hold different
    /// counts; a head with fewer entries is padded in the cache, and the padding is masked.
    Ada,
}

impl Selection {
    /// Whether each KV head keeps its own entries.
    pub fn is_per_head(self) -> bool {
        matches!(self, Selection::Head | Selection::Ada)
    }
}

/// `positions` in `[decode]`: the rotary positions of the cached entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Positions {
    /// Each entry keeps its position in the text. When the next token would pass the
    /// model's context, the kept entries are renumbered to their ranks (their keys rotated
    /// to match), so a bounded cache can go on past the context.
    #[default]
    Original,
    /// After every eviction the entries are renumbered to their places in the cache, as
    /// StreamingLLM does: the model never sees a gap, and positions stay below the
    /// budget plus `every`.
    Cache,
}

/// `[prefill]` as written in a file.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrefillFile {
    /// `lazy` (the default) or `gemfilter`.
    #[serde(default)]
    pub kind: PrefillKind,
    /// The scorer; default: last-query attention.
    pub scorer: Option<ScorerSpec>,
    /// Layers before which tokens are pruned (each >= 1), scored by the layer before.
    pub layers: Vec<usize>,
    /// Fraction(s) of the original prompt kept from each of `layers` on.
    pub keep: Option<KeepList>,
    /// Adaptive alternative to `keep`: keep the smallest set holding this score mass.
    pub mass: Option<f64>,
    /// Adaptive alternative to `keep`: `[lo, hi]`, the last stage keeps
    /// `lo + (hi - lo) * novelty` of the prompt, where novelty is the share of distinct
    /// 4-grams of token ids (0 for a text that repeats itself, near 1 for one that never
    /// does); earlier stages step down to it evenly.
    pub novelty: Option<[f64; 2]>,
    /// First tokens never pruned.
    #[serde(default)]
    pub sinks: usize,
    /// Last tokens never pruned (the last token is always kept, and a SnapKV scorer's
    /// whole observation window).
    #[serde(default)]
    pub recent: usize,
    /// Never fewer tokens than this.
    #[serde(default)]
    pub min_keep: usize,
    /// Never more tokens than this.
    pub max_keep: Option<usize>,
    /// Revival (LazyLLM's aux cache; `kind = "lazy"` only): the hidden states of the pruned
    /// tokens are kept, and at each decoding step up to this many of a stage's pruned
    /// tokens that the new token's attention ranks within the stage's kept share come back,
    /// computed from that stage's layer on. 0 (the default) keeps no aux cache. A
    /// `[decode]` budget may be passed by the tokens a step revives until the next step
    /// evicts.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub revive: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// The most tokens a stage may revive at one decoding step.
pub const MAX_REVIVE: usize = 4096;

/// The share of distinct `n`-grams among the `n`-grams of `tokens` (1 when there are none):
/// how little a text repeats itself.
pub fn novelty(tokens: &[u32], n: usize) -> f64 {
    if tokens.len() < n + 1 || n == 0 {
        return 1.0;
    }
    let grams: std::collections::HashSet<&[u32]> = tokens.windows(n).collect();
    grams.len() as f64 / (tokens.len() - n + 1) as f64
}

/// `[kv]` as written in a file.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KvFile {
    /// The scorer; default: SnapKV.
    pub scorer: Option<ScorerSpec>,
    /// Fraction of each layer's cache kept.
    pub keep: Option<f64>,
    /// Entries kept per layer.
    pub tokens: Option<usize>,
    /// Adaptive: score mass kept per layer.
    pub mass: Option<f64>,
    /// Uniform or pyramid budgets.
    #[serde(default)]
    pub schedule: ScheduleKind,
    /// Pyramid steepness (mean over the last layer's budget).
    pub beta: Option<f64>,
    /// `layer` (the default) or `context`: what `keep` is a fraction of.
    #[serde(default)]
    pub relative_to: KeepBasis,
    /// `layer` (the default), `head` or `ada`: one kept set per layer, per KV head, or per
    /// KV head with the layer's budget split across heads by score (Ada-KV).
    #[serde(default)]
    pub selection: Selection,
    /// With `selection = "ada"`: the share of its nominal budget each head keeps by its
    /// own ranking before the rest is split by score across heads (default 0.2).
    pub safeguard: Option<f64>,
    /// First tokens never evicted.
    #[serde(default)]
    pub sinks: usize,
    /// Last tokens never evicted (at least a SnapKV scorer's observation window).
    #[serde(default)]
    pub recent: usize,
    /// Never fewer entries than this.
    #[serde(default)]
    pub min_keep: usize,
    /// Never more entries than this.
    pub max_keep: Option<usize>,
}

/// `[decode]` as written in a file.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecodeFile {
    /// The scorer; default: H2O accumulated attention.
    pub scorer: Option<ScorerSpec>,
    /// Cache entries per layer that are never exceeded while generating.
    pub budget: usize,
    /// Entries evicted at once when the cache is full: eviction runs every this many steps.
    #[serde(default = "one")]
    pub every: usize,
    /// First tokens never evicted.
    #[serde(default)]
    pub sinks: usize,
    /// Last tokens never evicted.
    #[serde(default)]
    pub recent: usize,
    /// `layer` (the default) or `head`: one kept set per layer or per KV head. Must be
    /// `head` when `[kv]` selects per head.
    #[serde(default)]
    pub selection: Selection,
    /// `original` (the default) or `cache`: see [`Positions`].
    #[serde(default)]
    pub positions: Positions,
}

#[derive(Deserialize)]
struct ScorerTable {
    scorer: ScorerSpec,
}

fn one() -> usize {
    1
}

/// A policy file.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyFile {
    /// Short name, shown in statistics.
    pub name: Option<String>,
    /// What the policy does.
    pub description: Option<String>,
    /// Prompt pruning during prefill.
    pub prefill: Option<PrefillFile>,
    /// KV eviction after prefill.
    pub kv: Option<KvFile>,
    /// KV budget during decoding.
    pub decode: Option<DecodeFile>,
}

/// How much of the prompt each prefill pruning layer keeps.
#[derive(Debug, Clone, PartialEq)]
pub enum PrefillKeep {
    /// Fraction of the original prompt, one per pruning layer, non-increasing.
    Fractions(Vec<f64>),
    /// Smallest set of the current tokens holding this score mass.
    Mass(f64),
    /// The last stage keeps `lo + (hi - lo) * novelty` of the prompt (see
    /// [`PrefillFile::novelty`]); [`PrefillPolicy::for_prompt`] turns it into fractions.
    Novelty {
        /// Kept by a text that only repeats itself.
        lo: f64,
        /// Kept by a text without repeated 4-grams.
        hi: f64,
    },
}

/// Validated prefill pruning.
#[derive(Debug, Clone, PartialEq)]
pub struct PrefillPolicy {
    /// Lazy pruning between layers, or a filter pass and a second pass.
    pub kind: PrefillKind,
    /// The scorer.
    pub scorer: ScorerSpec,
    /// Layers before which tokens are pruned, strictly increasing, each >= 1.
    pub layers: Vec<usize>,
    /// How much each of them keeps.
    pub keep: PrefillKeep,
    /// Protection and clamps (its budget is replaced per layer by [`PrefillPolicy::budget`]).
    pub selector: Selector,
    /// Tokens of a stage revived at most per decoding step (0: no aux cache); see
    /// [`PrefillFile::revive`].
    pub revive: usize,
}

impl PrefillPolicy {
    /// The budget at pruning stage `stage` for a prompt of `n_prompt` tokens; never below
    /// the protected tokens, so short prompts are pruned less rather than refused. (A
    /// novelty rule not yet resolved by [`Self::for_prompt`] keeps its upper fraction.)
    pub fn budget(&self, stage: usize, n_prompt: usize) -> Budget {
        let protected = self.selector.sinks + self.selector.recent;
        let tokens = |f: f64| Budget::Tokens((((f * n_prompt as f64) - 1e-9).ceil() as usize).max(1).max(protected));
        match &self.keep {
            PrefillKeep::Fractions(f) => tokens(f[stage]),
            PrefillKeep::Mass(p) => Budget::Mass(*p),
            PrefillKeep::Novelty { hi, .. } => tokens(*hi),
        }
    }

    /// This policy for the prompt `tokens`: a novelty rule becomes the fractions its
    /// novelty gives, stepping down evenly over the stages; other rules are unchanged.
    pub fn for_prompt(&self, tokens: &[u32]) -> PrefillPolicy {
        let PrefillKeep::Novelty { lo, hi } = self.keep else { return self.clone() };
        let last = lo + (hi - lo) * novelty(tokens, 4);
        let stages = self.layers.len();
        let fractions = (1..=stages).map(|k| 1.0 - (1.0 - last) * k as f64 / stages as f64).collect();
        PrefillPolicy { keep: PrefillKeep::Fractions(fractions), ..self.clone() }
    }
}

/// Validated KV eviction after prefill.
#[derive(Debug, Clone, PartialEq)]
pub struct KvPolicy {
    /// The scorer.
    pub scorer: ScorerSpec,
    /// Budget per layer (uniform), or the mean budget (pyramid).
    pub budget: Budget,
    /// Uniform or pyramid.
    pub schedule: ScheduleKind,
    /// Pyramid steepness.
    pub beta: f64,
    /// What a fraction is a fraction of.
    pub relative_to: KeepBasis,
    /// One kept set per layer or per KV head, or Ada-KV budgets.
    pub selection: Selection,
    /// Ada-KV: each head's share of its nominal budget kept by its own ranking.
    pub safeguard: f64,
    /// Protection and clamps.
    pub selector: Selector,
}

impl KvPolicy {
    /// The budget of layer `l` of `n_layers`, whose cache holds `layer_len` entries, in a
    /// context of `context_len` tokens.
    pub fn budget_of(&self, l: usize, n_layers: usize, layer_len: usize, context_len: usize) -> Result<Budget> {
        let basis = match self.relative_to {
            KeepBasis::Layer => layer_len,
            KeepBasis::Context => context_len,
        };
        let budget = self.layer_budgets(basis, n_layers)?[l];
        // Never below the protected tokens, so short prompts are pruned less, not refused.
        let protected = self.selector.sinks + self.selector.recent;
        Ok(match (self.relative_to, budget) {
            (KeepBasis::Context, Budget::Ratio(r)) => {
                Budget::Tokens((((r * basis as f64) - 1e-9).ceil() as usize).max(1).max(protected))
            }
            (_, b) => b,
        })
    }

    /// The budget of each of `n_layers` layers for a cache of `n_tokens` entries.
    ///
    /// A pyramid spreads what is left of the mean budget after the protected tokens
    /// (`sinks + recent`) over the unprotected ones, and every layer adds the protected
    /// tokens on top, as PyramidKV's reference code does with its window: so that the
    /// deepest layers still keep some tokens by score at a small `keep`. The budgets sum
    /// to the uniform total (up to rounding).
    pub fn layer_budgets(&self, n_tokens: usize, n_layers: usize) -> Result<Vec<Budget>> {
        let mean = match (self.schedule, self.budget) {
            (ScheduleKind::Uniform, b) => return Ok(vec![b; n_layers]),
            (ScheduleKind::Pyramid, Budget::Ratio(r)) => r * n_tokens as f64,
            (ScheduleKind::Pyramid, Budget::Tokens(t)) => (t as f64).min(n_tokens as f64),
            (ScheduleKind::Pyramid, Budget::Mass(_)) => {
                return Err(Error::InvalidPolicy("kv: a pyramid schedule needs `keep` or `tokens`, not `mass`".into()));
            }
        };
        let protected = (self.selector.sinks + self.selector.recent).min(n_tokens);
        let free = n_tokens - protected;
        let spread = mean - protected as f64;
        if free == 0 || spread <= 0.0 {
            return Ok(vec![Budget::Tokens(protected.max(1).min(n_tokens.max(1))); n_layers]);
        }
        let keep = (spread / free as f64).min(1.0);
        let budgets = Schedule::Pyramid { keep, beta: self.beta }.budgets(free, n_layers)?;
        Ok(budgets.into_iter().map(|b| Budget::Tokens(b + protected)).collect())
    }
}

/// Validated decode-phase budget.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodePolicy {
    /// The scorer.
    pub scorer: ScorerSpec,
    /// Entries per layer never exceeded.
    pub budget: usize,
    /// Entries evicted at once when the cache is full.
    pub every: usize,
    /// One kept set per layer or per KV head.
    pub selection: Selection,
    /// Positions of the cached entries.
    pub positions: Positions,
    /// Protection.
    pub selector: Selector,
}

/// A validated pruning policy.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Policy {
    /// Short name.
    pub name: String,
    /// What it does.
    pub description: String,
    /// Prompt pruning during prefill.
    pub prefill: Option<PrefillPolicy>,
    /// KV eviction after prefill.
    pub kv: Option<KvPolicy>,
    /// KV budget during decoding.
    pub decode: Option<DecodePolicy>,
}

fn exactly_one_budget(key: &str, keep: Option<f64>, tokens: Option<usize>, mass: Option<f64>) -> Result<Budget> {
    match (keep, tokens, mass) {
        (Some(r), None, None) => Ok(Budget::Ratio(r)),
        (None, Some(t), None) => Ok(Budget::Tokens(t)),
        (None, None, Some(p)) => Ok(Budget::Mass(p)),
        _ => Err(Error::InvalidPolicy(format!("{key}: give exactly one of `keep`, `tokens` or `mass`"))),
    }
}

impl PrefillFile {
    fn validate(&self) -> Result<PrefillPolicy> {
        let scorer = self.scorer.clone().unwrap_or(ScorerSpec::LastQuery { aggregation: Aggregation::Mean });
        scorer.validate("prefill")?;
        if self.layers.is_empty() {
            return Err(Error::InvalidPolicy("prefill: `layers` must name at least one layer".into()));
        }
        if self.layers[0] == 0 {
            return Err(Error::out_of_range("prefill.layers", 0, "at least 1 (tokens are scored by the layer before)"));
        }
        if self.kind == PrefillKind::Gemfilter && self.layers.len() != 1 {
            return Err(Error::InvalidPolicy(format!(
                "prefill: kind = \"gemfilter\" selects once, so `layers` names one layer, not {:?}",
                self.layers
            )));
        }
        let keep = match (&self.keep, self.mass, self.novelty) {
            (Some(KeepList::One(f)), None, None) => PrefillKeep::Fractions(vec![*f; self.layers.len()]),
            (Some(KeepList::Many(f)), None, None) => PrefillKeep::Fractions(f.clone()),
            (None, Some(p), None) => {
                Budget::Mass(p).validate("prefill")?;
                PrefillKeep::Mass(p)
            }
            (None, None, Some([lo, hi])) => {
                if !(lo > 0.0 && lo <= hi && hi <= 1.0) {
                    return Err(Error::InvalidPolicy(format!(
                        "prefill.novelty = [{lo}, {hi}] is out of range (0 < lo <= hi <= 1)"
                    )));
                }
                PrefillKeep::Novelty { lo, hi }
            }
            _ => {
                return Err(Error::InvalidPolicy("prefill: give exactly one of `keep`, `mass` or `novelty`".into()));
            }
        };
        let fractions = match &keep {
            PrefillKeep::Fractions(f) => f.clone(),
            PrefillKeep::Mass(_) | PrefillKeep::Novelty { .. } => vec![1.0; self.layers.len()],
        };
        Schedule::Progressive { layers: self.layers.clone(), keep: fractions }.validate("prefill", None)?;
        let selector = Selector::new(Budget::Ratio(1.0))
            .protect(self.sinks, self.recent.max(1).max(scorer.keeps_last()))
            .clamp(self.min_keep, self.max_keep);
        selector.validate("prefill")?;
        if self.revive > MAX_REVIVE {
            return Err(Error::out_of_range("prefill.revive", self.revive, format!("0..={MAX_REVIVE}")));
        }
        if self.revive > 0 && self.kind != PrefillKind::Lazy {
            return Err(Error::InvalidPolicy(
                "prefill: `revive` needs kind = \"lazy\" (a gemfilter pass keeps no entries of what it drops)".into(),
            ));
        }
        let revive = self.revive;
        Ok(PrefillPolicy { kind: self.kind, scorer, layers: self.layers.clone(), keep, selector, revive })
    }
}

impl KvFile {
    fn validate(&self) -> Result<KvPolicy> {
        let scorer = self.scorer.clone().unwrap_or(ScorerSpec::Snapkv {
            window: 32,
            kernel: 5,
            pooling: crate::Pool::Avg,
            aggregation: Aggregation::Mean,
        });
        scorer.validate("kv")?;
        let budget = exactly_one_budget("kv", self.keep, self.tokens, self.mass)?;
        let beta = self.beta.unwrap_or(20.0);
        if self.schedule == ScheduleKind::Pyramid {
            if let Budget::Mass(_) = budget {
                return Err(Error::InvalidPolicy("kv: a pyramid schedule needs `keep` or `tokens`, not `mass`".into()));
            }
            Schedule::Pyramid { keep: 0.5, beta }.validate("kv", None)?;
        } else if self.beta.is_some() {
            return Err(Error::InvalidPolicy("kv: `beta` only applies to schedule = \"pyramid\"".into()));
        }
        if self.relative_to == KeepBasis::Context && !matches!(budget, Budget::Ratio(_)) {
            return Err(Error::InvalidPolicy(
                "kv: relative_to = \"context\" applies to `keep`, not `tokens` or `mass`".into(),
            ));
        }
        let recent = self.recent.max(scorer.keeps_last());
        let selector = Selector::new(budget).protect(self.sinks, recent).clamp(self.min_keep, self.max_keep);
        selector.validate("kv")?;
        if self.selection.is_per_head() && matches!(budget, Budget::Mass(_)) {
            return Err(Error::InvalidPolicy(
                "kv: selection = \"head\" or \"ada\" needs `keep` or `tokens` (a count per head), not `mass`".into(),
            ));
        }
        let safeguard = match (self.selection, self.safeguard) {
            (Selection::Ada, s) => s.unwrap_or(0.2),
            (_, None) => 0.2,
            (_, Some(_)) => {
                return Err(Error::InvalidPolicy("kv: `safeguard` only applies to selection = \"ada\"".into()));
            }
        };
        if !(0.0..=1.0).contains(&safeguard) {
            return Err(Error::out_of_range("kv.safeguard", safeguard, "[0, 1]"));
        }
        Ok(KvPolicy {
            scorer,
            budget,
            schedule: self.schedule,
            beta,
            relative_to: self.relative_to,
            selection: self.selection,
            safeguard,
            selector,
        })
    }
}

impl DecodeFile {
    fn validate(&self) -> Result<DecodePolicy> {
        let scorer =
            self.scorer.clone().unwrap_or(ScorerSpec::H2o { aggregation: Aggregation::Mean, normalize: false });
        scorer.validate("decode")?;
        let recent = self.recent.max(scorer.keeps_last());
        let protected = self.sinks + recent;
        if self.budget <= protected {
            return Err(Error::out_of_range(
                "decode.budget",
                self.budget,
                format!("more than sinks + recent = {protected}"),
            ));
        }
        if self.every == 0 || self.every > self.budget - protected {
            return Err(Error::out_of_range(
                "decode.every",
                self.every,
                format!("1..={} (budget - sinks - recent)", self.budget - protected),
            ));
        }
        let selector = Selector::new(Budget::Tokens(self.budget - self.every)).protect(self.sinks, recent);
        selector.validate("decode")?;
        Ok(DecodePolicy {
            scorer,
            budget: self.budget,
            every: self.every,
            selection: self.selection,
            positions: self.positions,
            selector,
        })
    }
}

impl PolicyFile {
    /// Overrides the kept fraction, as `--keep` does: in `[kv]` (replacing `tokens` or
    /// `mass`) and in `[prefill]` where present; a policy with neither gets a `[kv]`
    /// section with the default scorer.
    pub fn override_keep(&mut self, keep: f64) {
        if self.kv.is_none() && self.prefill.is_none() {
            self.kv = Some(KvFile::default());
        }
        if let Some(kv) = &mut self.kv {
            kv.keep = Some(keep);
            kv.tokens = None;
            kv.mass = None;
        }
        if let Some(p) = &mut self.prefill {
            p.keep = Some(match &p.keep {
                Some(KeepList::Many(list)) if list.len() > 1 => {
                    // Scale the stages so that the last keeps `keep`, preserving their shape.
                    let last = list[list.len() - 1];
                    KeepList::Many(list.iter().map(|f| (f / last * keep).min(1.0)).collect())
                }
                _ => KeepList::One(keep),
            });
            p.mass = None;
            p.novelty = None;
        }
    }

    /// Overrides the scorer, as `--scorer NAME` does (with that scorer's default
    /// settings), in every section present; a policy with none gets a `[kv]` section.
    pub fn override_scorer(&mut self, name: &str) -> Result<()> {
        let spec: ScorerSpec = toml::from_str::<ScorerTable>(&format!("scorer = {{ kind = {name:?} }}"))
            .map_err(|e| Error::InvalidPolicy(format!("scorer `{name}`: {}", e.message().trim())))?
            .scorer;
        if self.kv.is_none() && self.prefill.is_none() && self.decode.is_none() {
            self.kv = Some(KvFile { keep: Some(0.5), ..KvFile::default() });
        }
        for slot in [
            self.prefill.as_mut().map(|p| &mut p.scorer),
            self.kv.as_mut().map(|k| &mut k.scorer),
            self.decode.as_mut().map(|d| &mut d.scorer),
        ]
        .into_iter()
        .flatten()
        {
            *slot = Some(spec.clone());
        }
        Ok(())
    }

    /// Parses a policy file; unknown keys and wrong types are errors.
    pub fn from_toml(text: &str) -> Result<Self> {
        toml::from_str(text).map_err(|e| Error::toml(e, text))
    }

    /// Writes the policy as TOML.
    pub fn to_toml(&self) -> Result<String> {
        Ok(toml::to_string(self)?)
    }

    /// Range-checks every value and builds the runtime policy.
    pub fn validate(&self) -> Result<Policy> {
        if let (Some(kv), Some(d)) = (&self.kv, &self.decode)
            && kv.selection.is_per_head()
            && d.selection == Selection::Layer
        {
            return Err(Error::InvalidPolicy(
                "decode: [kv] selects per KV head, so [decode] must too (selection = \"head\")".into(),
            ));
        }
        if self.prefill.as_ref().is_some_and(|p| p.revive > 0)
            && (self.kv.as_ref().is_some_and(|k| k.selection.is_per_head())
                || self.decode.as_ref().is_some_and(|d| d.selection.is_per_head()))
        {
            return Err(Error::InvalidPolicy(
                "prefill: `revive` needs selection = \"layer\" in [kv] and [decode] (revived entries join every KV head)".into(),
            ));
        }
        if self.decode.as_ref().is_some_and(|d| d.selection == Selection::Ada) {
            return Err(Error::InvalidPolicy(
                "decode: selection = \"ada\" applies to [kv] only; use \"head\" or \"layer\"".into(),
            ));
        }
        Ok(Policy {
            name: self.name.clone().unwrap_or_else(|| "custom".into()),
            description: self.description.clone().unwrap_or_default(),
            prefill: self.prefill.as_ref().map(PrefillFile::validate).transpose()?,
            kv: self.kv.as_ref().map(KvFile::validate).transpose()?,
            decode: self.decode.as_ref().map(DecodeFile::validate).transpose()?,
        })
    }
}

impl Policy {
    /// Parses and validates a policy file.
    pub fn from_toml(text: &str) -> Result<Self> {
        PolicyFile::from_toml(text)?.validate()
    }

    /// The unpruned model.
    pub fn none() -> Self {
        Policy { name: "none".into(), ..Policy::default() }
    }

    /// Whether the policy prunes or evicts anything at all.
    pub fn is_none(&self) -> bool {
        self.prefill.is_none() && self.kv.is_none() && self.decode.is_none()
    }

    /// Whether pruned prompt tokens are kept in an aux cache to be revived while decoding.
    pub fn revives(&self) -> bool {
        self.prefill.as_ref().is_some_and(|p| p.revive > 0)
    }

    /// Checks the policy against a model with `n_layers` layers.
    pub fn check_model(&self, n_layers: usize) -> Result<()> {
        if let Some(p) = &self.prefill
            && let Some(&bad) = p.layers.iter().find(|&&l| l >= n_layers)
        {
            return Err(Error::out_of_range(
                "prefill.layers",
                bad,
                format!("1..{n_layers} (the model has {n_layers} layers)"),
            ));
        }
        Ok(())
    }

    /// The file form of this policy (for writing it back out).
    pub fn to_file(&self) -> PolicyFile {
        let budget_fields = |b: Budget| match b {
            Budget::Ratio(r) => (Some(r), None, None),
            Budget::Tokens(t) => (None, Some(t), None),
            Budget::Mass(p) => (None, None, Some(p)),
        };
        PolicyFile {
            name: Some(self.name.clone()),
            description: (!self.description.is_empty()).then(|| self.description.clone()),
            prefill: self.prefill.as_ref().map(|p| {
                let (keep, mass, novelty) = match &p.keep {
                    PrefillKeep::Fractions(f) => (Some(KeepList::Many(f.clone())), None, None),
                    PrefillKeep::Mass(m) => (None, Some(*m), None),
                    PrefillKeep::Novelty { lo, hi } => (None, None, Some([*lo, *hi])),
                };
                PrefillFile {
                    kind: p.kind,
                    scorer: Some(p.scorer.clone()),
                    layers: p.layers.clone(),
                    keep,
                    mass,
                    novelty,
                    sinks: p.selector.sinks,
                    recent: p.selector.recent,
                    min_keep: p.selector.min_keep,
                    max_keep: p.selector.max_keep,
                    revive: p.revive,
                }
            }),
            kv: self.kv.as_ref().map(|k| {
                let (keep, tokens, mass) = budget_fields(k.budget);
                KvFile {
                    scorer: Some(k.scorer.clone()),
                    keep,
                    tokens,
                    mass,
                    schedule: k.schedule,
                    beta: (k.schedule == ScheduleKind::Pyramid).then_some(k.beta),
                    relative_to: k.relative_to,
                    selection: k.selection,
                    safeguard: (k.selection == Selection::Ada).then_some(k.safeguard),
                    sinks: k.selector.sinks,
                    recent: k.selector.recent,
                    min_keep: k.selector.min_keep,
                    max_keep: k.selector.max_keep,
                }
            }),
            decode: self.decode.as_ref().map(|d| DecodeFile {
                scorer: Some(d.scorer.clone()),
                budget: d.budget,
                every: d.every,
                sinks: d.selector.sinks,
                recent: d.selector.recent,
                selection: d.selection,
                positions: d.positions,
            }),
        }
    }
}
