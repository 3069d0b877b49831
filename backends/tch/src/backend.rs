//! [`TchBackend`]: the backend contract with libtorch ops.

use sieve_backend::mask::MaskCache;
use sieve_backend::{
    Backend, Block, DeviceSpec, HostWeight, LayerCache, LayerCall, LayerOutput, ModelConfig, Probe, Weights,
};
use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};
use crate::tensor::TchTensor;

fn err(e: tch::TchError) -> Error {
    Error::Torch(e)
}

/// The libtorch device a [`DeviceSpec`] names.
pub fn device(spec: DeviceSpec) -> Device {
    match spec {
        DeviceSpec::Cpu => Device::Cpu,
        DeviceSpec::Cuda(n) => Device::Cuda(n),
    }
}

/// Whether libtorch sees a CUDA device.
pub fn cuda_available() -> bool {
    tch::Cuda::is_available()
}

type Layer = Block<Tensor>;

/// Query rows per attention block (as in sieve-candle): a block reads only the keys its
/// last query may see.
const QUERY_BLOCK: usize = 256;

/// A Llama-family decoder on libtorch (`f32`).
pub struct TchBackend {
    config: ModelConfig,
    device: Device,
    embed: Tensor,
    layers: Vec<Layer>,
    norm: Tensor,
    lm_head: Tensor,
    cos: Tensor,
    sin: Tensor,
    mask: MaskCache<TchTensor>,
}

// SAFETY: libtorch tensors may be used from any thread; the backend never mutates its
// weights after construction, and the mask cache is behind a mutex.
unsafe impl Sync for TchBackend {}

fn upload(w: &HostWeight, device: Device) -> Result<Tensor> {
    let shape: Vec<i64> = w.shape.iter().map(|&d| d as i64).collect();
    Tensor::f_from_slice(&w.data).and_then(|t| t.f_reshape(shape)).and_then(|t| t.f_to(device)).map_err(err)
}

impl TchBackend {
    /// Uploads `weights` to `device` (`Device::Cpu` or `Device::Cuda(n)`).
    pub fn new(config: &ModelConfig, weights: &Weights, device: Device) -> Result<Self> {
        config.validate()?;
        weights.check(config)?;
        // libtorch computes in f32 here: packed weights are decoded first.
        let mut decoded = None;
        let weights = weights.as_f32(&mut decoded);
        if let Device::Cuda(n) = device
            && (!cuda_available() || n >= tch::Cuda::device_count() as usize)
        {
            return Err(Error::NoCuda(n));
        }
        let up = |w: &HostWeight| upload(w, device);
        let layers = weights.layers.iter().map(|l| l.as_ref().try_map(&up)).collect::<Result<Vec<_>>>()?;
        let embed = up(&weights.embed)?;
        let lm_head = match &weights.lm_head {
            Some(w) => up(w)?,
            None => embed.shallow_clone(),
        };
        let half = config.head_dim / 2;
        let (cos, sin) = config.rope_tables();
        let table = |v: Vec<f32>| {
            Tensor::f_from_slice(&v)
                .and_then(|t| t.f_reshape([config.context as i64, half as i64]))
                .and_then(|t| t.f_to(device))
        };
        Ok(Self {
            config: config.clone(),
            device,
            norm: up(&weights.norm)?,
            embed,
            layers,
            lm_head,
            cos: table(cos).map_err(err)?,
            sin: table(sin).map_err(err)?,
            mask: MaskCache::default(),
        })
    }

    fn ids(&self, v: &[usize]) -> Result<Tensor> {
        let ids: Vec<i64> = v.iter().map(|&i| i as i64).collect();
        Tensor::f_from_slice(&ids).and_then(|t| t.f_to(self.device)).map_err(err)
    }

    fn mask(&self, queries: &[usize], keys: &[usize]) -> Result<Tensor> {
        let (n, m) = (queries.len() as i64, keys.len() as i64);
        let t = self.mask.get(queries, keys, |data| {
            Tensor::f_from_slice(&data)
                .and_then(|t| t.f_reshape([n, m]))
                .and_then(|t| t.f_to(self.device))
                .map(TchTensor)
        });
        Ok(t.map_err(err)?.0)
    }

