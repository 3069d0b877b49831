//! Session invariants on the reference backend with a synthetic 24-layer model: no model
//! file, no runtime library. Keep 1.0 changes nothing, budgets hold, protected tokens
//! survive, memory is really freed, positions stay original, decode eviction keeps its
//! budget, caches can be truncated and continued, and inputs are checked before a backend
//! sees them.

mod common;

use common::{LAYERS, backend, config, tokens_from};
use std::path::PathBuf;
use std::sync::OnceLock;

use sieve_backend::ModelConfig;
use sieve_backend::reference::HostBackend;
use sieve_backend::synthetic;
use sieve_core::policy::PolicyFile;
use sieve_engine::sampling::argmax;
use sieve_engine::{Error, Logits, Policy, Session};

/// `n` pseudo-random token ids.
fn tokens(n: usize) -> Vec<u32> {
    tokens_from(5, n)
}

fn configs() -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../configs");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.retain(|p| p.extension().is_some_and(|e| e == "toml"));
    files.sort();
    files
}

fn policy(text: &str) -> Policy {
    Policy::from_toml(text).unwrap()
}

/// Prefill then `steps` greedy tokens; every logit row produced, in order.
fn run(policy: Policy, tokens: &[u32], steps: usize) -> (Vec<Vec<f32>>, Session<'static, HostBackend>) {
    let mut session = Session::new(backend(), policy).unwrap();
    let mut rows = vec![session.prefill(tokens, Logits::Last).unwrap().last().to_vec()];
    for _ in 0..steps {
        let next = argmax(rows.last().unwrap());
        rows.push(session.step(next).unwrap());
    }
    (rows, session)
}

#[test]
fn every_preset_at_keep_one_is_identical_to_no_pruning() {
    let tokens = tokens(160);
    let (reference, _) = run(Policy::none(), &tokens, 4);
    let configs = configs();
    assert!(configs.len() >= 10, "{configs:?}");
    for path in configs {
        let mut file = PolicyFile::from_toml(&std::fs::read_to_string(&path).unwrap()).unwrap();
        file.override_keep(1.0);
        if let Some(d) = &mut file.decode {
            d.budget = 8192; // a decode budget the run never reaches
        }
        let (rows, _) = run(file.validate().unwrap(), &tokens, 4);
        assert_eq!(rows, reference, "{} at keep 1.0 changed the logits", path.display());
    }
}

#[test]
fn kv_eviction_meets_budgets_protects_tokens_and_frees_memory() {
    let tokens = tokens(400);
    let per = config().kv_bytes_per_token_layer();
    let p = policy("[kv]\nkeep = 0.25\nsinks = 4\nrecent = 32\n[kv.scorer]\nkind = \"snapkv\"\n");
    let (_, session) = run(p, &tokens, 0);
    for (l, cache) in session.caches().iter().enumerate() {
        assert_eq!(cache.len(), 100, "layer {l}");
        assert!(cache.positions().windows(2).all(|w| w[0] < w[1]), "layer {l}: positions not increasing");
        for p in (0..4).chain(368..400) {
            assert!(cache.positions().contains(&p), "layer {l} lost protected position {p}");
        }
        // The storage really shrank: nothing is allocated beyond the kept entries.
        assert_eq!(cache.capacity(), cache.len(), "layer {l}");
    }
    assert_eq!(session.kv_bytes(), LAYERS * 100 * per);
    assert_eq!(session.kv_bytes_allocated(), session.kv_bytes());
    assert_eq!(session.stats.kv_bytes, session.kv_bytes());
    assert_eq!(session.stats.kv_bytes_unpruned, LAYERS * 400 * per);
}

/// `selection = "head"`: every KV head keeps its own entries, the same count in each,
/// its sinks and the observation window included; the memory is the kept entries only,
/// and decoding goes on over them.
#[test]
fn per_head_selection_keeps_a_set_per_kv_head() {
    let ids = tokens(400);
    let per = config().kv_bytes_per_token_layer();
    let text = "[kv]\nkeep = 0.25\nselection = \"head\"\nsinks = 4\n[kv.scorer]\nkind = \"snapkv\"\nwindow = 8\n";
    let (rows, session) = run(policy(text), &ids, 3);
    assert!(rows.iter().flatten().all(|x| x.is_finite()));
    let heads = config().n_kv_heads;
    let mut differ = 0;
    for (l, cache) in session.caches().iter().enumerate() {
        assert_eq!(cache.len(), 103, "layer {l}");
        for h in 0..heads {
            let pos = cache.head_positions(h);
            assert!(pos.windows(2).all(|w| w[0] < w[1]), "layer {l} head {h}");
            for p in (0..4).chain(392..403) {
                assert!(pos.contains(&p), "layer {l} head {h} lost position {p}");
            }
        }
        differ += usize::from((1..heads).any(|h| cache.head_positions(h) != cache.head_positions(0)));
    }
    assert!(differ > LAYERS / 2, "heads chose the same entries in most layers ({differ} of {LAYERS} differ)");
    assert_eq!(session.kv_bytes(), LAYERS * 103 * per);
    // With one shared set (the default), the same budget.
    let (_, shared) = run(policy(&text.replace("selection = \"head\"\n", "")), &ids, 3);
    assert!(shared.caches().iter().all(|c| !c.is_per_head() && c.len() == 103));
    // Not with a mass budget, nor with a decode budget that selects per layer.
    assert!(Policy::from_toml("[kv]\nmass = 0.9\nselection = \"head\"\n").is_err());
    let err = Policy::from_toml("[kv]\nkeep = 0.5\nselection = \"head\"\n[decode]\nbudget = 64\n").unwrap_err();
    assert!(err.to_string().contains("selection = \"head\""), "{err}");
}

