//! [`TchBackend`]: the backend contract with libtorch ops.

use sieve_backend::mask::MaskCache;
use sieve_backend::quant::GgmlType;
use sieve_backend::{
    Activation, Backend, Block, DeviceSpec, HostWeight, LayerCache, LayerCall, LayerOutput, ModelConfig, Probe, Weights,
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

/// A Llama-family decoder on libtorch. Matrices stored as bf16 or f16 stay in that kind
/// and their products run in it (the input rounded to it, the result back in `f32`);
/// every other format is decoded to `f32`. Norms, rotary embedding, attention scores,
/// softmax and selection are `f32` whatever the matrices are.
pub struct TchBackend {
    config: ModelConfig,
    device: Device,
    embed: Tensor,
    layers: Vec<Layer>,
    norm: Tensor,
    lm_head: Tensor,
    /// Rotary tables `[context, head_dim / 2]` of each base ([`ModelConfig::rope_set`]).
    rope: Vec<(Tensor, Tensor)>,
    mask: MaskCache<TchTensor>,
}

// SAFETY: libtorch tensors may be used from any thread; the backend never mutates its
// weights after construction, and the mask cache is behind a mutex.
unsafe impl Sync for TchBackend {}

/// `w` on `device`: bf16 and f16 matrices as stored (the file's bytes are libtorch's
/// layout), other packed formats decoded to `f32`.
fn upload(w: &HostWeight, device: Device) -> Result<Tensor> {
    let shape: Vec<i64> = w.shape.iter().map(|&d| d as i64).collect();
    let host = match &w.packed {
        Some(p) if p.dtype == GgmlType::BF16 => Tensor::f_from_data_size(&p.bytes, &shape, Kind::BFloat16),
        Some(p) if p.dtype == GgmlType::F16 => Tensor::f_from_data_size(&p.bytes, &shape, Kind::Half),
        Some(_) => Tensor::f_from_slice(&w.to_f32()).and_then(|t| t.f_reshape(&shape)),
        None => Tensor::f_from_slice(&w.data).and_then(|t| t.f_reshape(&shape)),
    };
    host.and_then(|t| t.f_to(device)).map_err(err)
}

impl TchBackend {
    /// Uploads `weights` to `device` (`Device::Cpu` or `Device::Cuda(n)`).
    pub fn new(config: &ModelConfig, weights: &Weights, device: Device) -> Result<Self> {
        config.validate()?;
        weights.check(config)?;
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
            rope: config
                .rope_table_sets()
                .into_iter()
                .map(|(cos, sin)| Ok((table(cos)?, table(sin)?)))
                .collect::<std::result::Result<Vec<_>, tch::TchError>>()
                .map_err(err)?,
            mask: MaskCache::default(),
        })
    }

    fn ids(&self, v: &[usize]) -> Result<Tensor> {
        let ids: Vec<i64> = v.iter().map(|&i| i as i64).collect();
        Tensor::f_from_slice(&ids).and_then(|t| t.f_to(self.device)).map_err(err)
    }

    fn mask(&self, queries: &[usize], keys: &[usize], window: Option<usize>) -> Result<Tensor> {
        let (n, m) = (queries.len() as i64, keys.len() as i64);
        let t = self.mask.get_windowed(queries, keys, window, |data| {
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

    #[allow(clippy::type_complexity, clippy::too_many_arguments)]
    fn attention(
        &self,
        q: &Tensor,
        keys: &Tensor,
        values: &Tensor,
        q_pos: &[usize],
        k_pos: &[usize],
        padding: Option<&[usize]>,
        probe_spec: Probe,
        window: Option<usize>,
    ) -> Result<(Tensor, Option<TchTensor>, Option<TchTensor>)> {
        let w = window.unwrap_or(usize::MAX);
        let s = q.size();
        let (nkv, g, n, hd) = (s[0], s[1], s[2] as usize, s[3]);
        let m = k_pos.len() as i64;
        let probe = probe_spec.last_queries.min(n);
        let (mut outs, mut probes) = (Vec::new(), Vec::new());
        let mut sums: Option<Tensor> = None;
        let mut start = 0;
        while start < n {
            let rows = QUERY_BLOCK.min(n - start);
            let last_pos = q_pos[start + rows - 1];
            let end = k_pos.partition_point(|&p| p <= last_pos);
            // Keys before `k0` are outside every row's window (a local layer).
            let k0 = k_pos[..end].partition_point(|&p| p.saturating_add(w) <= q_pos[start]);
            let (visible, k0i, endi) = ((end - k0) as i64, k0 as i64, end as i64);
            let r = rows as i64;
            let qb = q.f_narrow(2, start as i64, r).and_then(|t| t.f_reshape([nkv, g * r, hd])).map_err(err)?;
            let kb = keys.f_narrow(1, k0i, visible).map_err(err)?;
            let vb = values.f_narrow(1, k0i, visible).map_err(err)?;
            let mut att = qb.f_matmul(&kb.f_transpose(1, 2).map_err(err)?).map_err(err)?;
            if visible > 0 && (k_pos[end - 1] > q_pos[start] || k_pos[k0].saturating_add(w) <= last_pos) {
                let mask = self.mask(q_pos, k_pos, window)?;
                let mb = mask.f_narrow(0, start as i64, r).and_then(|t| t.f_narrow(1, k0i, visible)).map_err(err)?;
                att = att
                    .f_reshape([nkv, g, r, visible])
                    .and_then(|a| a.f_add(&mb))
                    .and_then(|a| a.f_reshape([nkv, g * r, visible]))
                    .map_err(err)?;
            }
            if let Some(bias) = sieve_backend::mask::padding_bias(padding, k0, end - k0) {
                let bias = Tensor::f_from_slice(&bias)
                    .and_then(|b| b.f_reshape([nkv, 1, 1, visible]))
                    .and_then(|b| b.f_to(self.device))
                    .map_err(err)?;
                att = att
                    .f_reshape([nkv, g, r, visible])
                    .and_then(|a| a.f_add(&bias))
                    .and_then(|a| a.f_reshape([nkv, g * r, visible]))
                    .map_err(err)?;
            }
            let att = att.f_softmax(-1, Kind::Float).map_err(err)?;
            let pad = |a: Tensor| if visible < m { a.f_constant_pad_nd([k0i, m - endi]) } else { Ok(a) };
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

/// `x · wᵀ` in `f32`; a bf16 or f16 matrix multiplies `x` rounded to its kind.
fn linear(x: &Tensor, w: &Tensor) -> std::result::Result<Tensor, tch::TchError> {
    match w.kind() {
        Kind::Float => x.f_matmul(&w.f_transpose(0, 1)?),
        // One row (a decode step): a matrix-vector product, 0.06 ms on a 1,536 x 576 bf16
        // matrix here against 0.11 through `linear`, as fast as the f32 product.
        kind if x.size().first() == Some(&1) && x.dim() == 2 => {
            w.f_mv(&x.f_to_kind(kind)?.f_reshape([-1])?)?.f_reshape([1, -1])?.f_to_kind(Kind::Float)
        }
        // More rows: `linear` reaches oneDNN's reduced-precision kernels (AMX where the
        // CPU has it): about 1,100 GFLOP/s on a 512 x 576 x 1,536 bf16 product here,
        // against 200 in f32.
        kind => x.f_to_kind(kind)?.f_linear(w, None::<&Tensor>)?.f_to_kind(Kind::Float),
    }
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

    fn half_precision_products(&self) -> bool {
        true
    }

    fn embed(&self, tokens: &[u32]) -> Result<TchTensor> {
        let ids: Vec<usize> = tokens.iter().map(|&t| t as usize).collect();
        let x = self.embed.f_index_select(0, &self.ids(&ids)?).and_then(|x| x.f_to_kind(Kind::Float)).map_err(err)?;
        let scale = self.config.style.embed_scale;
        let x = if scale == 1.0 { x } else { x.f_mul_scalar(f64::from(scale)).map_err(err)? };
        Ok(TchTensor(x))
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
        let (cos, sin) = &self.rope[c.rope_set(index)];
        let cos = cos.f_index_select(0, &pos).map_err(err)?;
        let sin = sin.f_index_select(0, &pos).map_err(err)?;

        let h = x.f_rms_norm([c.hidden as i64], Some(&w.attn_norm), eps).map_err(err)?;
        let (mut q, mut k, mut v) =
            (linear(&h, &w.q).map_err(err)?, linear(&h, &w.k).map_err(err)?, linear(&h, &w.v).map_err(err)?);
        if let Some([bq, bk, bv]) = &w.qkv_bias {
            q = q.f_add(bq).map_err(err)?;
            k = k.f_add(bk).map_err(err)?;
            v = v.f_add(bv).map_err(err)?;
        }
        if let Some([qn, kn]) = &w.qk_norm {
            let norm = |t: &Tensor, h: i64, g: &Tensor| {
                t.f_reshape([ni, h, hd])
                    .and_then(|t| t.f_rms_norm([hd], Some(g), eps))
                    .and_then(|t| t.f_reshape([ni, h * hd]))
            };
            q = norm(&q, nh, qn).map_err(err)?;
            k = norm(&k, nkv, kn).map_err(err)?;
        }
        let heads = |t: Tensor, h: i64| {
            t.f_reshape([ni, h, hd]).and_then(|t| t.f_transpose(0, 1)).and_then(|t| t.f_contiguous())
        };
        let q = heads(q, nh).map_err(err)?;
        let queries = probe.queries.then(|| TchTensor(q.shallow_clone()));
        let q = Self::rope(&q, &cos, &sin).map_err(err)?;
        let k = heads(k, nkv).and_then(|k| Self::rope(&k, &cos, &sin)).map_err(err)?;
        let v = heads(v, nkv).map_err(err)?;
        cache.append(TchTensor(k), TchTensor(v), positions)?;
        let keys = cache.keys()?.map(|k| k.0).ok_or_else(|| sieve_backend::Error::Input("empty cache".into()))?;
        let values = cache.values()?.map(|v| v.0).ok_or_else(|| sieve_backend::Error::Input("empty cache".into()))?;

        let q = q.f_mul_scalar(c.query_scale()).and_then(|q| q.f_reshape([nkv, g, ni, hd])).map_err(err)?;
        let (out, attention, attention_sums) =
            self.attention(&q, &keys, &values, positions, cache.positions(), cache.padding(), probe, c.window(index))?;
        let out = out
            .f_reshape([nh, ni, hd])
            .and_then(|o| o.f_transpose(0, 1))
            .and_then(|o| o.f_reshape([ni, nh * hd]))
            .map_err(err)?;
        let mut attn = linear(&out, &w.o).map_err(err)?;
        if let Some([post_attn, _]) = &w.post_norms {
            attn = attn.f_rms_norm([c.hidden as i64], Some(post_attn), eps).map_err(err)?;
        }
        let x = x.f_add(&attn).map_err(err)?;

        let h = x.f_rms_norm([c.hidden as i64], Some(&w.ffn_norm), eps).map_err(err)?;
        let gate = linear(&h, &w.gate)
            .and_then(|t| match c.style.activation {
                Activation::Silu => t.f_silu(),
                Activation::GeluTanh => t.f_gelu("tanh"),
            })
            .map_err(err)?;
        let mut mlp = linear(&h, &w.up).and_then(|u| gate.f_mul(&u)).and_then(|t| linear(&t, &w.down)).map_err(err)?;
        if let Some([_, post_ffn]) = &w.post_norms {
            mlp = mlp.f_rms_norm([c.hidden as i64], Some(post_ffn), eps).map_err(err)?;
        }
        let x = x.f_add(&mlp).map_err(err)?;
        Ok(LayerOutput { hidden: TchTensor(x), attention, attention_sums, queries })
    }

    fn logits(&self, hidden: &TchTensor) -> Result<TchTensor> {
        let h = hidden.0.f_rms_norm([self.config.hidden as i64], Some(&self.norm), self.config.rms_eps).map_err(err)?;
        linear(&h, &self.lm_head).map(TchTensor).map_err(err)
    }
}
