//! Criterion micro-benchmarks: scoring + selection for every scorer, on sieve-candle's
//! tensors and on the core's host reference tensors, beside one decoder layer's forward
//! on the same 2,048 tokens. Ends with each scorer's cost as a share of the layer forward.
//!
//! `cargo bench -p sieve-benches --bench scoring` (needs the default model:
//! `cargo xtask fetch-model`).

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group};
use sieve_benches::{median, prompt_tokens, wikitext_path};
use sieve_candle::{CandleBackend, CandleDevice, CandleTensor};
use sieve_core::host::Host;
use sieve_core::{Aggregation, Budget, HostTensor, Observation, Pool, ScorerSpec, Selector, Tensor};
use sieve_engine::{Backend, LayerCache, Model, Probe};

const TOKENS: usize = 2048;
const LAYER: usize = 5;

struct Setup {
    backend: CandleBackend,
    hidden: CandleTensor,
    positions: Vec<usize>,
    cache: LayerCache<CandleTensor>,
    attention: CandleTensor,
    sums: CandleTensor,
}

fn setup() -> Setup {
    let path = sieve_engine::fetch::require_default_model().unwrap_or_else(|e| panic!("{e}"));
    let mut model = Model::load(&path).expect("loading the default model");
    let tokens = prompt_tokens(&model.tokenizer, &wikitext_path(), TOKENS).expect("WikiText-2 prompt");
    let weights = model.take_weights();
    let backend = CandleBackend::from_weights(&model.config, weights, CandleDevice::Cpu).expect("backend");
    let positions: Vec<usize> = (0..TOKENS).collect();
    let mut hidden = backend.embed(&tokens).expect("embed");
    for l in 0..LAYER {
        let mut cache = LayerCache::default();
        hidden = backend.layer(l, &hidden, &positions, &mut cache, Probe::NONE).expect("layer").hidden;
    }
    let mut cache = LayerCache::default();
    let probe = Probe { last_queries: 32, column_sums: true };
    let out = backend.layer(LAYER, &hidden, &positions, &mut cache, probe).expect("probe layer");
    Setup {
        attention: out.attention.expect("attention rows"),
        sums: out.attention_sums.expect("attention sums"),
        backend,
        hidden,
        positions,
        cache,
    }
}

fn scorers() -> Vec<ScorerSpec> {
    vec![
        ScorerSpec::LastQuery { aggregation: Aggregation::Mean },
        ScorerSpec::Snapkv { window: 32, kernel: 7, pooling: Pool::Avg, aggregation: Aggregation::Mean },
        ScorerSpec::H2o { aggregation: Aggregation::Mean },
        ScorerSpec::Knorm {},
        ScorerSpec::Vnorm {},
        ScorerSpec::Recency {},
        ScorerSpec::Random { seed: 0 },
    ]
}

fn to_host(t: &CandleTensor) -> HostTensor {
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

fn bench(c: &mut Criterion) {
    let s = setup();
    let kv_heads = s.backend.config().n_kv_heads;
    let keys = s.cache.keys.clone().expect("keys");
    let values = s.cache.values.clone().expect("values");
    let device = s.backend.device();
    let obs = |attention| Observation {
        layer: LAYER,
        step: 0,
        kv_heads,
        positions: &s.positions,
        attention: Some(attention),
        keys: Some(&keys),
        values: Some(&values),
        device: device.clone(),
    };
    let (rows, sums) = (obs(&s.attention), obs(&s.sums));
    let (h_att, h_sums, h_keys, h_values) = (to_host(&s.attention), to_host(&s.sums), to_host(&keys), to_host(&values));
    let host_obs = |attention| Observation {
        layer: LAYER,
        step: 0,
        kv_heads,
        positions: &s.positions,
        attention: Some(attention),
        keys: Some(&h_keys),
        values: Some(&h_values),
        device: Host,
    };
    let (h_rows, h_sum_obs) = (host_obs(&h_att), host_obs(&h_sums));

    let mut group = c.benchmark_group(format!("{TOKENS} tokens"));
    group.sample_size(10).measurement_time(Duration::from_secs(4));
    group.bench_function("decoder layer forward (candle)", |b| {
        b.iter(|| {
            let mut cache = LayerCache::default();
            black_box(s.backend.layer(LAYER, &s.hidden, &s.positions, &mut cache, Probe::NONE).expect("layer"))
        })
    });
    for spec in scorers() {
        group.bench_function(format!("{} score+select (candle)", spec.name()), |b| {
            b.iter(|| black_box(score_and_select(&spec, &rows, &sums)))
        });
        group.bench_function(format!("{} score+select (host reference)", spec.name()), |b| {
            b.iter(|| black_box(score_and_select(&spec, &h_rows, &h_sum_obs)))
        });
    }
    group.finish();

    // Each scorer's cost relative to the layer it scores, timed in this run.
    let time = |f: &mut dyn FnMut()| {
        let runs: Vec<f64> = (0..7)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed().as_secs_f64()
            })
            .collect();
        median(&runs)
    };
    let layer = time(&mut || {
        let mut cache = LayerCache::default();
        black_box(s.backend.layer(LAYER, &s.hidden, &s.positions, &mut cache, Probe::NONE).expect("layer"));
    });
    println!("\nscoring + selection as a share of one decoder layer's forward ({TOKENS} tokens, candle CPU):");
    println!("| scorer | score+select (ms) | layer forward (ms) | share |");
    println!("|---|---:|---:|---:|");
    for spec in scorers() {
        let t = time(&mut || {
            black_box(score_and_select(&spec, &rows, &sums));
        });
        println!("| {} | {:.2} | {:.1} | {:.1}% |", spec.name(), t * 1e3, layer * 1e3, 100.0 * t / layer);
    }
}

criterion_group!(benches, bench);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
}