/// `selection = "ada"` (Ada-KV): each layer keeps heads × its per-head budget in all, split
/// across its KV heads by score, every head with its sinks, window and safeguard share; the
/// shorter heads are padded, the statistics tell live bytes from allocated ones, and the
/// session goes on (decode eviction per head, a second turn) over the padded cache. With a
/// safeguard of 1 every head keeps its own budget: the same as `selection = "head"`.
#[test]
fn ada_budgets_split_each_layer_across_heads() {
    let ids = tokens(400);
    let config = config();
    let per_head_entry = config.kv_bytes_per_token_layer() / config.n_kv_heads;
    let text = "[kv]\nkeep = 0.25\nselection = \"ada\"\nsinks = 4\n[kv.scorer]\nkind = \"snapkv\"\nwindow = 8\n";
    let (rows, session) = run(policy(text), &ids, 3);
    assert!(rows.iter().flatten().all(|x| x.is_finite()));
    let heads = config.n_kv_heads;
    let mut uneven = 0;
    for (l, cache) in session.caches().iter().enumerate() {
        // 100 entries per head before the 3 decode steps, 3 more in each head after.
        assert_eq!(cache.live_entries(), heads * 103, "layer {l}");
        let counts: Vec<usize> = (0..heads).map(|h| cache.head_positions(h).len()).collect();
        for (h, &n) in counts.iter().enumerate() {
            assert_eq!(cache.head_padding(h) + n, cache.len(), "layer {l} head {h}");
            // Sinks, the window and 20% of the rest of the nominal 100: at least 30.
            assert!(n >= 12 + 17 + 3, "layer {l} head {h} keeps {n}");
            let pos = cache.head_positions(h);
            assert!(pos.windows(2).all(|w| w[0] < w[1]), "layer {l} head {h}");
            for p in (0..4).chain(392..403) {
                assert!(pos.contains(&p), "layer {l} head {h} lost position {p}");
            }
        }
        uneven += usize::from(counts.iter().any(|&n| n != counts[0]));
    }
    assert!(uneven > LAYERS / 2, "heads kept equal counts in most layers ({uneven} of {LAYERS} uneven)");
    assert_eq!(session.kv_bytes(), LAYERS * heads * 103 * per_head_entry);
    assert!(session.kv_bytes_allocated() > session.kv_bytes(), "the padding is allocated");

    // Safeguard 1: every head keeps its own budget, exactly as per-head selection.
    let (even_rows, even) = run(policy(&text.replace("\"ada\"", "\"ada\"\nsafeguard = 1.0")), &ids, 3);
    let (head_rows, head) = run(policy(&text.replace("\"ada\"", "\"head\"")), &ids, 3);
    assert_eq!(even_rows, head_rows);
    for (a, b) in even.caches().iter().zip(head.caches()) {
        assert!(a.padding().is_none());
        assert!((0..heads).all(|h| a.head_positions(h) == b.head_positions(h)));
    }

    // A decode budget per head after the ragged cut, and a second turn, go on over it.
    let decode = format!("{text}[decode]\nbudget = 64\nevery = 8\nsinks = 4\nrecent = 8\nselection = \"head\"\n");
    let mut session = Session::new(backend(), policy(&decode)).unwrap();
    let mut logits = session.prefill(&ids[..200], Logits::Last).unwrap().last().to_vec();
    assert!(session.caches().iter().any(|c| c.padding().is_some()));
    for step in 0..30 {
        logits = session.step(argmax(&logits)).unwrap();
        assert!(logits.iter().all(|x| x.is_finite()));
        for (l, cache) in session.caches().iter().enumerate() {
            assert!(cache.len() <= 64, "step {step}, layer {l}: {} rows", cache.len());
        }
    }
    let before: Vec<usize> = session.caches().iter().map(|c| c.live_entries()).collect();
    let more = session.prefill(&ids[200..300], Logits::Last).unwrap();
    assert!(more.last().iter().all(|x| x.is_finite()));
    for (l, cache) in session.caches().iter().enumerate() {
        // The second turn's 100 tokens are cut to 25 per head; what was kept stays.
        assert_eq!(cache.live_entries(), before[l] + heads * 25, "layer {l}");
    }

    // Bad settings are refused with the key named.
    for bad in [
        "[kv]\nmass = 0.9\nselection = \"ada\"\n",
        "[kv]\nkeep = 0.5\nsafeguard = 0.3\n",
        "[kv]\nkeep = 0.5\nselection = \"ada\"\nsafeguard = 1.5\n",
        "[kv]\nkeep = 0.5\n[decode]\nbudget = 64\nselection = \"ada\"\n",
    ] {
        assert!(Policy::from_toml(bad).is_err(), "{bad}");
    }
}