    /// Half-split rotary embedding of `x` `[heads, n, hd]` with tables `[n, hd/2]`.
    fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> std::result::Result<Tensor, tch::TchError> {
        let half = x.size()[2] / 2;
        let (x1, x2) = (x.f_narrow(2, 0, half)?, x.f_narrow(2, half, half)?);
        let a = x1.f_mul(cos)?.f_sub(&x2.f_mul(sin)?)?;
        let b = x2.f_mul(cos)?.f_add(&x1.f_mul(sin)?)?;
        Tensor::f_cat(&[a, b], 2)
    }

    #[allow(clippy::type_complexity)]
    fn attention(
        &self,
        q: &Tensor,
        keys: &Tensor,
        values: &Tensor,
        q_pos: &[usize],
        k_pos: &[usize],
        probe_spec: Probe,
    ) -> Result<(Tensor, Option<TchTensor>, Option<TchTensor>)> {
        let s = q.size();
        let (nkv, g, n, hd) = (s[0], s[1], s[2] as usize, s[3]);
        let m = k_pos.len() as i64;
        let probe = probe_spec.last_queries.min(n);
        let (mut outs, mut probes) = (Vec::new(), Vec::new());
        let mut sums: Option<Tensor> = None;
        let mut start = 0;
        while start < n {
            let rows = QUERY_BLOCK.min(n - start);
            let visible = k_pos.partition_point(|&p| p <= q_pos[start + rows - 1]) as i64;
            let r = rows as i64;
            let qb = q.f_narrow(2, start as i64, r).and_then(|t| t.f_reshape([nkv, g * r, hd])).map_err(err)?;
            let kb = keys.f_narrow(1, 0, visible).map_err(err)?;
            let vb = values.f_narrow(1, 0, visible).map_err(err)?;
            let mut att = qb.f_matmul(&kb.f_transpose(1, 2).map_err(err)?).map_err(err)?;
            if visible > 0 && k_pos[visible as usize - 1] > q_pos[start] {
                let mask = self.mask(q_pos, k_pos)?;
                let mb = mask.f_narrow(0, start as i64, r).and_then(|t| t.f_narrow(1, 0, visible)).map_err(err)?;
                att = att
                    .f_reshape([nkv, g, r, visible])
                    .and_then(|a| a.f_add(&mb))
                    .and_then(|a| a.f_reshape([nkv, g * r, visible]))
                    .map_err(err)?;
            }
            let att = att.f_softmax(-1, Kind::Float).map_err(err)?;
            let pad = |a: Tensor| if visible < m { a.f_constant_pad_nd([0, m - visible]) } else { Ok(a) };
            if probe_spec.column_sums {
                let block = att
                    .f_reshape([nkv * g, r, visible])
                    .and_then(|a| a.f_sum_dim_intlist([1i64].as_slice(), true, Kind::Float))
                    .and_then(pad)
                    .map_err(err)?;
                sums = Some(match sums {
                    Some(total) => total.f_add(&block).map_err(err)?,
                    None => block,
                });
            }
            let first_probe = n - probe;
            if probe > 0 && start + rows > first_probe {
                let from = (first_probe.max(start) - start) as i64;
                let a = att
                    .f_reshape([nkv * g, r, visible])
                    .and_then(|a| a.f_narrow(1, from, r - from))
                    .and_then(pad)
                    .map_err(err)?;
                probes.push(a);
            }
            outs.push(att.f_matmul(&vb).and_then(|o| o.f_reshape([nkv, g, r, hd])).map_err(err)?);
            start += rows;
        }
        let out = Tensor::f_cat(&outs, 2).map_err(err)?;
        let probe = if probes.is_empty() { None } else { Some(TchTensor(Tensor::f_cat(&probes, 1).map_err(err)?)) };
        Ok((out, probe, sums.map(TchTensor)))
    }
}

fn linear(x: &Tensor, w: &Tensor) -> std::result::Result<Tensor, tch::TchError> {
    x.f_matmul(&w.f_transpose(0, 1)?)
}

impl Backend for TchBackend {
    type Tensor = TchTensor;
    type Error = Error;

