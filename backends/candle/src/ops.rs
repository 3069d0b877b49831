//! The candle backend as candle ops: every step of the block written with candle's tensor
//! operations, so it runs on any device candle has (CUDA in particular). On the CPU the
//! backend uses its own kernels instead ([`crate::cpu`]); this path stays selectable there
//! for comparison and is checked by the same conformance suite.

use candle_core::{DType, Device, Tensor};
use sieve_backend::mask::MaskCache;
use sieve_backend::quant::GgmlType;
use sieve_backend::{Activation, Block, HostWeight, LayerCall, LayerOutput, ModelConfig, Probe, Weights};

use crate::error::{Error, Result};
use crate::tensor::CandleTensor;

fn err(e: candle_core::Error) -> Error {
    Error::from(e)
}

/// The candle type a matrix in `format` computes in: `f16` and `bf16` as themselves, every
/// other format decoded to `f32`.
pub fn compute_dtype(format: Option<GgmlType>) -> DType {
    match format {
        Some(GgmlType::F16) => DType::F16,
        Some(GgmlType::BF16) => DType::BF16,
        _ => DType::F32,
    }
}

fn upload(w: HostWeight, device: &Device) -> Result<Tensor> {
    match &w.packed {
        Some(p) if compute_dtype(Some(p.dtype)) != DType::F32 => {
            Tensor::from_raw_buffer(&p.bytes, compute_dtype(Some(p.dtype)), &w.shape, device).map_err(err)
        }
        Some(_) => upload(w.into_f32(), device),
        // On the CPU this takes the vector over without copying.
        None => Tensor::from_vec(w.data, w.shape.as_slice(), device).map_err(err),
    }
}

type Layer = Block<Tensor>;

/// A Llama-family decoder as candle ops, for any candle device.
///
/// Matrices compute in `f16` or `bf16` when every one of them is stored in that format (a
/// model loaded with `--dtype f16` or `bf16`): activations are cast to it before each
/// product, which accumulates in `f32` (cuBLAS' default compute type for both), and the
/// result is cast back. Everything else is `f32`: norms, rotary, attention with its
/// softmax (so the scores pruning reads) and the KV cache. Weights in any other mix of
/// formats are decoded to `f32` at load.
pub struct OpsModel {
    config: ModelConfig,
    device: Device,
    /// What the matrices compute in.
    dtype: DType,
    embed: Tensor,
    layers: Vec<Layer>,
    norm: Tensor,
    lm_head: Tensor,
    /// Rotary tables `[context, head_dim / 2]` of each base ([`ModelConfig::rope_set`]).
    rope: Vec<(Tensor, Tensor)>,
    mask: MaskCache<Tensor>,
}

impl OpsModel {
    /// Moves `weights` to `device`; on the CPU without a copy.
    pub fn new(config: &ModelConfig, weights: Weights, device: Device) -> Result<Self> {
        let dtype = compute_dtype(weights.matrix_format());
        let weights = if dtype == DType::F32 { weights.into_f32() } else { weights };
        let up = |w: HostWeight| upload(w, &device);
        let layers = weights.layers.into_iter().map(|l| l.try_map(&up)).collect::<Result<Vec<_>>>()?;
        let embed = up(weights.embed)?;
        let lm_head = match weights.lm_head {
            Some(w) => up(w)?,
            None => embed.clone(),
        };
        // Rotary tables for every position of the context, half-split layout.
        let half = config.head_dim / 2;
        let rope = config
            .rope_table_sets()
            .into_iter()
            .map(|(cos, sin)| {
                let cos = Tensor::from_vec(cos, (config.context, half), &device)?;
                Ok((cos, Tensor::from_vec(sin, (config.context, half), &device)?))
            })
            .collect::<candle_core::Result<Vec<_>>>()
            .map_err(err)?;
        let norm = up(weights.norm)?;
        Ok(Self {
            config: config.clone(),
            device,
            dtype,
            embed,
            layers,
            norm,
            lm_head,
            rope,
            mask: MaskCache::default(),
        })
    }

    /// What the matrices compute in (`F32`, `F16` or `BF16`).
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    fn positions_tensor(&self, positions: &[usize]) -> Result<Tensor> {
        let ids: Vec<u32> = positions.iter().map(|&p| p as u32).collect();
        Tensor::from_vec(ids, positions.len(), &self.device).map_err(err)
    }

    /// Additive causal mask `[n, m]` by original positions; cached across layers that see
    /// the same positions.
    fn mask(&self, queries: &[usize], keys: &[usize], window: Option<usize>) -> Result<Tensor> {
        self.mask.get_windowed(queries, keys, window, |data| {
            Tensor::from_vec(data, (queries.len(), keys.len()), &self.device).map_err(err)
        })
    }
}

