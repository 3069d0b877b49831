//! [`OrtBackend`]: the engine's Backend trait on ONNX Runtime sessions, one per decoder
//! layer plus the embedding and the LM head.

use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use ort::session::{Session, SessionInputValue};
use ort::value::DynValue;
use sieve_backend::{Backend, LayerCache, LayerCall, LayerOutput, LayerWeights, ModelConfig, Probe, Weights};

use crate::embed::{Embed, Table, host_rows};
use crate::error::{Error, Result};
use crate::graph::Graph;
use crate::layer::{LAYER_OUTPUTS, decoder_layer, embedding, lm_head};
use crate::runtime::{OrtDevice, session};
use crate::tensor::{OrtTensor, float_value, int_value};

/// Rows per run of a layer graph in a long call (see [`chunks`]).
const CHUNK: usize = 128;

/// The sizes of consecutive, nearly equal chunks of at most [`CHUNK`] rows for a call of
/// `rows` rows, or `None` to run it whole: a short call, or one whose last chunk would hold
/// fewer than the `last_queries` the probe asks for. A layer graph computes the scores of
/// every query against every key and masks the later ones, so a 2,048-row call in one run
/// computes and masks twice the scores it needs; in chunks of 128, 1.06x. (On 2,179
/// WikiText-2 tokens, the first token came 2.2-2.7x sooner in chunks of 128 or 256, 1.6x
/// in chunks of 512; 128 was also best at 604 tokens.)
fn chunks(rows: usize, last_queries: usize) -> Option<Vec<usize>> {
    let sizes = even_sizes(rows, CHUNK);
    (sizes.len() >= 2 && sizes[sizes.len() - 1] >= last_queries).then_some(sizes)
}

/// `total` in as few nearly equal parts of at most `at_most` as possible, the larger
/// first (so the last is the smallest); one part when `total` is 0.
fn even_sizes(total: usize, at_most: usize) -> Vec<usize> {
    let count = total.div_ceil(at_most).max(1);
    let (base, extra) = (total / count, total % count);
    (0..count).map(|i| base + usize::from(i < extra)).collect()
}

/// A Llama-family decoder on ONNX Runtime. Matrices in Q4_0, Q4_1, Q5_0 or Q8_0 blocks stay
/// in their blocks (`MatMulNBits`, see [`crate::nbits`]); others are `f32`.
pub struct OrtBackend {
    config: ModelConfig,
    device: OrtDevice,
    embed: Embed,
    layers: Vec<Mutex<Session>>,
    /// The final norm and the LM head, by parts of the vocabulary ([`head_parts`]).
    head: Vec<Mutex<Session>>,
    /// The rotary tables of each base ([`ModelConfig::rope_set`]).
    rope: Vec<Rope>,
}

/// `cos`/`sin` of each position for each rotary frequency of one base, `[positions,
/// head_dim/2]`, the values of [`ModelConfig::rope_tables`], computed up to the highest
/// position a call has asked for (the whole context's would be 2 MiB on the default
/// model, most of it never read).
struct Rope {
    inv_freq: Vec<f64>,
    table: Mutex<(Vec<f32>, Vec<f32>)>,
}

impl Rope {
    fn new(inv_freq: Vec<f64>) -> Self {
        Self { inv_freq, table: Mutex::new((Vec::new(), Vec::new())) }
    }

    /// The rows of `positions`, `[n, head_dim/2]` each.
    fn rows(&self, positions: &[usize]) -> (Vec<f32>, Vec<f32>) {
        let half = self.inv_freq.len();
        let mut table = self.table.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let (cos_table, sin_table) = &mut *table;
        let needed = positions.iter().max().map_or(0, |&p| p + 1);
        let have = cos_table.len() / half;
        if needed > have {
            // Whole blocks of 256 positions, so that decoding grows the table rarely.
            let (cos, sin) = sieve_backend::rope_rows(&self.inv_freq, have..needed.next_multiple_of(256));
            cos_table.extend(cos);
            sin_table.extend(sin);
        }
        let (mut cos, mut sin) =
            (Vec::with_capacity(positions.len() * half), Vec::with_capacity(positions.len() * half));
        for &p in positions {
            cos.extend_from_slice(&cos_table[p * half..(p + 1) * half]);
            sin.extend_from_slice(&sin_table[p * half..(p + 1) * half]);
        }
        (cos, sin)
    }
}

/// One [`Rope`] per rotary base, as [`ModelConfig::rope_set`] indexes them.
fn rope_sets(config: &ModelConfig) -> Vec<Rope> {
    config.rope_inv_freq_sets().into_iter().map(Rope::new).collect()
}

