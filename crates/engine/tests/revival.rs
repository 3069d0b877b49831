//! Revival of pruned prompt tokens while decoding (`[prefill] revive`), on the reference
//! backend with a synthetic 24-layer model: revived tokens come back at their places with
//! the entries the stage's layer computes for them, the aux cache shrinks by them, the
//! per-step limit holds, and truncation and forks carry the aux cache along.

mod common;

use common::{LAYERS, backend, config, tokens_from};
use sieve_backend::LayerCache;
use sieve_backend::reference::HostBackend;
use sieve_core::{HostTensor, Tensor};
use sieve_engine::sampling::argmax;
use sieve_engine::{Logits, Policy, Session};

const STAGES: [usize; 2] = [6, 14];

/// `n` pseudo-random token ids.
fn tokens(n: usize) -> Vec<u32> {
    tokens_from(9, n)
}

fn lazy(revive: usize) -> Policy {
    let text = format!("[prefill]\nlayers = [6, 14]\nkeep = [0.7, 0.5]\nsinks = 2\nrecent = 4\nrevive = {revive}\n");
    Policy::from_toml(&text).unwrap()
}

/// Prefill `prompt`, then `steps` greedy steps; the session.
fn run(policy: Policy, prompt: &[u32], steps: usize) -> Session<'static, HostBackend> {
    let mut s = Session::new(backend(), policy).unwrap();
    let mut next = argmax(s.prefill(prompt, Logits::Last).unwrap().last());
    for _ in 0..steps {
        next = argmax(&s.step(next).unwrap());
    }
    s
}

