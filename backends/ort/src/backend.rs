//! [`OrtBackend`]: the engine's Backend trait on ONNX Runtime sessions, one per decoder
//! layer plus the embedding and the LM head.

use std::path::Path;
use std::sync::Mutex;

use ort::session::{Session, SessionInputValue};
use ort::value::DynValue;
use sieve_engine::backend::{Backend, LayerCache, LayerOutput, Probe};
use sieve_engine::config::ModelConfig;
use sieve_engine::weights::Weights;
use sieve_engine::{Error, Result};

use crate::graph::Graph;
use crate::layer::{LAYER_OUTPUTS, decoder_layer, embedding, lm_head};
use crate::runtime::{OrtDevice, ort_err, session};
use crate::tensor::{OrtTensor, float_value, int_value};

/// A Llama-family decoder on ONNX Runtime (`f32`).
pub struct OrtBackend {
    config: ModelConfig,
    device: OrtDevice,
    embed: Mutex<Session>,
    layers: Vec<Mutex<Session>>,
    head: Mutex<Session>,
    /// `cos`/`sin` of every position for every rotary frequency, `[context, head_dim/2]`.
    cos: Vec<f32>,
    sin: Vec<f32>,
}

/// Every graph of a model, in the order the backend builds them, with file names.
fn graphs(config: &ModelConfig, weights: &Weights) -> impl Iterator<Item = (String, Graph)> {
    let layers =
        weights.layers.iter().enumerate().map(|(i, l)| (format!("layer_{i:02}.onnx"), decoder_layer(config, i, l)));
    std::iter::once(("embedding.onnx".to_string(), embedding(weights)))
        .chain(layers)
        .chain(std::iter::once(("lm_head.onnx".to_string(), lm_head(config, weights))))
}

/// Writes the model's ONNX graphs (weights included) to `dir` for inspection, e.g. with
/// Netron or `onnx.checker`; returns the files written.
pub fn export_onnx(config: &ModelConfig, weights: &Weights, dir: &Path) -> Result<Vec<std::path::PathBuf>> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let mut written = Vec::new();
    for (name, graph) in graphs(config, weights) {
        let path = dir.join(name);
        std::fs::write(&path, graph.into_model_bytes()).map_err(|e| Error::io(&path, e))?;
        written.push(path);
    }
    Ok(written)
}

fn lock<'a>(s: &'a Mutex<Session>, what: &str) -> Result<std::sync::MutexGuard<'a, Session>> {
    s.lock().map_err(|_| ort_err(what, "session poisoned"))
}

fn take(out: &mut ort::session::SessionOutputs<'_>, name: &str, device: OrtDevice) -> Result<OrtTensor> {
    let v = out.remove(name).ok_or_else(|| ort_err("decoder layer", format!("no output `{name}`")))?;
    OrtTensor::from_value(v, device)
}

impl OrtBackend {
    /// Builds the graphs from `weights` and opens a session for each on `device`.
    pub fn new(config: &ModelConfig, weights: &Weights, device: OrtDevice) -> Result<Self> {
        crate::runtime::environment()?;
        let mut sessions = Vec::with_capacity(weights.layers.len() + 2);
        for (name, graph) in graphs(config, weights) {
            sessions.push(Mutex::new(session(&graph.into_model_bytes(), device, &name)?));
        }
        let head = sessions.pop().ok_or_else(|| Error::Invalid("no LM head graph".into()))?;
        let embed = sessions.remove(0);
        let (cos, sin) = config.rope_tables();
        Ok(Self { config: config.clone(), device, embed, layers: sessions, head, cos, sin })
    }

    /// Rows of the rotary tables at `positions`, `[n, head_dim/2]` each.
    fn rotary(&self, positions: &[usize]) -> Result<(DynValue, DynValue)> {
        let half = self.config.head_dim / 2;
        let (mut cos, mut sin) =
            (Vec::with_capacity(positions.len() * half), Vec::with_capacity(positions.len() * half));
        for &p in positions {
            cos.extend_from_slice(&self.cos[p * half..(p + 1) * half]);
            sin.extend_from_slice(&self.sin[p * half..(p + 1) * half]);
        }
        let shape = [positions.len(), half];
        let e = |e| ort_err("rotary tables", e);
        Ok((float_value(&cos, &shape).map_err(e)?, float_value(&sin, &shape).map_err(e)?))
    }
}