impl OpsModel {
    /// The additive mask `[rows, keys]` of queries at `q_pos` over keys at positions `kp`
    /// (`[1, keys]` on the device, as `f32`: exact below 2^24): 0 where the key is visible
    /// (at or before the query, and inside `window`), -inf elsewhere, as
    /// [`sieve_backend::mask::windowed_mask`] gives it.
    fn block_mask(&self, q_pos: &[usize], kp: &Tensor, window: Option<usize>) -> Result<Tensor> {
        let rows = q_pos.len();
        let keys = kp.dim(1).map_err(err)?;
        let qp = Tensor::from_vec(q_pos.iter().map(|&p| p as f32).collect::<Vec<_>>(), (rows, 1), &self.device);
        let build = || -> candle_core::Result<Tensor> {
            let qp = qp?;
            let mut hidden = kp.broadcast_gt(&qp)?.to_dtype(DType::F32)?;
            if let Some(w) = window {
                let early = kp.affine(1.0, w as f64)?.broadcast_le(&qp)?.to_dtype(DType::F32)?;
                hidden = (hidden + early)?;
            }
            let minus_inf = Tensor::full(f32::NEG_INFINITY, (rows, keys), &self.device)?;
            let zero = Tensor::zeros((rows, keys), DType::F32, &self.device)?;
            hidden.gt(0.0)?.where_cond(&minus_inf, &zero)
        };
        build().map_err(err)
    }
}

/// Query rows per attention block. Blocks only read the keys their last query may see,
/// which skips most of the masked half of causal attention in a long prefill.
const QUERY_BLOCK: usize = 256;

impl OpsModel {
    /// Causal attention of scaled queries `[kv, g, n, hd]` over `keys`/`values`
    /// `[kv, m, hd]`, by original positions, in blocks of query rows. Returns the output
    /// `[kv, g, n, hd]`, the probabilities of the last `probe.last_queries` rows
    /// `[kv * g, rows, m]` (zero where masked) and their sums over all rows `[kv * g, 1, m]`.
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
    ) -> Result<(Tensor, Option<CandleTensor>, Option<CandleTensor>)> {
        let w = window.unwrap_or(usize::MAX);
        let (nkv, g, n, hd) = q.dims4().map_err(err)?;
        let m = k_pos.len();
        let probe = probe_spec.last_queries.min(n);
        let mut outs = Vec::new();
        let mut probes = Vec::new();
        let mut sums: Option<Tensor> = None;
        // Several blocks: each builds its own mask on the device from the positions, so that
        // no `[n, m]` mask (the size of the attention square) is ever made.
        let key_positions = match n > QUERY_BLOCK && k_pos.last().is_some_and(|&p| p < 1 << 24) {
            true => Some(
                Tensor::from_vec(k_pos.iter().map(|&p| p as f32).collect::<Vec<_>>(), (1, m), &self.device)
                    .map_err(err)?,
            ),
            false => None,
        };
        let mut start = 0;
        while start < n {
            let rows = QUERY_BLOCK.min(n - start);
            let last_pos = q_pos[start + rows - 1];
            // Keys are in increasing position order: the block sees a prefix of them.
            let end = k_pos.partition_point(|&p| p <= last_pos);
            // Keys before `k0` are outside every row's window (a local layer).
            let k0 = k_pos[..end].partition_point(|&p| p.saturating_add(w) <= q_pos[start]);
            let visible = end - k0;
            let qb = q.narrow(2, start, rows).and_then(|t| t.reshape((nkv, g * rows, hd))).map_err(err)?;
            let kb = keys.narrow(1, k0, visible).map_err(err)?;
            let vb = values.narrow(1, k0, visible).map_err(err)?;
            let mut att = qb.matmul(&kb.t().map_err(err)?).map_err(err)?;
            let needs_mask = visible > 0 && (k_pos[end - 1] > q_pos[start] || k_pos[k0].saturating_add(w) <= last_pos);
            if needs_mask {
                let mb = match &key_positions {
                    // One block: the mask of the whole call, cached across layers.
                    None => self.mask(q_pos, k_pos, window)?.narrow(1, k0, visible).map_err(err)?,
                    Some(kp) => {
                        let kp = kp.narrow(1, k0, visible).map_err(err)?;
                        self.block_mask(&q_pos[start..start + rows], &kp, window)?
                    }
                };
                att = att
                    .reshape((nkv, g, rows, visible))
                    .and_then(|a| a.broadcast_add(&mb))
                    .and_then(|a| a.reshape((nkv, g * rows, visible)))
                    .map_err(err)?;
            }
            if let Some(bias) = sieve_backend::mask::padding_bias(padding, k0, visible) {
                let bias = Tensor::from_vec(bias, (nkv, 1, 1, visible), &self.device).map_err(err)?;
                att = att
                    .reshape((nkv, g, rows, visible))
                    .and_then(|a| a.broadcast_add(&bias))
                    .and_then(|a| a.reshape((nkv, g * rows, visible)))
                    .map_err(err)?;
            }
            let att = candle_nn::ops::softmax_last_dim(&att).map_err(err)?;
            if probe_spec.column_sums {
                // Summed over rows as a product with a row of ones: a GEMM, much faster
                // than candle's reduction over a middle dimension.
                let ones = Tensor::ones((nkv * g, 1, rows), DType::F32, &self.device).map_err(err)?;
                let block = att
                    .reshape((nkv * g, rows, visible))
                    .and_then(|a| ones.matmul(&a))
                    .and_then(|a| if visible < m { a.pad_with_zeros(2, k0, m - end) } else { Ok(a) })
                    .map_err(err)?;
                sums = Some(match sums {
                    Some(total) => (total + block).map_err(err)?,
                    None => block,
                });
            }
            // Rows of this block among the last `probe` rows of the call.
            let first_probe = n - probe;
            if probe > 0 && start + rows > first_probe {
                let from = first_probe.max(start) - start;
                let a = att
                    .reshape((nkv * g, rows, visible))
                    .and_then(|a| a.narrow(1, from, rows - from))
                    .and_then(|a| if visible < m { a.pad_with_zeros(2, k0, m - end) } else { Ok(a) })
                    .map_err(err)?;
                probes.push(a);
            }
            let ob = att.matmul(&vb).and_then(|o| o.reshape((nkv, g, rows, hd))).map_err(err)?;
            outs.push(ob);
            start += rows;
        }
        let out = if outs.len() == 1 { outs.remove(0) } else { Tensor::cat(&outs, 2).map_err(err)? };
        let probe = match probes.len() {
            0 => None,
            1 => Some(CandleTensor(probes.remove(0))),
            _ => Some(CandleTensor(Tensor::cat(&probes, 1).map_err(err)?)),
        };
        let sums = sums.map(CandleTensor);
        Ok((out, probe, sums))
    }
}