/// A decode budget per KV head (after a per-head cut of the prompt, with H2O's normalised
/// sums): never exceeded, every head keeps its sinks and recent tokens and its own choice
/// of the rest, and the running sums follow each head's evictions.
#[test]
fn per_head_decode_budget_is_never_exceeded() {
    let text = "[kv]\nkeep = 0.5\nselection = \"head\"\nsinks = 4\nrecent = 8\n[kv.scorer]\nkind = \"h2o\"\nnormalize = true\n\
                [decode]\nbudget = 64\nevery = 8\nsinks = 4\nrecent = 8\nselection = \"head\"\n[decode.scorer]\nkind = \"h2o\"\nnormalize = true\n";
    let mut session = Session::new(backend(), policy(text)).unwrap();
    let mut logits = session.prefill(&tokens(100), Logits::Last).unwrap().last().to_vec();
    assert!(session.caches().iter().all(|c| c.len() == 50));
    let heads = config().n_kv_heads;
    let mut differ = 0;
    for step in 0..40 {
        logits = session.step(argmax(&logits)).unwrap();
        assert!(logits.iter().all(|x| x.is_finite()));
        let newest = session.next_position() - 1;
        for (l, cache) in session.caches().iter().enumerate() {
            assert!(cache.len() <= 64, "step {step}, layer {l}: {} entries", cache.len());
            for h in 0..heads {
                let pos = cache.head_positions(h);
                for p in (0..4).chain(newest + 1 - 8..=newest) {
                    assert!(pos.contains(&p), "step {step}, layer {l}, head {h} lost position {p}");
                }
            }
            differ += usize::from(step == 39 && cache.head_positions(0) != cache.head_positions(1));
        }
    }
    assert!(differ > LAYERS / 2, "{differ} of {LAYERS} layers with heads that differ");
}

#[test]
fn pyramid_budgets_fall_with_depth_and_keep_the_total() {
    let (_, session) = run(policy("[kv]\nkeep = 0.25\nschedule = \"pyramid\"\nbeta = 4\n"), &tokens(400), 0);
    let lens: Vec<usize> = session.caches().iter().map(|c| c.len()).collect();
    assert!(lens.windows(2).all(|w| w[0] >= w[1]), "{lens:?}");
    assert!(lens[0] > lens[LAYERS - 1], "{lens:?}");
    assert_eq!(lens.iter().sum::<usize>(), LAYERS * 100, "{lens:?}");
}

#[test]
fn decode_budget_is_never_exceeded() {
    let tokens = tokens(100);
    for scorer in ["h2o", "tova", "recency", "knorm"] {
        let text =
            format!("[decode]\nbudget = 64\nevery = 8\nsinks = 4\nrecent = 8\n[decode.scorer]\nkind = \"{scorer}\"\n");
        let mut session = Session::new(backend(), policy(&text)).unwrap();
        let mut logits = session.prefill(&tokens, Logits::Last).unwrap().last().to_vec();
        assert!(session.caches().iter().all(|c| c.len() == 100), "prefill keeps everything until the first step");
        for step in 0..30 {
            logits = session.step(argmax(&logits)).unwrap();
            let newest = session.next_position() - 1;
            for (l, cache) in session.caches().iter().enumerate() {
                assert!(cache.len() <= 64, "{scorer}: step {step}, layer {l}: {} entries", cache.len());
                for p in (0..4).chain(newest + 1 - 8..=newest) {
                    assert!(cache.positions().contains(&p), "{scorer}: step {step}, layer {l} lost position {p}");
                }
            }
        }
    }
}

#[test]
fn prefill_pruning_keeps_original_positions() {
    let p = policy("[prefill]\nlayers = [3, 10]\nkeep = [0.6, 0.3]\nsinks = 4\nrecent = 8\n");
    let (_, mut session) = run(p, &tokens(400), 0);
    let expected = [400, 400, 400, 240, 240, 240, 240, 240, 240, 240, 120];
    assert_eq!(&session.stats.tokens_per_layer[..11], &expected);
    assert!(session.stats.flops_saved > 0.5, "{}", session.stats.flops_saved);
    for (l, cache) in session.caches().iter().enumerate() {
        assert_eq!(cache.len(), session.stats.tokens_per_layer[l], "layer {l}");
        assert!(cache.positions().windows(2).all(|w| w[0] < w[1]));
        assert!(cache.positions().iter().all(|&p| p < 400));
        for p in (0..4).chain(392..400) {
            assert!(cache.positions().contains(&p), "layer {l} lost position {p}");
        }
    }
    // Layers after a pruning layer see a subset of what the layer before saw.
    let pos = |l: usize| session.caches()[l].positions().to_vec();
    assert!(pos(10).iter().all(|p| pos(9).contains(p)));
    // The next token continues from the last original position.
    assert_eq!(session.next_position(), 400);
    session.step(42).unwrap();
    assert!(session.caches().iter().all(|c| *c.positions().last().unwrap() == 400));
}

