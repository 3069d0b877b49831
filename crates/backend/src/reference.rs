//! [`HostBackend`]: the reference backend, in plain Rust on the core's host tensors.
//!
//! Written to be read, not to be fast: loops over rows, dot products accumulated in `f64`,
//! the causal mask by original positions spelled out. The engine's tests run sessions on
//! it with [`crate::synthetic`] models (no model file, no runtime library), and the
//! [`crate::conformance`] suite compares every backend with it.

use sieve_core::host::Host;
use sieve_core::{HostTensor, Tensor};

use crate::backend::{Backend, LayerCall, LayerOutput};
use crate::cache::LayerCache;
use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::weights::{HostWeight, Weights};

/// The reference decoder on host memory.
#[derive(Debug, Clone)]
pub struct HostBackend {
    config: ModelConfig,
    weights: Weights,
    /// `cos`/`sin` of every position, `[context, head_dim / 2]` row-major, for each rotary
    /// base ([`ModelConfig::rope_table_sets`]).
    rope: Vec<(Vec<f32>, Vec<f32>)>,
}

impl HostBackend {
    /// A backend on `weights`, after checking them against `config`.
    pub fn new(config: &ModelConfig, weights: Weights) -> Result<Self> {
        config.validate()?;
        weights.check(config)?;
        let weights = weights.into_f32();
        let rope = config.rope_table_sets();
        Ok(Self { config: config.clone(), weights, rope })
    }

    /// The weights.
    pub fn weights(&self) -> &Weights {
        &self.weights
    }
}

fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(&x, &y)| f64::from(x) * f64::from(y)).sum()
}

/// `x [n, in] · wᵀ` for `w [out, in]`, plus an optional bias.
fn linear(x: &[f32], n: usize, w: &HostWeight, bias: Option<&HostWeight>) -> Vec<f32> {
    let (out, inp) = (w.shape[0], w.shape[1]);
    let mut y = Vec::with_capacity(n * out);
    for r in 0..n {
        let row = &x[r * inp..(r + 1) * inp];
        for o in 0..out {
            let b = bias.map_or(0.0, |b| f64::from(b.data[o]));
            y.push((dot(row, &w.data[o * inp..(o + 1) * inp]) + b) as f32);
        }
    }
    y
}

fn rms_norm(x: &[f32], n: usize, w: &HostWeight, eps: f64) -> Vec<f32> {
    let d = w.data.len();
    let mut y = Vec::with_capacity(n * d);
    for r in 0..n {
        let row = &x[r * d..(r + 1) * d];
        let scale = 1.0 / (dot(row, row) / d as f64 + eps).sqrt();
        y.extend(row.iter().zip(&w.data).map(|(&v, &g)| (f64::from(v) * scale * f64::from(g)) as f32));
    }
    y
}

impl HostBackend {
    /// Rotates `x [n, heads * head_dim]` in place with layer `layer`'s base, half-split
    /// pairs `(i, i + head_dim/2)`.
    fn rope(&self, layer: usize, x: &mut [f32], positions: &[usize], heads: usize) {
        let hd = self.config.head_dim;
        let half = hd / 2;
        let (cos, sin) = &self.rope[self.config.rope_set(layer)];
        for (r, &p) in positions.iter().enumerate() {
            let (cos, sin) = (&cos[p * half..(p + 1) * half], &sin[p * half..(p + 1) * half]);
            for h in 0..heads {
                let head = &mut x[(r * heads + h) * hd..(r * heads + h + 1) * hd];
                for i in 0..half {
                    let (a, b) = (head[i], head[i + half]);
                    head[i] = a * cos[i] - b * sin[i];
                    head[i + half] = b * cos[i] + a * sin[i];
                }
            }
        }
    }