/// Hands the heap's free pages back to the system. Building the sessions frees the
/// serialized graphs and ONNX Runtime's copies of the weights it pre-packed, but the C
/// allocator keeps those pages mapped between live allocations.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn release_freed_memory() {
    unsafe extern "C" {
        fn malloc_trim(pad: usize) -> i32;
    }
    // SAFETY: glibc's `malloc_trim` takes a byte count and only returns free memory.
    unsafe {
        malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn release_freed_memory() {}

/// One session per decoder layer, built on as many threads as the machine has cores (each
/// layer's graph, its serialized bytes, ONNX Runtime parsing and optimizing them: most of
/// the backend's start). Each layer's weights are freed once its session holds its copy
/// of them.
fn layer_sessions(config: &ModelConfig, layers: Vec<LayerWeights>, device: OrtDevice) -> Result<Vec<Mutex<Session>>> {
    let count = layers.len();
    let slots: Vec<Mutex<Option<LayerWeights>>> = layers.into_iter().map(|l| Mutex::new(Some(l))).collect();
    let next = AtomicUsize::new(0);
    let workers = crate::runtime::threads().min(count).max(1);
    let mut done: Vec<(usize, Result<Session>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                scope.spawn(|| {
                    let mut mine = Vec::new();
                    // Layers are taken in order, and each one taken is built: when one fails,
                    // every layer before it is done and no later one is started.
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(weights) = slots.get(i).and_then(|s| lock(s).take()) else { break };
                        let name = format!("layer_{i:02}.onnx");
                        let result = session(&decoder_layer(config, i, &weights).into_model_bytes(), device, &name);
                        drop(weights);
                        release_freed_memory();
                        if result.is_err() {
                            next.store(count, Ordering::Relaxed);
                        }
                        mine.push((i, result));
                    }
                    mine
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))).collect()
    });
    done.sort_by_key(|(i, _)| *i);
    done.into_iter().map(|(_, result)| result.map(Mutex::new)).collect()
}

/// Every graph of a model, in the order the backend builds them, with file names.
fn graphs(config: &ModelConfig, weights: &Weights) -> impl Iterator<Item = (String, Graph)> {
    let layers =
        weights.layers.iter().enumerate().map(|(i, l)| (format!("layer_{i:02}.onnx"), decoder_layer(config, i, l)));
    std::iter::once(("embedding.onnx".to_string(), embedding(config, weights))).chain(layers).chain(
        head_parts(weights.lm_head()).into_iter().enumerate().map(|(i, rows)| {
            (format!("lm_head_{i}.onnx"), lm_head(config, &weights.norm, &weights.lm_head().rows(rows)))
        }),
    )
}

/// Vocabulary rows per LM head session, at most.
const HEAD_ROWS: usize = 16_384;

/// The LM head's rows in nearly equal parts of at most [`HEAD_ROWS`], one session each:
/// building a session briefly holds several copies of its weights (the serialized graph,
/// ONNX Runtime's parsed copy, its pre-packed one), and the whole 49,152-row head of the
/// default model in one session took the process to 260 MiB for a moment, 53 MiB over what
/// it holds afterwards.
fn head_parts(head: &sieve_backend::HostWeight) -> Vec<std::ops::Range<usize>> {
    let mut start = 0;
    even_sizes(head.shape[0], HEAD_ROWS)
        .into_iter()
        .map(|len| {
            start += len;
            start - len..start
        })
        .collect()
}

/// Writes the model's ONNX graphs (weights included) to `dir` for inspection, e.g. with
/// Netron or `onnx.checker`; returns the files written.
pub fn export_onnx(config: &ModelConfig, weights: &Weights, dir: &Path) -> std::io::Result<Vec<std::path::PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let mut written = Vec::new();
    for (name, graph) in graphs(config, weights) {
        let path = dir.join(name);
        std::fs::write(&path, graph.into_model_bytes())?;
        written.push(path);
    }
    Ok(written)
}