/// `x w^T` in `w`'s type, returned as `f32`.
fn linear(x: &Tensor, w: &Tensor) -> candle_core::Result<Tensor> {
    match w.dtype() {
        DType::F32 => x.matmul(&w.t()?),
        dtype => x.to_dtype(dtype)?.matmul(&w.t()?)?.to_dtype(DType::F32),
    }
}

impl OpsModel {
    pub fn embed(&self, tokens: &[u32]) -> Result<CandleTensor> {
        let ids = Tensor::from_slice(tokens, tokens.len(), &self.device).map_err(err)?;
        let x = self.embed.index_select(&ids, 0).and_then(|x| x.to_dtype(DType::F32)).map_err(err)?;
        let scale = self.config.style.embed_scale;
        let x = if scale == 1.0 { x } else { x.affine(f64::from(scale), 0.0).map_err(err)? };
        Ok(CandleTensor(x))
    }

    pub fn layer(&self, call: crate::Call<'_>, cache: &mut crate::Cache) -> crate::Output {
        let LayerCall { index, hidden, positions, probe } = call;
        let c = &self.config;
        let w = self.layers.get(index).ok_or_else(|| sieve_backend::Error::Input(format!("no layer {index}")))?;
        let x = &hidden.0;
        let n = x.dim(0).map_err(err)?;
        let (hd, nh, nkv) = (c.head_dim, c.n_heads, c.n_kv_heads);
        let g = nh / nkv;
        let eps = c.rms_eps as f32;
        let pos = self.positions_tensor(positions)?;
        let (cos, sin) = &self.rope[c.rope_set(index)];
        let cos = cos.index_select(&pos, 0).map_err(err)?;
        let sin = sin.index_select(&pos, 0).map_err(err)?;

        let h = candle_nn::ops::rms_norm(x, &w.attn_norm, eps).map_err(err)?;
        let (mut q, mut k, mut v) = (linear(&h, &w.q), linear(&h, &w.k), linear(&h, &w.v));
        if let Some([bq, bk, bv]) = &w.qkv_bias {
            q = q.and_then(|q| q.broadcast_add(bq));
            k = k.and_then(|k| k.broadcast_add(bk));
            v = v.and_then(|v| v.broadcast_add(bv));
        }
        if let Some([qn, kn]) = &w.qk_norm {
            let norm = |t: candle_core::Result<Tensor>, h: usize, g: &Tensor| {
                candle_nn::ops::rms_norm(&t?.reshape((n, h, hd))?, g, eps)?.reshape((n, h * hd))
            };
            q = norm(q, nh, qn);
            k = norm(k, nkv, kn);
        }
        let heads = |t: candle_core::Result<Tensor>, h: usize| -> candle_core::Result<Tensor> {
            t?.reshape((1, n, h, hd))?.transpose(1, 2)?.contiguous()
        };
        let q = heads(q, nh).map_err(err)?;
        let queries = match probe.queries {
            true => Some(CandleTensor(q.squeeze(0).map_err(err)?)),
            false => None,
        };
        let q = candle_nn::rotary_emb::rope(&q, &cos, &sin).map_err(err)?;
        let k = candle_nn::rotary_emb::rope(&heads(k, nkv).map_err(err)?, &cos, &sin).map_err(err)?;
        let v = heads(v, nkv).map_err(err)?;
        let (k, v) = (k.squeeze(0).map_err(err)?, v.squeeze(0).map_err(err)?);

        // Append to the cache: [kv, len, hd].
        cache.append(CandleTensor(k), CandleTensor(v), positions)?;
        let keys = cache.keys()?.map(|k| k.0).ok_or_else(|| sieve_backend::Error::Input("empty cache".into()))?;
        let values = cache.values()?.map(|v| v.0).ok_or_else(|| sieve_backend::Error::Input("empty cache".into()))?;

        // Grouped attention: the g query heads of a KV head attend together.
        let q = q.affine(c.query_scale(), 0.0).and_then(|q| q.reshape((nkv, g, n, hd))).map_err(err)?;
        let (out, attention, attention_sums) =
            self.attention(&q, &keys, &values, positions, cache.positions(), cache.padding(), probe, c.window(index))?;
        let out = out
            .reshape((nh, n, hd))
            .and_then(|o| o.transpose(0, 1))
            .and_then(|o| o.reshape((n, nh * hd)))
            .map_err(err)?;
        let mut attn = linear(&out, &w.o).map_err(err)?;
        if let Some([post_attn, _]) = &w.post_norms {
            attn = candle_nn::ops::rms_norm(&attn, post_attn, eps).map_err(err)?;
        }
        let x = (x + attn).map_err(err)?;

        let h = candle_nn::ops::rms_norm(&x, &w.ffn_norm, eps).map_err(err)?;
        let gate = linear(&h, &w.gate).map_err(err)?;
        let gate = match c.style.activation {
            Activation::Silu => candle_nn::ops::silu(&gate),
            Activation::GeluTanh => gate.gelu(),
        }
        .map_err(err)?;
        let upv = linear(&h, &w.up).map_err(err)?;
        let mut mlp = linear(&(gate * upv).map_err(err)?, &w.down).map_err(err)?;
        if let Some([_, post_ffn]) = &w.post_norms {
            mlp = candle_nn::ops::rms_norm(&mlp, post_ffn, eps).map_err(err)?;
        }
        let x = (x + mlp).map_err(err)?;
        Ok(LayerOutput { hidden: CandleTensor(x), attention, attention_sums, queries })
    }