/// GemFilter: layers 0..L-1 choose on the whole prompt, then every layer holds exactly the
/// kept tokens at their original positions, and the logits are those of the model run on
/// those tokens alone.
#[test]
fn gemfilter_reruns_the_model_on_the_kept_tokens() {
    use sieve_backend::{Backend, LayerCache, LayerCall, Probe};
    use sieve_core::Tensor as _;
    let p = policy("[prefill]\nkind = \"gemfilter\"\nlayers = [6]\nkeep = 0.25\nsinks = 4\nrecent = 8\n");
    let tokens = tokens(400);
    let mut session = Session::new(backend(), p).unwrap();
    let got = session.prefill(&tokens, Logits::Last).unwrap();
    let kept = session.caches()[0].positions().to_vec();
    assert_eq!(kept.len(), 100);
    assert!((0..4).chain(392..400).all(|p| kept.contains(&p)), "sinks and recent tokens are kept");
    assert!(kept.windows(2).all(|w| w[0] < w[1]));
    for (l, cache) in session.caches().iter().enumerate() {
        assert_eq!(cache.positions(), kept.as_slice(), "layer {l} holds the kept tokens only");
        let expected = if l < 6 { 400 + 100 } else { 100 };
        assert_eq!(session.stats.tokens_per_layer[l], expected, "layer {l}: rows computed in both passes");
    }
    assert!(session.stats.flops_saved > 0.5, "{}", session.stats.flops_saved);
    // The second pass is the model on the kept tokens alone.
    let b = backend();
    let ids: Vec<u32> = kept.iter().map(|&p| tokens[p]).collect();
    let mut h = b.embed(&ids).unwrap();
    for l in 0..LAYERS {
        h = b.layer(LayerCall::new(l, &h, &kept, Probe::NONE), &mut LayerCache::default()).unwrap().hidden;
    }
    let last = h.narrow(0, kept.len() - 1, 1).unwrap();
    let want = b.logits(&last).unwrap().to_host().unwrap();
    assert_eq!(got.last(), want.as_slice());
    assert_eq!(session.next_position(), 400);
    session.step(42).unwrap();
    assert!(session.caches().iter().all(|c| c.len() == 101 && *c.positions().last().unwrap() == 400));
}

/// `relative_to = "context"`: every layer keeps the same number of entries, a fraction of
/// the context, whatever prefill propagated to it (FastKV); by default, a fraction of the
/// layer's own entries.
#[test]
fn kv_budgets_relative_to_the_context_or_the_layer() {
    let text = |basis: &str| {
        format!(
            "[prefill]\nlayers = [3]\nkeep = 0.5\nsinks = 4\nrecent = 8\n[kv]\nkeep = 0.2\nsinks = 4\nrecent = 8\nrelative_to = \"{basis}\"\n[kv.scorer]\nkind = \"snapkv\"\nwindow = 8\n"
        )
    };
    let (_, session) = run(policy(&text("context")), &tokens(400), 0);
    assert!(
        session.caches().iter().all(|c| c.len() == 80),
        "{:?}",
        session.caches().iter().map(|c| c.len()).collect::<Vec<_>>()
    );
    let (_, session) = run(policy(&text("layer")), &tokens(400), 0);
    let lens: Vec<usize> = session.caches().iter().map(|c| c.len()).collect();
    assert!(lens[..3].iter().all(|&n| n == 80) && lens[3..].iter().all(|&n| n == 40), "{lens:?}");
    // A prompt shorter than the protected tokens over the fraction keeps them all.
    let (_, session) = run(policy(&text("context")), &tokens(30), 0);
    assert!(session.caches().iter().all(|c| c.len() == 12), "{:?}", session.caches()[0].len());
    let err = Policy::from_toml("[kv]\ntokens = 64\nrelative_to = \"context\"\n").unwrap_err();
    assert!(err.to_string().contains("relative_to = \"context\" applies to `keep`"), "{err}");
}

/// A novelty budget keeps more of a prompt that does not repeat itself.
#[test]
fn novelty_budgets_keep_more_of_varied_prompts() {
    let p = policy("[prefill]\nlayers = [4, 12, 20]\nnovelty = [0.3, 0.6]\nsinks = 4\nrecent = 8\n");
    let repeated: Vec<u32> = (0..400).map(|i| (i % 7) as u32).collect();
    let (_, varied) = run(p.clone(), &tokens(400), 0);
    let (_, repetitive) = run(p, &repeated, 0);
    let kept = |s: &Session<'static, HostBackend>| s.stats.tokens_per_layer[LAYERS - 1];
    assert!(
        (120..=125).contains(&kept(&repetitive)),
        "a prompt that only repeats keeps about 30%: {}",
        kept(&repetitive)
    );
    assert!(kept(&varied) > 220, "a varied prompt keeps nearly 60%: {}", kept(&varied));
}

#[test]
fn gemfilter_selects_once() {
    let err = Policy::from_toml("[prefill]\nkind = \"gemfilter\"\nlayers = [4, 8]\nkeep = 0.5\n").unwrap_err();
    assert!(err.to_string().contains("kind = \"gemfilter\" selects once"), "{err}");
}

