//! Every scorer against values computed by hand.

use sieve_core::host::Host;
use sieve_core::scorer::{
    AccumulatedAttention, KeyNorm, LastQuery, ObservationWindow, RandomScore, Recency, ValueNorm, aggregate,
};
use sieve_core::{Aggregation, HostTensor, Observation, Pool, Scorer, ScorerSpec, Tensor};

fn t(data: &[f32], shape: &[usize]) -> HostTensor {
    HostTensor::new(data.to_vec(), shape).unwrap()
}

fn obs<'a>(
    positions: &'a [usize],
    attention: Option<&'a HostTensor>,
    keys: Option<&'a HostTensor>,
) -> Observation<'a, HostTensor> {
    Observation {
        layer: 0,
        step: 0,
        kv_heads: 1,
        positions,
        attention,
        keys,
        values: keys,
        queries: None,
        device: Host,
    }
}

fn close(a: &[f32], b: &[f32]) {
    assert_eq!(a.len(), b.len(), "{a:?} vs {b:?}");
    for (x, y) in a.iter().zip(b) {
        assert!((x - y).abs() < 1e-6, "{a:?} vs {b:?}");
    }
}

// Two heads, two queries, four keys.
fn attention() -> HostTensor {
    t(
        &[
            0.1, 0.2, 0.3, 0.4, /* head 0, query 0 */
            0.5, 0.1, 0.1, 0.3, /* head 0, query 1 */
            0.25, 0.25, 0.25, 0.25, /* head 1, query 0 */
            0.7, 0.1, 0.1, 0.1, /* head 1, query 1 */
        ],
        &[2, 2, 4],
    )
}

#[test]
fn last_query_takes_the_last_row_of_each_head() {
    let a = attention();
    let pos = [0, 1, 2, 3];
    let s = LastQuery::default().score(&obs(&pos, Some(&a), None)).unwrap();
    assert_eq!(s.shape(), vec![2, 4]);
    close(&s.to_host().unwrap(), &[0.5, 0.1, 0.1, 0.3, 0.7, 0.1, 0.1, 0.1]);
    let mut scorer = LastQuery { aggregation: Aggregation::Mean };
    let o = Observation { kv_heads: 2, ..obs(&pos, Some(&a), None) };
    close(&scorer.score_tokens(&o).unwrap().to_host().unwrap(), &[0.6, 0.1, 0.1, 0.2]);
}

#[test]
fn snapkv_sums_the_window_and_pools() {
    let a = attention();
    let pos = [0, 1, 2, 3];
    // The window is the last two tokens, scored 3 (above any sum of two queries). Window
    // sums before it: head 0 = [0.6, 0.3]; head 1 = [0.95, 0.35], pooled among themselves
    // (the window's columns, 0.3 + 0.1 and 0.4 + 0.3 in head 0, do not lift token 1).
    let mut max = ObservationWindow { window: 2, kernel: 3, pooling: Pool::Max, aggregation: Aggregation::Mean };
    let s = max.score(&obs(&pos, Some(&a), None)).unwrap().to_host().unwrap();
    close(&s, &[0.6, 0.6, 3.0, 3.0, 0.95, 0.95, 3.0, 3.0]);
    let mut avg = ObservationWindow { window: 2, kernel: 3, pooling: Pool::Avg, aggregation: Aggregation::Mean };
    let s = avg.score(&obs(&pos, Some(&a), None)).unwrap().to_host().unwrap();
    close(&s, &[0.3, 0.3, 3.0, 3.0, 1.3 / 3.0, 1.3 / 3.0, 3.0, 3.0]);
    // A window wider than the observation is as wide as its queries.
    let mut wide = ObservationWindow { window: 8, kernel: 1, pooling: Pool::Avg, aggregation: Aggregation::Mean };
    let s = wide.score(&obs(&pos, Some(&a), None)).unwrap().to_host().unwrap();
    close(&s, &[0.6, 0.3, 3.0, 3.0, 0.95, 0.35, 3.0, 3.0]);
    // Every token in the window: all of them score alike.
    let one = t(&[0.5, 0.5, 0.2, 0.8], &[1, 2, 2]);
    let s = wide.score(&obs(&[0, 1], Some(&one), None)).unwrap().to_host().unwrap();
    close(&s, &[3.0, 3.0]);
}

