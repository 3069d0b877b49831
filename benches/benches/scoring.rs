//! Criterion micro-benchmarks: scoring + selection for every scorer, on each backend's own
//! tensors (candle, libtorch, ONNX Runtime) and on the core's host reference tensors, beside
//! one decoder layer's forward on the same 2,048 tokens with the same backend. Ends with
//! each scorer's cost as a share of that layer's forward, per backend.
//!
//! `cargo xtask scoring-bench` sets up the model, libtorch and ONNX Runtime, then runs
//! `cargo bench -p sieve-benches --bench scoring`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group};
use sieve_backend::{Backend, BackendTensor as BTensor, DeviceSpec, LayerCache, LayerCall, Probe};
use sieve_benches::{default_model, median, prompt_tokens, wikitext_path};
use sieve_core::{Aggregation, Budget, HostTensor, Observation, Pool, ScorerSpec, Selector, Tensor};
use sieve_engine::Model;
use sieve_runtime::{BackendKind, Runtime};

const TOKENS: usize = 2048;
const LAYER: usize = 5;

/// The default model's weights and a 2,048-token WikiText-2 prompt.
fn model() -> (Model, Vec<u32>) {
    let path = default_model().unwrap_or_else(|e| panic!("{e}"));
    let model = Model::load(&path).expect("loading the default model");
    let tokens = prompt_tokens(&model.tokenizer, &wikitext_path(), TOKENS).expect("WikiText-2 prompt");
    (model, tokens)
}

fn scorers() -> Vec<ScorerSpec> {
    vec![
        ScorerSpec::LastQuery { aggregation: Aggregation::Mean },
        ScorerSpec::Snapkv { window: 32, kernel: 7, pooling: Pool::Avg, aggregation: Aggregation::Mean },
        ScorerSpec::H2o { aggregation: Aggregation::Mean, normalize: false },
        ScorerSpec::Knorm {},
        ScorerSpec::Vnorm {},
        ScorerSpec::Recency {},
        ScorerSpec::Random { seed: 0 },
    ]
}

fn to_host<T: Tensor>(t: &T) -> HostTensor {
    HostTensor::new(t.to_host().expect("to_host"), &t.shape()).expect("host tensor")
}

/// Scores with `spec` on tensors of type `T` and selects 25% with sinks and a recent window.
fn score_and_select<T: Tensor + Send + 'static>(
    spec: &ScorerSpec,
    obs_rows: &Observation<'_, T>,
    obs_sums: &Observation<'_, T>,
) -> Vec<usize> {
    let mut scorer = spec.build::<T>();
    let obs = if scorer.needs().attention_queries == usize::MAX { obs_sums } else { obs_rows };
    let scores = scorer.score_tokens(obs).and_then(|s| s.to_host()).expect("scores");
    Selector::new(Budget::Ratio(0.25)).protect(4, 32).select(&scores).expect("selection")
}

/// The median of 7 timed runs of `f`, seconds.
fn time(f: &mut dyn FnMut()) -> f64 {
    let runs: Vec<f64> = (0..7)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .collect();
    median(&runs)
}

/// Benchmarks every scorer on `backend`'s tensors (and, once, on host tensors) beside
/// layer [`LAYER`]'s forward; returns the markdown rows of the cost shares.
/// Layer [`LAYER`]'s observation: `attention` (rows or sums), keys and values.
fn observe<'a, T: Tensor>(
    attention: &'a T,
    keys: &'a T,
    values: &'a T,
    positions: &'a [usize],
    kv_heads: usize,
) -> Observation<'a, T> {
    Observation {
        layer: LAYER,
        step: 0,
        kv_heads,
        positions,
        attention: Some(attention),
        keys: Some(keys),
        values: Some(values),
        queries: None,
        device: attention.device(),
    }
}

fn bench_backend<B: Backend>(c: &mut Criterion, backend: &B, tokens: &[u32], with_host: bool) -> Vec<String> {
    let name = backend.name();
    let positions: Vec<usize> = (0..TOKENS).collect();
    let mut hidden = backend.embed(tokens).expect("embed");
    for l in 0..LAYER {
        let mut cache = LayerCache::default();
        hidden = backend.layer(LayerCall::new(l, &hidden, &positions, Probe::NONE), &mut cache).expect("layer").hidden;
    }
    let mut cache = LayerCache::default();
    let probe = Probe { last_queries: 32, column_sums: true, queries: false };
    let out = backend.layer(LayerCall::new(LAYER, &hidden, &positions, probe), &mut cache).expect("probe layer");
    let (attention, sums) = (out.attention.expect("attention rows"), out.attention_sums.expect("attention sums"));
    let kv_heads = backend.config().n_kv_heads;
    let keys: BTensor<B> = cache.keys().expect("keys").expect("keys");
    let values: BTensor<B> = cache.values().expect("values").expect("values");
    let (rows, sum_obs) = (
        observe(&attention, &keys, &values, &positions, kv_heads),
        observe(&sums, &keys, &values, &positions, kv_heads),
    );
    let (h_att, h_sums, h_keys, h_values) = (to_host(&attention), to_host(&sums), to_host(&keys), to_host(&values));
    let h_rows = observe(&h_att, &h_keys, &h_values, &positions, kv_heads);
    let h_sum_obs = observe(&h_sums, &h_keys, &h_values, &positions, kv_heads);
    let forward = || {
        let mut cache = LayerCache::default();
        black_box(backend.layer(LayerCall::new(LAYER, &hidden, &positions, Probe::NONE), &mut cache).expect("layer"));
    };

    let mut group = c.benchmark_group(format!("{TOKENS} tokens, {name}"));
    group.sample_size(10).measurement_time(Duration::from_secs(4));
    group.bench_function("decoder layer forward", |b| b.iter(forward));
    for spec in scorers() {
        group.bench_function(format!("{} score+select", spec.name()), |b| {
            b.iter(|| black_box(score_and_select(&spec, &rows, &sum_obs)))
        });
        if with_host {
            group.bench_function(format!("{} score+select (host reference)", spec.name()), |b| {
                b.iter(|| black_box(score_and_select(&spec, &h_rows, &h_sum_obs)))
            });
        }
    }
    group.finish();

    // Each scorer's cost relative to the layer it scores, timed in this run.
    let layer = time(&mut || forward());
    scorers()
        .iter()
        .map(|spec| {
            let t = time(&mut || {
                black_box(score_and_select(spec, &rows, &sum_obs));
            });
            format!("| {name} | {} | {:.2} | {:.1} | {:.1}% |", spec.name(), t * 1e3, layer * 1e3, 100.0 * t / layer)
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let (model, tokens) = model();
    let cfg = &model.config;
    let mut rows = Vec::new();
    for kind in BackendKind::ALL {
        if !kind.compiled() {
            eprintln!("skipped {kind}: not compiled in (cargo xtask scoring-bench turns every backend on)");
            continue;
        }
        let b =
            Runtime::load(kind, DeviceSpec::Cpu, cfg, model.weights.clone()).unwrap_or_else(|e| panic!("{kind}: {e}"));
        rows.extend(bench_backend(c, &b, &tokens, kind == BackendKind::Candle));
    }
    println!("\nscoring + selection as a share of one decoder layer's forward ({TOKENS} tokens, CPU, same backend):");
    println!("| backend | scorer | score+select (ms) | layer forward (ms) | share |");
    println!("|---|---|---:|---:|---:|");
    for row in rows {
        println!("{row}");
    }
}

criterion_group!(benches, bench);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
}