#[test]
fn adaptive_budgets_follow_the_attention() {
    let (_, session) = run(policy("[kv]\nmass = 0.9\nsinks = 4\nrecent = 16\n"), &tokens(400), 0);
    let lens: Vec<usize> = session.caches().iter().map(|c| c.len()).collect();
    assert_eq!(session.stats.kv_entries, lens);
    assert!(lens.iter().all(|&n| (20..400).contains(&n)), "{lens:?}");
    let distinct: std::collections::BTreeSet<_> = lens.iter().collect();
    assert!(distinct.len() > 3, "the kept count should differ between layers: {lens:?}");
}

#[test]
fn token_by_token_decoding_matches_prefill() {
    let tokens = tokens(40);
    let mut full = Session::new(backend(), Policy::none()).unwrap();
    let all = full.prefill(&tokens, Logits::All).unwrap();
    assert_eq!(all.positions, (0..40).collect::<Vec<_>>());
    let mut inc = Session::new(backend(), Policy::none()).unwrap();
    inc.prefill(&tokens[..1], Logits::Last).unwrap();
    for (i, &t) in tokens.iter().enumerate().skip(1) {
        let logits = inc.step(t).unwrap();
        let diff = logits.iter().zip(all.row(i)).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(diff < 1e-4, "position {i}: {diff}");
    }
}

/// `extend` scores a continuation as steps would, in one call: nothing of it pruned, the
/// compressed prefix left as it was; a policy that evicts while decoding is refused.
#[test]
fn extending_a_compressed_cache_matches_steps() {
    let ids = tokens(60);
    let text = "[kv]\nkeep = 0.5\nselection = \"ada\"\nsinks = 4\n[kv.scorer]\nkind = \"snapkv\"\nwindow = 8\n\n[prefill]\nlayers = [1]\nkeep = [0.5]\n";
    let p = policy(text);
    let mut stepped = Session::new(backend(), p.clone()).unwrap();
    stepped.prefill(&ids[..40], Logits::Last).unwrap();
    let mut extended = Session::new(backend(), p).unwrap();
    extended.prefill(&ids[..40], Logits::Last).unwrap();
    let kept: Vec<Vec<usize>> = extended.caches().iter().map(|c| c.positions().to_vec()).collect();
    let out = extended.extend(&ids[40..], Logits::All).unwrap();
    assert_eq!(out.positions, (40..60).collect::<Vec<_>>());
    for (i, &t) in ids[40..].iter().enumerate() {
        let logits = stepped.step(t).unwrap();
        let diff = logits.iter().zip(out.row(i)).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(diff < 1e-4, "token {i}: {diff}");
    }
    for (l, (c, before)) in extended.caches().iter().zip(&kept).enumerate() {
        assert_eq!(c.positions()[..before.len()], before[..], "layer {l}: the prefix changed");
        assert_eq!(c.len(), before.len() + 20, "layer {l}: the continuation was pruned");
        assert_eq!(c.positions(), stepped.caches()[l].positions(), "layer {l}");
    }
    let mut evicting = Session::new(backend(), policy("[decode]\nbudget = 32\n")).unwrap();
    evicting.prefill(&ids[..40], Logits::Last).unwrap();
    let e = evicting.extend(&ids[40..], Logits::All).unwrap_err();
    assert!(e.to_string().contains("one step at a time"), "{e}");
}

/// Gemma's block with a local layer of 6 positions ([`synthetic::tiny_gemma_config`]).
fn gemma() -> &'static HostBackend {
    static BACKEND: OnceLock<HostBackend> = OnceLock::new();
    let config = ModelConfig { context: 1024, ..synthetic::tiny_gemma_config() };
    BACKEND.get_or_init(|| HostBackend::new(&config, synthetic::weights(&config, 12, false)).unwrap())
}

/// A local layer drops what leaves its window, and only that: decoding token by token
/// (chunks of a prompt, then single steps) gives the logits of one prefill of everything,
/// while the local layer never holds more than its window.
#[test]
fn local_layers_evict_only_what_leaves_their_window() {
    let ids = tokens(30);
    let all = Session::new(gemma(), Policy::none()).unwrap().prefill(&ids, Logits::All).unwrap();
    let mut inc = Session::new(gemma(), Policy::none()).unwrap();
    inc.prefill(&ids[..9], Logits::Last).unwrap();
    inc.prefill(&ids[9..12], Logits::Last).unwrap();
    for (i, &t) in ids.iter().enumerate().skip(12) {
        let logits = inc.step(t).unwrap();
        let diff = logits.iter().zip(all.row(i)).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(diff < 1e-4, "position {i}: {diff}");
        assert_eq!(inc.caches()[0].positions(), &((i - 5)..=i).collect::<Vec<_>>()[..], "local layer at {i}");
        assert_eq!(inc.caches()[1].len(), i + 1, "global layer at {i}");
    }
    let per = sieve_backend::Backend::config(gemma()).kv_bytes_per_token_layer();
    assert_eq!(inc.stats.kv_bytes_unpruned, (6 + 30) * per);
}