/// The observing queries' own tokens survive any budget that has room for them, even
/// when they draw no attention and no `recent` protects them.
#[test]
fn snapkv_keeps_its_window_without_recent() {
    // One head, two queries over six keys; the window's columns get nothing.
    let a = t(&[0.5, 0.2, 0.2, 0.1, 0.0, 0.0, 0.4, 0.3, 0.2, 0.1, 0.0, 0.0], &[1, 2, 6]);
    let pos = [0, 1, 2, 3, 4, 5];
    let mut snap = ObservationWindow { window: 2, kernel: 1, pooling: Pool::Avg, aggregation: Aggregation::Mean };
    let scores = snap.score_tokens(&obs(&pos, Some(&a), None)).unwrap().to_host().unwrap();
    let kept = sieve_core::Selector::new(sieve_core::Budget::Tokens(3)).select(&scores).unwrap();
    assert_eq!(kept, vec![0, 4, 5]);
}

#[test]
fn h2o_accumulates_grows_and_compacts() {
    let mut h2o = AccumulatedAttention::new(Aggregation::Mean);
    let a1 = t(&[0.5, 0.5, 1.0, 0.0], &[1, 2, 2]); // two queries over two keys
    let pos2 = [0, 1];
    let s = h2o.score(&obs(&pos2, Some(&a1), None)).unwrap();
    close(&s.to_host().unwrap(), &[1.5, 0.5]);
    // one new token: the observation has three keys
    let a2 = t(&[0.2, 0.3, 0.5], &[1, 1, 3]);
    let pos3 = [0, 1, 2];
    let s = h2o.score(&obs(&pos3, Some(&a2), None)).unwrap();
    close(&s.to_host().unwrap(), &[1.7, 0.8, 0.5]);
    h2o.retain(&[0, 2]).unwrap();
    close(&h2o.state().unwrap().to_host().unwrap(), &[1.7, 0.5]);
    let a3 = t(&[0.1, 0.9], &[1, 1, 2]);
    let pos_kept = [0, 2];
    let s = h2o.score(&obs(&pos_kept, Some(&a3), None)).unwrap();
    close(&s.to_host().unwrap(), &[1.8, 1.4]);
    // An observation smaller than the state is a bookkeeping error, not a silent answer.
    let a4 = t(&[1.0], &[1, 1, 1]);
    assert!(h2o.score(&obs(&[0], Some(&a4), None)).is_err());
}

/// Normalised H2O divides each sum by the queries that saw the token: a prefill of two
/// tokens (the first seen twice), then one decode step, an eviction, another step.
#[test]
fn normalised_h2o_divides_by_the_queries_that_saw_each_token() {
    let mut h2o = AccumulatedAttention::normalized(Aggregation::Mean);
    let a1 = t(&[1.0, 0.0, 0.5, 0.5], &[1, 2, 2]);
    let s = h2o.score(&obs(&[0, 1], Some(&a1), None)).unwrap();
    close(&s.to_host().unwrap(), &[0.75, 0.5]);
    let a2 = t(&[0.2, 0.3, 0.5], &[1, 1, 3]);
    let s = h2o.score(&obs(&[0, 1, 2], Some(&a2), None)).unwrap();
    close(&s.to_host().unwrap(), &[1.7 / 3.0, 0.4, 0.5]);
    h2o.retain(&[0, 2]).unwrap();
    let a3 = t(&[0.1, 0.2, 0.7], &[1, 1, 3]);
    let s = h2o.score(&obs(&[0, 2, 3], Some(&a3), None)).unwrap();
    close(&s.to_host().unwrap(), &[0.45, 0.35, 0.7]);
    // The spec builds it.
    let spec: ScorerSpec = toml::from_str("kind = \"h2o\"\nnormalize = true").unwrap();
    assert_eq!(spec, ScorerSpec::H2o { aggregation: Aggregation::Mean, normalize: true });
}

/// Revived entries inserted among the scored ones start with no attention and no
/// queries: the others keep theirs, in their new rows.
#[test]
fn normalised_h2o_takes_revived_entries_among_its_rows() {
    let mut h2o = AccumulatedAttention::normalized(Aggregation::Mean);
    let a1 = t(&[1.0, 0.0, 0.5, 0.5], &[1, 2, 2]);
    h2o.score(&obs(&[0, 4], Some(&a1), None)).unwrap();
    // Position 2 revived between them: rows [0, 2, 4].
    h2o.insert(&[1]).unwrap();
    close(&h2o.state().unwrap().to_host().unwrap(), &[1.5, 0.0, 0.5]);
    // A step at position 5 over [0, 2, 4, 5]: every earlier entry was seen by it once more.
    let a2 = t(&[0.2, 0.4, 0.2, 0.2], &[1, 1, 4]);
    let s = h2o.score(&obs(&[0, 2, 4, 5], Some(&a2), None)).unwrap();
    close(&s.to_host().unwrap(), &[1.7 / 3.0, 0.4, 0.7 / 2.0, 0.2]);
    assert!(h2o.insert(&[9]).is_err(), "row 9 is past the entries");
}