fn ints(v: &[usize]) -> Result<DynValue> {
    int_value(&v.iter().map(|&x| x as i64).collect::<Vec<_>>()).map_err(|e| ort_err("positions", e))
}

impl Backend for OrtBackend {
    type Tensor = OrtTensor;

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
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= self.config.vocab) {
            return Err(Error::Invalid(format!("token id {bad} is outside the vocabulary of {}", self.config.vocab)));
        }
        let ids = int_value(&tokens.iter().map(|&t| t as i64).collect::<Vec<_>>()).map_err(|e| ort_err("ids", e))?;
        let mut session = lock(&self.embed, "embedding")?;
        let mut out = session.run(&[SessionInputValue::from(ids)][..]).map_err(|e| ort_err("embedding", e))?;
        take(&mut out, "hidden", self.device)
    }

    fn layer(
        &self,
        index: usize,
        hidden: &OrtTensor,
        positions: &[usize],
        cache: &mut LayerCache<OrtTensor>,
        probe: Probe,
    ) -> Result<LayerOutput<OrtTensor>> {
        let c = &self.config;
        let session = self.layers.get(index).ok_or_else(|| Error::Invalid(format!("no layer {index}")))?;
        let n = sieve_core::Tensor::shape(hidden).first().copied().unwrap_or(0);
        if n != positions.len() || n == 0 {
            return Err(Error::Invalid(format!("{n} hidden rows but {} positions", positions.len())));
        }
        if let Some(&bad) = positions.iter().find(|&&p| p >= c.context) {
            return Err(Error::ContextOverflow { needed: bad + 1, context: c.context });
        }
        let (cos, sin) = self.rotary(positions)?;
        let empty;
        let (past_keys, past_values) = match (&cache.keys, &cache.values) {
            (Some(k), Some(v)) => (k.value(), v.value()),
            _ => {
                let shape = [c.n_kv_heads, 0, c.head_dim];
                empty = float_value(&[], &shape).map_err(|e| ort_err("empty cache", e))?;
                (&empty, &empty)
            }
        };
        let probe_start = n - probe.last_queries.min(n);
        let inputs = [
            SessionInputValue::from(hidden.value()),
            SessionInputValue::from(ints(positions)?),
            SessionInputValue::from(cos),
            SessionInputValue::from(sin),
            SessionInputValue::from(ints(&cache.positions)?),
            SessionInputValue::from(past_keys),
            SessionInputValue::from(past_values),
            SessionInputValue::from(ints(&[probe_start])?),
        ];
        let what = format!("decoder layer {index}");
        let mut session = lock(session, &what)?;
        let mut out = session.run(&inputs[..]).map_err(|e| ort_err(&what, e))?;
        let [h, k, v, a, s] = LAYER_OUTPUTS;
        let hidden = take(&mut out, h, self.device)?;
        cache.keys = Some(take(&mut out, k, self.device)?);
        cache.values = Some(take(&mut out, v, self.device)?);
        cache.positions.extend_from_slice(positions);
        let attention = if probe.last_queries > 0 { Some(take(&mut out, a, self.device)?) } else { None };
        let attention_sums = if probe.column_sums { Some(take(&mut out, s, self.device)?) } else { None };
        Ok(LayerOutput { hidden, attention, attention_sums })
    }

    fn logits(&self, hidden: &OrtTensor) -> Result<OrtTensor> {
        let mut session = lock(&self.head, "lm head")?;
        let mut out = session.run(&[SessionInputValue::from(hidden.value())][..]).map_err(|e| ort_err("lm head", e))?;
        take(&mut out, "logits", self.device)
    }
}