/// Going back within the window continues like a fresh session; going back past what a
/// local layer has dropped is refused and changes nothing.
#[test]
fn truncation_respects_what_local_layers_dropped() {
    let ids = tokens(20);
    let mut session = Session::new(gemma(), Policy::none()).unwrap();
    session.prefill(&ids, Logits::Last).unwrap();
    let e = session.truncate(10).unwrap_err();
    assert!(e.to_string().contains("cannot go back to position 10"), "{e}");
    assert_eq!(session.next_position(), 20);
    // The last query (19) saw 14..=19: a token at 19 sees 14..=19 again.
    session.truncate(19).unwrap();
    let mut fed = ids[..19].to_vec();
    fed.extend([7, 8]);
    let continued = session.prefill(&fed[19..], Logits::Last).unwrap();
    let fresh = Session::new(gemma(), Policy::none()).unwrap().prefill(&fed, Logits::Last).unwrap();
    let diff = continued.last().iter().zip(fresh.last()).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(diff < 1e-4, "{diff}");
}

/// A stateful decode scorer (H2O's sums) follows the window's evictions, in a prefill
/// that follows cached entries and in the steps after it.
#[test]
fn decode_scores_follow_window_evictions() {
    let p = policy("[decode]\nbudget = 12\nsinks = 1\nrecent = 2\n[decode.scorer]\nkind = \"h2o\"\n");
    let mut session = Session::new(gemma(), p).unwrap();
    let ids = tokens(40);
    session.prefill(&ids[..10], Logits::Last).unwrap();
    session.prefill(&ids[10..20], Logits::Last).unwrap();
    for &t in &ids[20..] {
        session.step(t).unwrap();
        assert!(session.caches()[0].len() <= 6, "{:?}", session.stats.kv_entries);
        assert!(session.caches()[1].len() <= 12, "{:?}", session.stats.kv_entries);
    }
}

/// Per-KV-head selection is refused on a model with local layers and several KV heads
/// (the window would be masked by one head's positions), with a message that says so.
#[test]
fn per_head_selection_is_refused_with_local_layers_and_kv_heads() {
    let p = policy(
        "[kv]\nkeep = 0.5\nselection = \"head\"\n[kv.scorer]\nkind = \"knorm\"\n[decode]\nbudget = 64\nselection = \"head\"\n[decode.scorer]\nkind = \"knorm\"\n",
    );
    let e = Session::new(gemma(), p).err().expect("refused");
    assert!(e.to_string().contains("sliding-window"), "{e}");
}

#[test]
fn a_truncated_session_continues_like_a_fresh_one() {
    // A chat turn that rewrites the end of the conversation: forget from position 30 on,
    // then feed a different ending; the logits equal a fresh prefill of the same tokens.
    let mut ids = tokens(50);
    let mut session = Session::new(backend(), Policy::none()).unwrap();
    session.prefill(&ids, Logits::Last).unwrap();
    session.truncate(30).unwrap();
    assert_eq!(session.next_position(), 30);
    assert!(session.caches().iter().all(|c| c.len() == 30));
    ids.truncate(30);
    ids.extend([1, 2, 3, 4, 5]);
    let continued = session.prefill(&ids[30..], Logits::Last).unwrap();
    let fresh = Session::new(backend(), Policy::none()).unwrap().prefill(&ids, Logits::Last).map(|o| o.last().to_vec());
    let diff = continued.last().iter().zip(fresh.unwrap()).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(diff < 1e-4, "{diff}");
}

/// A second prefill (the next turn of a chat) cuts only its own entries: what the first
/// kept stays, so a context is compressed once and not again at every turn.
#[test]
fn later_turns_compress_only_their_own_entries() {
    let ids = tokens(300);
    let p = policy("[kv]\nkeep = 0.5\nsinks = 4\nrecent = 8\n[kv.scorer]\nkind = \"snapkv\"\nwindow = 8\n");
    let mut session = Session::new(backend(), p).unwrap();
    session.prefill(&ids[..200], Logits::Last).unwrap();
    let first: Vec<Vec<usize>> = session.caches().iter().map(|c| c.positions().to_vec()).collect();
    assert!(first.iter().all(|p| p.len() == 100));
    session.prefill(&ids[200..], Logits::Last).unwrap();
    for (l, cache) in session.caches().iter().enumerate() {
        assert_eq!(cache.len(), 150, "layer {l}");
        assert_eq!(&cache.positions()[..100], &first[l][..], "layer {l} cut the first turn again");
        // The second turn's own last tokens (its observation window and `recent`) stay;
        // its first ones are not sinks.
        assert!(cache.positions().ends_with(&(292..300).collect::<Vec<_>>()), "layer {l}");
    }
}

/// A session truncated (a chat rewriting its end) while a decode budget is full goes on
/// evicting by the scores it had for the surviving entries.
#[test]
fn a_truncated_session_keeps_its_decode_scores() {
    let p = policy("[decode]\nbudget = 64\nevery = 8\nsinks = 4\nrecent = 8\n[decode.scorer]\nkind = \"h2o\"\n");
    let mut session = Session::new(backend(), p).unwrap();
    session.prefill(&tokens(80), Logits::Last).unwrap();
    session.truncate(70).unwrap();
    assert!(session.caches().iter().all(|c| c.len() == 70));
    session.step(3).unwrap();
    assert!(session.caches().iter().all(|c| c.len() == 57), "{:?}", session.stats.kv_entries);
    assert!(session.caches().iter().all(|c| c.positions().last() == Some(&70)));
}