/// After a per-head eviction each head's running sums (and query counts) keep that head's
/// tokens; a stateless scorer has nothing to compact.
#[test]
fn h2o_follows_per_head_evictions() {
    let mut h2o = AccumulatedAttention::normalized(Aggregation::Mean);
    let a = t(&[0.5, 0.3, 0.2, 0.1, 0.6, 0.3], &[2, 1, 3]);
    h2o.score(&obs(&[0, 1, 2], Some(&a), None)).unwrap();
    h2o.retain_heads(&[vec![0, 2], vec![1, 2]]).unwrap();
    close(&h2o.state().unwrap().to_host().unwrap(), &[0.5, 0.2, 0.6, 0.3]);
    // The prefill's three tokens were seen by 3, 2 and 1 queries; one new token adds one
    // to every kept token: head 0 (positions 0, 2, 3) divides by 4, 2, 1, head 1 (1, 2, 3)
    // by 3, 2, 1.
    let a = t(&[0.1, 0.2, 0.7, 0.3, 0.3, 0.4], &[2, 1, 3]);
    let s = h2o.score(&obs(&[0, 2, 3], Some(&a), None)).unwrap().to_host().unwrap();
    close(&s, &[0.6 / 4.0, 0.4 / 2.0, 0.7, 0.9 / 3.0, 0.6 / 2.0, 0.4]);
    assert!(h2o.retain_heads(&[vec![0], vec![1], vec![2]]).is_err(), "three KV heads for two rows");
    let mut knorm = KeyNorm;
    assert!(Scorer::<HostTensor>::retain_heads(&mut knorm, &[vec![0], vec![1]]).is_ok());
}

#[test]
fn norms_of_keys_and_values() {
    let k = t(&[3., 4., 0., 1., 6., 8.], &[1, 3, 2]);
    let pos = [0, 1, 2];
    let s = KeyNorm.score(&obs(&pos, None, Some(&k))).unwrap().to_host().unwrap();
    close(&s, &[-5., -1., -10.]);
    let s = ValueNorm.score(&obs(&pos, None, Some(&k))).unwrap().to_host().unwrap();
    close(&s, &[5., 1., 10.]);
    assert!(KeyNorm.score(&obs(&pos, None, None)).is_err());
}

#[test]
fn recency_scores_original_positions() {
    let pos = [0, 5, 9];
    let s = Recency.score(&obs(&pos, None, None)).unwrap();
    assert_eq!(s.shape(), vec![1, 3]);
    close(&s.to_host().unwrap(), &[0., 5., 9.]);
}

#[test]
fn random_is_reproducible_and_seed_dependent() {
    let pos: Vec<usize> = (0..64).collect();
    let a = RandomScore { seed: 1 }.score(&obs(&pos, None, None)).unwrap().to_host().unwrap();
    let b = RandomScore { seed: 1 }.score(&obs(&pos, None, None)).unwrap().to_host().unwrap();
    let c = RandomScore { seed: 2 }.score(&obs(&pos, None, None)).unwrap().to_host().unwrap();
    assert_eq!(a, b);
    assert_ne!(a, c);
    let other_layer = Observation { layer: 1, ..obs(&pos, None, None) };
    assert_ne!(a, RandomScore { seed: 1 }.score(&other_layer).unwrap().to_host().unwrap());
}

#[test]
fn aggregation_averages_gqa_groups_first() {
    // 4 query heads in 2 groups (kv_heads = 2), 2 tokens.
    let s = t(&[1., 0., 3., 0., 0., 4., 0., 0.], &[4, 2]);
    // group means: [2, 0] and [0, 2]
    close(&aggregate(&s, 2, Aggregation::Max).unwrap().to_host().unwrap(), &[2., 2.]);
    close(&aggregate(&s, 2, Aggregation::Mean).unwrap().to_host().unwrap(), &[1., 1.]);
    // Without groups, max is over every head.
    close(&aggregate(&s, 4, Aggregation::Max).unwrap().to_host().unwrap(), &[3., 4.]);
}

#[test]
fn specs_build_scorers_that_state_their_needs() {
    let spec = ScorerSpec::Snapkv { window: 16, kernel: 5, pooling: Pool::Avg, aggregation: Aggregation::Max };
    let s = spec.build::<HostTensor>();
    assert_eq!(s.name(), "snapkv");
    assert_eq!(s.needs().attention_queries, 16);
    assert!(ScorerSpec::Knorm {}.build::<HostTensor>().needs().keys);
    assert_eq!(ScorerSpec::Recency {}.build::<HostTensor>().needs().attention_queries, 0);
    assert!(
        ScorerSpec::Snapkv { window: 16, kernel: 4, pooling: Pool::Avg, aggregation: Aggregation::Max }
            .validate("kv")
            .is_err()
    );
}