    pub fn logits(&self, hidden: &CandleTensor) -> Result<CandleTensor> {
        let h = candle_nn::ops::rms_norm(&hidden.0, &self.norm, self.config.rms_eps as f32).map_err(err)?;
        let logits = linear(&h, &self.lm_head).map_err(err)?;
        logits.to_dtype(DType::F32).map(CandleTensor).map_err(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The device-built block mask is the host's mask, with and without a window, over
    /// gapped positions.
    #[test]
    fn block_masks_equal_the_host_mask() {
        let config = sieve_backend::synthetic::tiny_config();
        let model = OpsModel::new(&config, sieve_backend::synthetic::weights(&config, 0, false), Device::Cpu).unwrap();
        let keys: Vec<usize> = (0..200).filter(|p| p % 7 != 3).collect();
        let queries: Vec<usize> = keys[100..].to_vec();
        let kp = Tensor::from_vec(keys.iter().map(|&p| p as f32).collect::<Vec<_>>(), (1, keys.len()), &Device::Cpu)
            .unwrap();
        for window in [None, Some(1), Some(16), Some(500)] {
            let got = model.block_mask(&queries, &kp, window).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert_eq!(got, sieve_backend::mask::windowed_mask(&queries, &keys, window), "window {window:?}");
        }
    }
}