    fn check_inputs(&self, index: usize, hidden: &HostTensor, positions: &[usize], cached: &[usize]) -> Result<()> {
        let c = &self.config;
        if index >= c.n_layers {
            return Err(Error::Input(format!("layer {index} of {}", c.n_layers)));
        }
        if hidden.shape() != [positions.len(), c.hidden] {
            return Err(Error::Input(format!("hidden {:?} for {} positions", hidden.shape(), positions.len())));
        }
        let increasing = positions.windows(2).all(|w| w[0] < w[1]);
        let new = positions.iter().all(|p| cached.binary_search(p).is_err());
        if !increasing || !new || positions.last().is_some_and(|&p| p >= c.context) {
            return Err(Error::Input(format!(
                "positions {positions:?} (cache ends at {:?}, context {})",
                cached.last(),
                c.context
            )));
        }
        Ok(())
    }
}

impl Backend for HostBackend {
    type Tensor = HostTensor;
    type Error = Error;

    fn name(&self) -> &'static str {
        "host"
    }

    fn config(&self) -> &ModelConfig {
        &self.config
    }

    fn device(&self) -> Host {
        Host
    }

    fn embed(&self, tokens: &[u32]) -> Result<HostTensor> {
        let d = self.config.hidden;
        let mut data = Vec::with_capacity(tokens.len() * d);
        for &t in tokens {
            let t = t as usize;
            if t >= self.config.vocab {
                return Err(Error::Input(format!("token id {t} is outside the vocabulary of {}", self.config.vocab)));
            }
            let scale = self.config.style.embed_scale;
            data.extend(self.weights.embed.data[t * d..(t + 1) * d].iter().map(|&v| v * scale));
        }
        Ok(HostTensor::new(data, &[tokens.len(), d])?)
    }

    fn layer(
        &self,
        call: LayerCall<'_, HostTensor>,
        cache: &mut LayerCache<HostTensor>,
    ) -> Result<LayerOutput<HostTensor>> {
        let LayerCall { index, hidden, positions, probe } = call;
        self.check_inputs(index, hidden, positions, cache.positions())?;
        let c = &self.config;
        let w = &self.weights.layers[index];
        let (n, d, hd, nh, nkv) = (positions.len(), c.hidden, c.head_dim, c.n_heads, c.n_kv_heads);
        let group = nh / nkv;
        let x = hidden.data();

        let h = rms_norm(x, n, &w.attn_norm, c.rms_eps);
        let bias = w.qkv_bias.as_ref();
        let mut q = linear(&h, n, &w.q, bias.map(|b| &b[0]));
        let mut k = linear(&h, n, &w.k, bias.map(|b| &b[1]));
        let v = linear(&h, n, &w.v, bias.map(|b| &b[2]));
        if let Some([qn, kn]) = &w.qk_norm {
            q = rms_norm(&q, n * nh, qn, c.rms_eps);
            k = rms_norm(&k, n * nkv, kn, c.rms_eps);
        }
        let queries = probe.queries.then(|| q.clone());
        self.rope(index, &mut q, positions, nh);
        self.rope(index, &mut k, positions, nkv);

        // [n, kv, hd] -> [kv, n, hd], appended to the cache.
        let by_head = |t: &[f32]| -> Result<HostTensor> {
            let mut out = Vec::with_capacity(t.len());
            for h in 0..nkv {
                for r in 0..n {
                    out.extend_from_slice(&t[(r * nkv + h) * hd..(r * nkv + h + 1) * hd]);
                }
            }
            Ok(HostTensor::new(out, &[nkv, n, hd])?)
        };
        cache.append(by_head(&k)?, by_head(&v)?, positions)?;
        let m = cache.len();
        let keys = cache.keys()?.map(|t| t.to_host()).transpose()?.unwrap_or_default();
        let values = cache.values()?.map(|t| t.to_host()).transpose()?.unwrap_or_default();
        let key_pos = cache.positions();

        let scale = c.query_scale();
        // A local layer's query at `p` sees keys after `p - window`.
        let window = c.window(index).unwrap_or(usize::MAX);
        let probe_rows = probe.last_queries.min(n);
        let mut attn_out = vec![0.0f32; n * nh * hd];
        let mut probes = vec![0.0f32; nh * probe_rows * m];
        let mut sums = vec![0.0f32; nh * m];
        for head in 0..nh {
            let kv = head / group;
            for (r, &p) in positions.iter().enumerate() {
                let qr = &q[(r * nh + head) * hd..(r * nh + head + 1) * hd];
                let visible = key_pos.partition_point(|&kp| kp <= p);
                // A head's padding rows hold no entry (heads keeping different counts).
                let first = key_pos.partition_point(|&kp| kp.saturating_add(window) <= p).max(cache.head_padding(kv));
                let logits: Vec<f64> = (first..visible)
                    .map(|j| dot(qr, &keys[(kv * m + j) * hd..(kv * m + j + 1) * hd]) * scale)
                    .collect();
                let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let exps: Vec<f64> = logits.iter().map(|&l| (l - max).exp()).collect();
                let total: f64 = exps.iter().sum();
                let out = &mut attn_out[(r * nh + head) * hd..(r * nh + head + 1) * hd];
                for (j, e) in (first..).zip(&exps) {
                    let pj = e / total;
                    for (o, &val) in out.iter_mut().zip(&values[(kv * m + j) * hd..(kv * m + j + 1) * hd]) {
                        *o += (pj * f64::from(val)) as f32;
                    }
                    if probe.column_sums {
                        sums[head * m + j] += pj as f32;
                    }
                    if r + probe_rows >= n {
                        let pr = r + probe_rows - n;
                        probes[(head * probe_rows + pr) * m + j] = pj as f32;
                    }
                }
            }
        }
        let mut attn = linear(&attn_out, n, &w.o, None);
        if let Some([post_attn, _]) = &w.post_norms {
            attn = rms_norm(&attn, n, post_attn, c.rms_eps);
        }
        let x: Vec<f32> = x.iter().zip(&attn).map(|(a, b)| a + b).collect();
        let h = rms_norm(&x, n, &w.ffn_norm, c.rms_eps);
        let gate = linear(&h, n, &w.gate, None);
        let up = linear(&h, n, &w.up, None);
        let act: Vec<f32> = gate.iter().zip(&up).map(|(&g, &u)| c.style.activation.apply(g) * u).collect();
        let mut mlp = linear(&act, n, &w.down, None);
        if let Some([_, post_ffn]) = &w.post_norms {
            mlp = rms_norm(&mlp, n, post_ffn, c.rms_eps);
        }
        let out: Vec<f32> = x.iter().zip(&mlp).map(|(a, b)| a + b).collect();
        Ok(LayerOutput {
            hidden: HostTensor::new(out, &[n, d])?,
            attention: (probe_rows > 0).then(|| HostTensor::new(probes, &[nh, probe_rows, m])).transpose()?,
            attention_sums: probe.column_sums.then(|| HostTensor::new(sums, &[nh, 1, m])).transpose()?,
            // [n, heads, hd] -> [heads, n, hd]
            queries: queries
                .map(|q| {
                    let mut out = Vec::with_capacity(q.len());
                    for h in 0..nh {
                        for r in 0..n {
                            out.extend_from_slice(&q[(r * nh + h) * hd..(r * nh + h + 1) * hd]);
                        }
                    }
                    HostTensor::new(out, &[nh, n, hd])
                })
                .transpose()?,
        })
    }

    fn logits(&self, hidden: &HostTensor) -> Result<HostTensor> {
        let c = &self.config;
        let shape = hidden.shape();
        if shape.len() != 2 || shape[1] != c.hidden {
            return Err(Error::Input(format!("hidden {shape:?} for the LM head")));
        }
        let n = shape[0];
        let h = rms_norm(hidden.data(), n, &self.weights.norm, c.rms_eps);
        let head = self.weights.lm_head();
        Ok(HostTensor::new(linear(&h, n, head, None), &[n, c.vocab])?)
    }
}