    fn name(&self) -> &'static str {
        "tch"
    }

    fn config(&self) -> &ModelConfig {
        &self.config
    }

    fn device(&self) -> Device {
        self.device
    }

    fn embed(&self, tokens: &[u32]) -> Result<TchTensor> {
        let ids: Vec<usize> = tokens.iter().map(|&t| t as usize).collect();
        self.embed.f_index_select(0, &self.ids(&ids)?).map(TchTensor).map_err(err)
    }

    fn layer(
        &self,
        call: LayerCall<'_, TchTensor>,
        cache: &mut LayerCache<TchTensor>,
    ) -> Result<LayerOutput<TchTensor>> {
        let LayerCall { index, hidden, positions, probe } = call;
        let c = &self.config;
        let w = self.layers.get(index).ok_or_else(|| sieve_backend::Error::Input(format!("no layer {index}")))?;
        let x = &hidden.0;
        let n = positions.len();
        let (hd, nh, nkv) = (c.head_dim as i64, c.n_heads as i64, c.n_kv_heads as i64);
        let (g, ni) = (nh / nkv, n as i64);
        let eps = c.rms_eps;
        let pos = self.ids(positions)?;
        let cos = self.cos.f_index_select(0, &pos).map_err(err)?;
        let sin = self.sin.f_index_select(0, &pos).map_err(err)?;

        let h = x.f_rms_norm([c.hidden as i64], Some(&w.attn_norm), eps).map_err(err)?;
        let (mut q, mut k, mut v) =
            (linear(&h, &w.q).map_err(err)?, linear(&h, &w.k).map_err(err)?, linear(&h, &w.v).map_err(err)?);
        if let Some([bq, bk, bv]) = &w.qkv_bias {
            q = q.f_add(bq).map_err(err)?;
            k = k.f_add(bk).map_err(err)?;
            v = v.f_add(bv).map_err(err)?;
        }
        let heads = |t: Tensor, h: i64| {
            t.f_reshape([ni, h, hd]).and_then(|t| t.f_transpose(0, 1)).and_then(|t| t.f_contiguous())
        };
        let q = heads(q, nh).and_then(|q| Self::rope(&q, &cos, &sin)).map_err(err)?;
        let k = heads(k, nkv).and_then(|k| Self::rope(&k, &cos, &sin)).map_err(err)?;
        let v = heads(v, nkv).map_err(err)?;
        cache.append(TchTensor(k), TchTensor(v), positions)?;
        let keys = cache.keys()?.map(|k| k.0).ok_or_else(|| sieve_backend::Error::Input("empty cache".into()))?;
        let values = cache.values()?.map(|v| v.0).ok_or_else(|| sieve_backend::Error::Input("empty cache".into()))?;

        let q = q.f_mul_scalar(1.0 / (hd as f64).sqrt()).and_then(|q| q.f_reshape([nkv, g, ni, hd])).map_err(err)?;
        let (out, attention, attention_sums) =
            self.attention(&q, &keys, &values, positions, cache.positions(), probe)?;
        let out = out
            .f_reshape([nh, ni, hd])
            .and_then(|o| o.f_transpose(0, 1))
            .and_then(|o| o.f_reshape([ni, nh * hd]))
            .map_err(err)?;
        let x = x.f_add(&linear(&out, &w.o).map_err(err)?).map_err(err)?;

        let h = x.f_rms_norm([c.hidden as i64], Some(&w.ffn_norm), eps).map_err(err)?;
        let gate = linear(&h, &w.gate).and_then(|t| t.f_silu()).map_err(err)?;
        let mlp = linear(&h, &w.up).and_then(|u| gate.f_mul(&u)).and_then(|t| linear(&t, &w.down)).map_err(err)?;
        let x = x.f_add(&mlp).map_err(err)?;
        Ok(LayerOutput { hidden: TchTensor(x), attention, attention_sums })
    }

    fn logits(&self, hidden: &TchTensor) -> Result<TchTensor> {
        let h = hidden.0.f_rms_norm([self.config.hidden as i64], Some(&self.norm), self.config.rms_eps).map_err(err)?;
        linear(&h, &self.lm_head).map(TchTensor).map_err(err)
    }
}