fn lock<T>(s: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A session's state does not depend on a run that panicked halfway (nor a layer's
    // weights waiting for their session).
    s.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn take(out: &mut ort::session::SessionOutputs<'_>, what: &str, name: &str, device: OrtDevice) -> Result<OrtTensor> {
    let v = out.remove(name).ok_or_else(|| Error::MissingOutput { what: what.into(), output: name.into() })?;
    OrtTensor::from_value(v, device)
}

impl OrtBackend {
    /// Builds the graphs from `weights` and opens a session for each on `device`.
    /// [`crate::load`] must have loaded ONNX Runtime.
    pub fn new(config: &ModelConfig, weights: &Weights, device: OrtDevice) -> Result<Self> {
        Self::from_weights(config, weights.clone(), device)
    }

    /// [`OrtBackend::new`] for weights the caller no longer needs. ONNX Runtime keeps its own
    /// copy of every matrix, so each part of `weights` is freed, and its pages handed back to
    /// the system, once its session holds it: resident memory never holds two copies of the
    /// model. The largest session, the LM head, is built first, while little else is held.
    pub fn from_weights(config: &ModelConfig, mut weights: Weights, device: OrtDevice) -> Result<Self> {
        config.validate()?;
        weights.check(config)?;
        crate::runtime::environment()?;
        let mut head = Vec::new();
        for (i, rows) in head_parts(weights.lm_head()).into_iter().enumerate() {
            let graph = lm_head(config, &weights.norm, &weights.lm_head().rows(rows));
            head.push(Mutex::new(session(&graph.into_model_bytes(), device, &format!("lm_head_{i}.onnx"))?));
            release_freed_memory();
        }
        weights.lm_head = None;
        let embed = match weights.embed.packed.take() {
            Some(table) => {
                let (rows, cols) = (weights.embed.shape[0], weights.embed.cols());
                Embed::Host { table: Table::new(table), rows, cols, scale: config.style.embed_scale }
            }
            None => {
                Embed::Graph(Mutex::new(session(&embedding(config, &weights).into_model_bytes(), device, "embedding")?))
            }
        };
        release_freed_memory();
        let layers = layer_sessions(config, std::mem::take(&mut weights.layers), device)?;
        drop(weights);
        let rope = rope_sets(config);
        release_freed_memory();
        Ok(Self { config: config.clone(), device, embed, layers, head, rope })
    }

    /// A long call's rows in consecutive chunks of `sizes`, each a run of the layer graph
    /// over the cache the chunks before it extended: every query still attends to exactly
    /// the keys at or before it, but the masked half of the square of scores is skipped.
    /// The probes are put back together: the last chunk's attention rows (it holds the
    /// last queries), the column sums added over the chunks (zero for keys a chunk does not
    /// see), the queries concatenated.
    fn layer_in_chunks(
        &self,
        call: LayerCall<'_, OrtTensor>,
        sizes: &[usize],
        cache: &mut LayerCache<OrtTensor>,
    ) -> Result<LayerOutput<OrtTensor>> {
        use sieve_core::Tensor;
        let LayerCall { index, hidden, positions, probe } = call;
        let heads = self.config.n_heads;
        let keys = cache.len() + positions.len();
        let (mut outs, mut sums, mut queries) = (Vec::new(), vec![0f32; heads * keys], Vec::new());
        let mut attention = None;
        let mut start = 0;
        for (i, &len) in sizes.iter().enumerate() {
            let last = i + 1 == sizes.len();
            let rows = hidden.narrow(0, start, len)?;
            let part_probe = Probe { last_queries: if last { probe.last_queries } else { 0 }, ..probe };
            let part = LayerCall { index, hidden: &rows, positions: &positions[start..start + len], probe: part_probe };
            let out = self.layer_once(part, cache)?;
            outs.push(out.hidden);
            if let Some(part_sums) = out.attention_sums {
                // `[heads, 1, seen]`: the keys this chunk saw are the cache's first `seen`.
                let seen = cache.len();
                for (row, part_row) in sums.chunks_exact_mut(keys).zip(part_sums.to_host()?.chunks_exact(seen)) {
                    row[..seen].iter_mut().zip(part_row).for_each(|(t, v)| *t += v);
                }
            }
            queries.extend(out.queries);
            if last {
                attention = out.attention;
            }
            start += len;
        }
        let hidden = OrtTensor::cat(&outs.iter().collect::<Vec<_>>(), 0)?;
        let attention_sums =
            if probe.column_sums { Some(OrtTensor::from_host(&sums, &[heads, 1, keys], &self.device)?) } else { None };
        let queries = if probe.queries { Some(OrtTensor::cat(&queries.iter().collect::<Vec<_>>(), 1)?) } else { None };
        Ok(LayerOutput { hidden, attention, attention_sums, queries })
    }

    /// One layer graph run on all of `call`'s rows.
    fn layer_once(
        &self,
        call: LayerCall<'_, OrtTensor>,
        cache: &mut LayerCache<OrtTensor>,
    ) -> Result<LayerOutput<OrtTensor>> {
        let LayerCall { index, hidden, positions, probe } = call;
        let c = &self.config;
        let session = self.layers.get(index).ok_or_else(|| sieve_backend::Error::Input(format!("no layer {index}")))?;
        let n = positions.len();
        let (cos, sin) = self.rotary(index, positions)?;
        let empty;
        let (live_keys, live_values) = (cache.keys()?, cache.values()?);
        let (past_keys, past_values) = match (&live_keys, &live_values) {
            (Some(k), Some(v)) => (k.value(), v.value()),
            _ => {
                let shape = [c.n_kv_heads, 0, c.head_dim];
                empty = float_value(&[], &shape).map_err(Error::ort("empty cache"))?;
                (&empty, &empty)
            }
        };
        let probe_start = n - probe.last_queries.min(n);
        // Each query head's KV head's padding rows, masked (heads keeping different counts).
        let m = cache.len() + n;
        let key_bias = match sieve_backend::mask::padding_bias(cache.padding(), 0, m) {
            None => float_value(&[0.0], &[1, 1, 1]),
            Some(per_kv) => {
                // The KV heads' rows, each repeated for the query heads of its group.
                let g = c.n_heads / c.n_kv_heads;
                let bias: Vec<f32> =
                    per_kv.chunks_exact(m).flat_map(|row| std::iter::repeat_n(row, g)).flatten().copied().collect();
                float_value(&bias, &[c.n_heads, 1, m])
            }
        }
        .map_err(Error::ort("key bias"))?;
        let inputs = [
            SessionInputValue::from(hidden.value()),
            SessionInputValue::from(ints(positions)?),
            SessionInputValue::from(cos),
            SessionInputValue::from(sin),
            SessionInputValue::from(ints(cache.positions())?),
            SessionInputValue::from(past_keys),
            SessionInputValue::from(past_values),
            SessionInputValue::from(ints(&[probe_start])?),
            SessionInputValue::from(key_bias),
        ];
        let what = format!("decoder layer {index}");
        let mut session = lock(session);
        let [h, k, v, a, s, q] = LAYER_OUTPUTS;
        let mut out = session.run(&inputs[..]).map_err(Error::ort(what.as_str()))?;
        let hidden = take(&mut out, &what, h, self.device)?;
        // The graph returns the whole cache, old entries and new: it becomes the storage.
        let (keys, values) = (take(&mut out, &what, k, self.device)?, take(&mut out, &what, v, self.device)?);
        drop((live_keys, live_values));
        cache.set_storage(keys, values);
        cache.push_positions(positions);
        let mut attention = if probe.last_queries > 0 { Some(take(&mut out, &what, a, self.device)?) } else { None };
        let mut attention_sums = if probe.column_sums { Some(take(&mut out, &what, s, self.device)?) } else { None };
        // Revived rows fall among the cached positions: the graph masked by position, and
        // the cache and the probes' columns are put back in position order.
        if let Some(order) = cache.sort_rows()? {
            use sieve_core::Tensor;
            attention = attention.map(|t| t.index_select(2, &order)).transpose()?;
            attention_sums = attention_sums.map(|t| t.index_select(2, &order)).transpose()?;
        }
        let queries = if probe.queries { Some(take(&mut out, &what, q, self.device)?) } else { None };
        Ok(LayerOutput { hidden, attention, attention_sums, queries })
    }

    /// Rows of layer `layer`'s rotary tables at `positions`, `[n, head_dim/2]` each.
    fn rotary(&self, layer: usize, positions: &[usize]) -> Result<(DynValue, DynValue)> {
        let (cos, sin) = self.rope[self.config.rope_set(layer)].rows(positions);
        let shape = [positions.len(), self.config.head_dim / 2];
        Ok((
            float_value(&cos, &shape).map_err(Error::ort("rotary tables"))?,
            float_value(&sin, &shape).map_err(Error::ort("rotary tables"))?,
        ))
    }
}

fn ints(v: &[usize]) -> Result<DynValue> {
    int_value(&v.iter().map(|&x| x as i64).collect::<Vec<_>>()).map_err(Error::ort("positions"))
}

impl Backend for OrtBackend {
    type Tensor = OrtTensor;
    type Error = Error;

    fn name(&self) -> &'static str {
        "ort"
    }

    fn config(&self) -> &ModelConfig {
        &self.config
    }

    fn device(&self) -> OrtDevice {
        self.device
    }

    fn embed(&self, tokens: &[u32]) -> Result<OrtTensor> {
        match &self.embed {
            Embed::Graph(session) => {
                let ids = int_value(&tokens.iter().map(|&t| t as i64).collect::<Vec<_>>())
                    .map_err(Error::ort("token ids"))?;
                let mut session = lock(session);
                let mut out = session.run(&[SessionInputValue::from(ids)][..]).map_err(Error::ort("embedding"))?;
                take(&mut out, "embedding", "hidden", self.device)
            }
            Embed::Host { table, rows, cols, scale } => {
                let values = host_rows(table, (*rows, *cols), *scale, tokens)?;
                let value = float_value(&values, &[tokens.len(), *cols]).map_err(Error::ort("embedding"))?;
                OrtTensor::from_value(value, self.device)
            }
        }
    }

    fn layer(
        &self,
        call: LayerCall<'_, OrtTensor>,
        cache: &mut LayerCache<OrtTensor>,
    ) -> Result<LayerOutput<OrtTensor>> {
        // Rows among the cached positions (revived tokens) run in one graph call.
        let behind = matches!((call.positions.first(), cache.positions().last()), (Some(f), Some(l)) if f < l);
        match chunks(call.positions.len(), call.probe.last_queries).filter(|_| !behind) {
            Some(sizes) => self.layer_in_chunks(call, &sizes, cache),
            None => self.layer_once(call, cache),
        }
    }

    fn logits(&self, hidden: &OrtTensor) -> Result<OrtTensor> {
        let mut parts = Vec::with_capacity(self.head.len());
        for part in &self.head {
            let mut session = lock(part);
            let mut out = session.run(&[SessionInputValue::from(hidden.value())][..]).map_err(Error::ort("LM head"))?;
            parts.push(take(&mut out, "LM head", "logits", self.device)?);
        }
        match parts.as_slice() {
            [one] => Ok(one.clone()),
            _ => Ok(<OrtTensor as sieve_core::Tensor>::cat(&parts.iter().collect::<Vec<_>>(), 1)?),
        }
    }
}