#[test]
fn inputs_are_checked_before_the_backend_sees_them() {
    let mut session = Session::new(backend(), Policy::none()).unwrap();
    match session.prefill(&[1, 64, 2], Logits::Last) {
        Err(Error::TokenId { id: 64, vocab: 64 }) => {}
        other => panic!("expected a token id error, got {other:?}"),
    }
    assert!(matches!(session.prefill(&[], Logits::Last), Err(Error::EmptyPrompt)));
    match session.prefill(&tokens(1025), Logits::Last) {
        Err(Error::ContextOverflow { needed: 1025, context: 1024 }) => {}
        other => panic!("expected a context overflow, got {other:?}"),
    }
    // Nothing was cached by the refused calls.
    assert_eq!(session.next_position(), 0);
    assert!(session.caches().iter().all(|c| c.is_empty()));
    // A policy that does not fit the model is refused when the session is made.
    let too_deep = policy("[prefill]\nlayers = [30]\nkeep = 0.5\n");
    assert!(Session::new(backend(), too_deep).is_err());
}

#[test]
fn batched_steps_equal_steps_one_session_at_a_time() {
    // Sessions with different policies and contexts, stepped together and alone.
    let policies = [
        "",
        "[decode]\nbudget = 48\nevery = 4\nsinks = 4\nrecent = 8\n[decode.scorer]\nkind = \"h2o\"\n",
        "[kv]\nkeep = 0.5\nsinks = 4\nrecent = 8\nselection = \"head\"\n[kv.scorer]\nkind = \"snapkv\"\n[decode]\nbudget = 40\nselection = \"head\"\nsinks = 4\nrecent = 8\n[decode.scorer]\nkind = \"knorm\"\n",
    ];
    let prompts = [tokens(30), tokens(70), tokens(55)];
    let start = |i: usize| {
        let mut s = Session::new(backend(), policy(policies[i])).unwrap();
        let logits = s.prefill(&prompts[i], Logits::Last).unwrap().last().to_vec();
        (s, argmax(&logits))
    };
    let (mut alone, mut next_alone): (Vec<_>, Vec<_>) = (0..3).map(start).unzip();
    let (mut batched, mut next_batched): (Vec<_>, Vec<_>) = (0..3).map(start).unzip();
    for step in 0..24 {
        let rows_alone: Vec<Vec<f32>> = alone.iter_mut().zip(&next_alone).map(|(s, &t)| s.step(t).unwrap()).collect();
        let mut refs: Vec<&mut Session<'_, HostBackend>> = batched.iter_mut().collect();
        let rows_batched = Session::step_batch(&mut refs, &next_batched).unwrap();
        for i in 0..3 {
            assert_eq!(rows_alone[i], rows_batched[i], "session {i}, step {step}: logits differ");
            assert_eq!(
                alone[i].caches()[5].positions(),
                batched[i].caches()[5].positions(),
                "session {i}, step {step}"
            );
            assert_eq!(alone[i].kv_bytes(), batched[i].kv_bytes());
        }
        next_alone = rows_alone.iter().map(|r| argmax(r)).collect();
        next_batched = rows_batched.iter().map(|r| argmax(r)).collect();
    }
    assert!(batched[1].caches().iter().all(|c| c.len() <= 48), "the decode budget holds in a batch");
    // A token past the vocabulary is refused before any session changes.
    let before: Vec<usize> = batched.iter().map(|s| s.next_position()).collect();
    let mut refs: Vec<&mut Session<'_, HostBackend>> = batched.iter_mut().collect();
    assert!(Session::step_batch(&mut refs, &[1, 1_000_000, 2]).is_err());
    assert!(Session::step_batch(&mut refs, &[1, 2]).is_err(), "one token per session");
    assert_eq!(before, batched.iter().map(|s| s.next_position()).collect::<Vec<_>>());
}

#[test]
fn a_forked_session_and_its_original_go_on_independently() {
    let text = "[kv]\nkeep = 0.5\nsinks = 4\nrecent = 8\n[kv.scorer]\nkind = \"snapkv\"\n[decode]\nbudget = 40\nsinks = 4\nrecent = 8\n[decode.scorer]\nkind = \"h2o\"\n";
    let doc = tokens(90);
    let continue_with = |s: &mut Session<'_, HostBackend>, ids: &[u32]| -> Vec<Vec<f32>> {
        let mut rows = vec![s.prefill(ids, Logits::Last).unwrap().last().to_vec()];
        for _ in 0..12 {
            let next = argmax(rows.last().unwrap());
            rows.push(s.step(next).unwrap());
        }
        rows
    };
    let mut original = Session::new(backend(), policy(text)).unwrap();
    original.prefill(&doc, Logits::Last).unwrap();
    let mut fork = original.fork().unwrap();
    let from_fork = continue_with(&mut fork, &[7, 8, 9]);
    let from_original = continue_with(&mut original, &[20, 21]);
    for (question, rows) in [(&[7u32, 8, 9][..], &from_fork), (&[20, 21][..], &from_original)] {
        let mut fresh = Session::new(backend(), policy(text)).unwrap();
        fresh.prefill(&doc, Logits::Last).unwrap();
        assert_eq!(&continue_with(&mut fresh, question), rows, "a fork must behave as a session that ran the same way");
    }
}