/// The key and value rows of the entry at `pos`, every KV head concatenated.
fn entry(cache: &LayerCache<HostTensor>, pos: usize) -> Option<(Vec<f32>, Vec<f32>)> {
    let i = cache.positions().iter().position(|&p| p == pos)?;
    let rows = |t: HostTensor| {
        let (heads, len, hd) = (t.dim(0).unwrap(), t.dim(1).unwrap(), t.dim(2).unwrap());
        let data = t.to_host().unwrap();
        (0..heads).flat_map(|h| data[(h * len + i) * hd..(h * len + i + 1) * hd].to_vec()).collect::<Vec<f32>>()
    };
    Some((rows(cache.keys().unwrap()?), rows(cache.values().unwrap()?)))
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// Tokens each stage pruned in `s`'s prefill, below position `below`.
fn pruned(s: &Session<'_, HostBackend>, below: usize) -> usize {
    STAGES
        .iter()
        .map(|&l| {
            let (before, at) = (s.caches()[l - 1].positions(), s.caches()[l].positions());
            before.iter().filter(|&&p| p < below && !at.contains(&p)).count()
        })
        .sum()
}

#[test]
fn revived_tokens_rejoin_the_later_layers_with_the_stage_layers_entries() {
    let prompt = tokens(120);
    let before = run(lazy(64), &prompt, 0);
    let unpruned = run(Policy::none(), &prompt, 0);
    let after = run(lazy(64), &prompt, 3);
    let stage = STAGES[0];
    let was = before.caches()[stage].positions();
    let revived: Vec<usize> =
        after.caches()[stage].positions().iter().copied().filter(|p| *p < prompt.len() && !was.contains(p)).collect();
    assert!(!revived.is_empty(), "nothing revived: the test no longer exercises revival");
    // Only what the stage pruned comes back (it still had entries at the layer before).
    assert!(revived.iter().all(|p| before.caches()[stage - 1].positions().contains(p)));
    // Revived tokens stay cached in every later layer, in position order.
    for l in stage..LAYERS {
        let positions = after.caches()[l].positions();
        assert!(positions.windows(2).all(|w| w[0] < w[1]), "layer {l}: {positions:?}");
        assert!(revived.iter().all(|p| positions.contains(p)), "layer {l} lost a revived token");
    }
    // At the stage's own layer a revived token's key and value depend only on its saved
    // hidden state, which prefill computed over the whole prompt: the unpruned run's.
    for &p in &revived {
        let (k, v) = entry(&after.caches()[stage], p).unwrap();
        let (uk, uv) = entry(&unpruned.caches()[stage], p).unwrap();
        assert!(max_diff(&k, &uk) < 1e-5 && max_diff(&v, &uv) < 1e-5, "position {p} at layer {stage}");
    }
    // The first pruned token sees every entry before it in every layer, so all its entries
    // equal the unpruned run's.
    let first_pruned = (0..prompt.len()).find(|p| !was.contains(p)).unwrap();
    if revived.contains(&first_pruned) {
        for l in stage..LAYERS {
            let (k, v) = entry(&after.caches()[l], first_pruned).unwrap();
            let (uk, uv) = entry(&unpruned.caches()[l], first_pruned).unwrap();
            assert!(max_diff(&k, &uk) < 1e-4 && max_diff(&v, &uv) < 1e-4, "layer {l}");
        }
    }
    // Each revived token leaves the aux cache once.
    let hidden = config().hidden * 4;
    assert!(after.stats.revived_tokens >= revived.len());
    assert_eq!(before.stats.aux_bytes, pruned(&before, usize::MAX) * hidden);
    assert_eq!(before.stats.aux_bytes - after.stats.aux_bytes, after.stats.revived_tokens * hidden);
}

#[test]
fn a_stage_revives_at_most_its_limit_per_step() {
    let prompt = tokens(120);
    let before = run(lazy(1), &prompt, 0);
    let after = run(lazy(1), &prompt, 1);
    assert!((1..=STAGES.len()).contains(&after.stats.revived_tokens), "{}", after.stats.revived_tokens);
    for l in STAGES {
        // The step's own token, and at most one per stage up to this one.
        assert!(after.caches()[l].len() - before.caches()[l].len() <= 1 + STAGES.len(), "layer {l}");
    }
}

#[test]
fn without_revive_nothing_comes_back_and_no_aux_cache_is_held() {
    let prompt = tokens(120);
    let s = run(lazy(0), &prompt, 3);
    assert_eq!((s.stats.revived_tokens, s.stats.aux_bytes), (0, 0));
    let plain = run(lazy(0), &prompt, 0);
    let with = run(lazy(64), &prompt, 0);
    for l in 0..LAYERS {
        assert_eq!(plain.caches()[l].positions(), with.caches()[l].positions(), "prefill is the same");
    }
}

#[test]
fn truncation_and_forks_carry_the_aux_cache() {
    let prompt = tokens(120);
    let mut s = run(lazy(64), &prompt, 0);
    let mut fork = s.fork().unwrap();
    assert_eq!(s.step(prompt[5]).unwrap(), fork.step(prompt[5]).unwrap(), "a fork steps as the original");
    assert_eq!(s.stats.revived_tokens, fork.stats.revived_tokens);

    let mut t = run(lazy(64), &prompt, 0);
    let below = pruned(&t, 60);
    t.truncate(60).unwrap();
    t.step(prompt[60]).unwrap();
    for cache in t.caches() {
        assert!(cache.positions().iter().all(|&p| p <= 60));
    }
    // Only the pruned tokens before position 60 are left to revive or to hold.
    assert_eq!(t.stats.aux_bytes + t.stats.revived_tokens * config().hidden * 4, below * config().hidden * 4);
}

#[test]
fn a_batched_step_revives_as_each_session_alone() {
    let (a, b) = (tokens(120), tokens(90));
    let mut alone = [run(lazy(4), &a, 0), run(lazy(2), &b, 0)];
    let mut batched = vec![run(lazy(4), &a, 0), run(lazy(2), &b, 0)];
    let mut next = [a[7], b[3]];
    for _ in 0..3 {
        let want: Vec<Vec<f32>> = alone.iter_mut().zip(next).map(|(s, t)| s.step(t).unwrap()).collect();
        let mut refs: Vec<&mut Session<'static, HostBackend>> = batched.iter_mut().collect();
        let got = Session::step_batch(&mut refs, &next).unwrap();
        for (g, w) in got.iter().zip(&want) {
            assert!(max_diff(g, w) < 1e-5, "batched logits differ by {}", max_diff(g, w));
        }
        next = [argmax(&want[0]), argmax(&want[1])];
    }
    for (s, t) in alone.iter().zip(&batched) {
        assert!(s.stats.revived_tokens > 0);
        assert_eq!(s.stats.revived_tokens, t.stats.revived_tokens);
        for l in 0..LAYERS {
            assert_eq!(s.caches()[l].positions(), t.caches()[l].positions(), "layer {l}");
        }
    }
}

#[test]
fn revival_composes_with_a_decode_budget() {
    let text = "[prefill]\nlayers = [6, 14]\nkeep = [0.7, 0.5]\nsinks = 2\nrecent = 4\nrevive = 2\n\
                [decode]\nbudget = 96\nevery = 8\nsinks = 2\nrecent = 8\n";
    for scorer in ["h2o", "tova"] {
        let policy = Policy::from_toml(&format!("{text}[decode.scorer]\nkind = \"{scorer}\"\n")).unwrap();
        let prompt = tokens(120);
        let mut s = Session::new(backend(), policy).unwrap();
        let mut next = argmax(s.prefill(&prompt, Logits::Last).unwrap().last());
        for step in 0..40 {
            next = argmax(&s.step(next).unwrap());
            for (l, cache) in s.caches().iter().enumerate() {
                let positions = cache.positions();
                assert!(positions.windows(2).all(|w| w[0] < w[1]), "{scorer}, step {step}, layer {l}");
                // Below the budget before the step (else evicted to budget - every), then
                // this step's token and at most two revived tokens per stage.
                assert!(positions.len() <= 96 + 2 * STAGES.len(), "{scorer}, step {step}, layer {l}");
            }
        }
        assert!(s.stats.revived_tokens > 0, "{scorer}: nothing revived");
        // The layers before the first stage hold the whole prompt: they reached the budget
        // and evicted.
        assert!(s.caches()[..STAGES[0]].iter().all(|c| c.len() <= 96), "{scorer}");
    }
}