#[cfg(test)]
mod tests {
    use sieve_backend::synthetic;

    use super::*;

    #[test]
    fn long_calls_split_into_nearly_equal_chunks_the_last_holding_the_probed_queries() {
        assert_eq!(chunks(1, 0), None);
        assert_eq!(chunks(CHUNK, 8), None);
        assert_eq!(chunks(CHUNK + 1, 8), Some(vec![65, 64]));
        assert_eq!(chunks(1024, 8), Some(vec![128; 8]));
        assert_eq!(chunks(1030, 0), Some(vec![115, 115, 115, 115, 114, 114, 114, 114, 114]));
        // The last chunk too small for the probe: one run.
        assert_eq!(chunks(300, 101), None);
        assert_eq!(chunks(300, 100), Some(vec![100, 100, 100]));
        for rows in 1..2_000 {
            if let Some(sizes) = chunks(rows, 0) {
                assert_eq!(sizes.iter().sum::<usize>(), rows);
                assert!(sizes.iter().all(|&s| s <= CHUNK && s + 1 >= sizes[0]));
            }
        }
    }

    #[test]
    fn the_lm_head_splits_into_nearly_equal_parts_covering_the_vocabulary() {
        let head = |rows| sieve_backend::HostWeight::f32(vec![0.0; rows * 2], vec![rows, 2]);
        assert_eq!(head_parts(&head(100)), vec![0..100]);
        assert_eq!(head_parts(&head(49_152)), vec![0..16_384, 16_384..32_768, 32_768..49_152]);
        assert_eq!(head_parts(&head(HEAD_ROWS + 1)), vec![0..8_193, 8_193..16_385]);
    }

    #[test]
    fn rotary_rows_grown_on_demand_equal_the_whole_tables() {
        let config = ModelConfig { context: 1024, ..synthetic::packed_config() };
        let (cos, sin) = config.rope_tables();
        let half = config.head_dim / 2;
        let rope = &rope_sets(&config)[0];
        // Out of order, across the growth step, repeated.
        for positions in [vec![3, 0, 7], vec![255, 256, 300], vec![1, 1], vec![config.context - 1]] {
            let (c, s) = rope.rows(&positions);
            for (i, &p) in positions.iter().enumerate() {
                assert_eq!(c[i * half..(i + 1) * half], cos[p * half..(p + 1) * half], "cos at {p}");
                assert_eq!(s[i * half..(i + 1) * half], sin[p * half..(p + 1) * half], "sin at {p}");
            }
        }
    }
}