/// StreamingLLM's policy with the cache renumbered after every eviction (or, with
/// `original`, only when the context is full).
fn streaming(positions: &str) -> Policy {
    policy(&format!(
        "[decode]\nbudget = 32\nevery = 8\nsinks = 4\npositions = \"{positions}\"\n[decode.scorer]\nkind = \"recency\"\n"
    ))
}

/// A model whose context is 96 positions.
fn short_context() -> &'static HostBackend {
    static BACKEND: OnceLock<HostBackend> = OnceLock::new();
    let config = ModelConfig { context: 96, ..config() };
    BACKEND.get_or_init(|| HostBackend::new(&config, synthetic::weights(&config, 11, false)).unwrap())
}

/// Feeds `ids` to both sessions, which must give the same logits (within 1e-4) each step.
fn same_steps(a: &mut Session<'_, HostBackend>, b: &mut Session<'_, HostBackend>, ids: &[u32]) {
    for (i, &t) in ids.iter().enumerate() {
        let (x, y) = (a.step(t).unwrap(), b.step(t).unwrap());
        let diff = x.iter().zip(&y).map(|(p, q)| (p - q).abs()).fold(0f32, f32::max);
        assert!(diff < 1e-4, "step {i}: {diff}");
    }
}

/// A session with a recency budget of `budget` entries (evicting a third at a time) fed
/// `ids` (the first `prompt` as a prefill, then step by step), and a renumbered copy of it.
fn renumbered_copy(
    backend: &'static HostBackend,
    budget: usize,
    ids: &[u32],
    prompt: usize,
) -> (Session<'static, HostBackend>, Session<'static, HostBackend>) {
    let p =
        policy(&format!("[decode]\nbudget = {budget}\nevery = {}\n[decode.scorer]\nkind = \"recency\"\n", budget / 3));
    let mut original = Session::new(backend, p).unwrap();
    original.prefill(&ids[..prompt], Logits::Last).unwrap();
    for &t in &ids[prompt..] {
        original.step(t).unwrap();
    }
    let mut moved = original.fork().unwrap();
    assert!(moved.renumber().unwrap());
    (original, moved)
}

/// Renumbering a cache whose entries are consecutive moves every position by the same
/// amount, which rotary attention cannot see: the session goes on with the same logits as
/// its unrenumbered copy, at lower positions. This checks the rotation of the keys.
#[test]
fn renumbering_consecutive_entries_changes_no_logit() {
    let ids = tokens(80);
    let (mut original, mut moved) = renumbered_copy(backend(), 24, &ids[..40], 20);
    let first = original.caches()[0].positions()[0];
    assert!(first > 0, "the oldest entries were evicted");
    assert_eq!(moved.next_position(), original.next_position() - first);
    assert!(moved.caches().iter().all(|c| c.positions() == (0..c.len()).collect::<Vec<_>>()));
    same_steps(&mut original, &mut moved, &ids[40..]);
    assert_eq!(moved.tokens_seen(), original.tokens_seen());
}

/// The same on Gemma's block, whose local layers rotate with a base of their own and hold
/// only their window.
#[test]
fn renumbering_a_gemma_cache_changes_no_logit() {
    let ids = tokens(60);
    let (mut original, mut moved) = renumbered_copy(gemma(), 12, &ids[..30], 10);
    assert!(moved.next_position() < original.next_position());
    same_steps(&mut original, &mut moved, &ids[30..]);
}

/// With `positions = "cache"` the entries always sit at their places in the cache, sinks
/// first, so positions never pass the budget plus `every`, and the text can run three
/// times past the context; with `original` the session renumbers only when the context is
/// full. Either way it cannot go back afterwards.
#[test]
fn a_streaming_cache_runs_past_the_context() {
    let ids = tokens(3 * 96);
    for mode in ["cache", "original"] {
        let mut session = Session::new(short_context(), streaming(mode)).unwrap();
        session.prefill(&ids[..1], Logits::Last).unwrap();
        for (i, &t) in ids.iter().enumerate().skip(1) {
            session.step(t).unwrap_or_else(|e| panic!("{mode}: token {i}: {e}"));
            assert!(session.caches().iter().all(|c| c.len() <= 32), "{mode}: token {i}");
            if mode == "cache" {
                assert!(session.next_position() <= 32 + 8, "{mode}: token {i}: {}", session.next_position());
                let c = &session.caches()[0];
                assert_eq!(c.positions(), (0..c.len()).collect::<Vec<_>>(), "token {i}");
            }
        }
        assert_eq!(session.tokens_seen(), 3 * 96, "{mode}");
        assert!(session.next_position() < 96, "{mode}");
        let e = session.truncate(100).unwrap_err();
        assert!(e.to_string().contains("renumbered"), "{e}");
    }
    // Unbounded, the context is the limit, as before.
    let mut none = Session::new(short_context(), Policy::none()).unwrap();
    none.prefill(&ids[..95], Logits::Last).unwrap();
    none.step(ids[95]).unwrap();
    assert!(!none.can_take(1));
    assert!(matches!(none.step(ids[96]), Err(Error::ContextOverflow { needed: 97, context: 96 })));
}
