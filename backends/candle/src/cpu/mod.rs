//! The CPU path of the candle backend: sieve's own kernels on host slices, with candle
//! tensors at the boundary (hidden states, the KV cache and the probes stay candle tensors,
//! so the pruning core scores them with candle's ops as on any device).
//!
//! Why kernels of our own: a decode step multiplies every weight matrix by one vector, and
//! a general GEMM does that well below the memory's speed; the cache was concatenated anew
//! at every step; q/k/v and gate/up ran as separate products; the softmax computed its
//! exponentials one by one. Here the projections are fused, matrix × vector runs four rows
//! per pass with AVX-512 or AVX2 chosen at run time ([`simd`]), the cache is written in
//! place with room to spare ([`layer::CACHE_HEADROOM`]), attention works per KV head on
//! blocks of queries through the `gemm` crate with a vectorised exponential ([`exp`]), and
//! prefill projections use the same GEMM on the fused matrices.

pub mod amx;
pub mod attention;
pub mod exp;
pub mod gemm;
pub mod intdot;
pub mod layer;
pub mod matvec;
pub mod pool;
pub mod qdot;
pub mod scratch;
pub mod simd;
pub mod vnni;
pub mod weights;

use candle_core::{Device, Tensor};
use sieve_backend::{LayerCall, LayerOutput, ModelConfig, Weights};

use crate::error::Result;
use crate::tensor::CandleTensor;
use layer::{CpuLayer, project, rms_norm, with_slice};
use weights::Matrix;

/// A decoder held for the CPU kernels.
pub struct CpuModel {
    config: ModelConfig,
    embed: Matrix,
    /// `None` when tied to the embedding.
    lm_head: Option<Matrix>,
    norm: Vec<f32>,
    layers: Vec<CpuLayer>,
    /// Rotary tables of each base ([`ModelConfig::rope_table_sets`]).
    rope: Vec<(Vec<f32>, Vec<f32>)>,
}

fn to_tensor(data: Vec<f32>, shape: &[usize]) -> Result<CandleTensor> {
    Ok(CandleTensor(Tensor::from_vec(data, shape, &Device::Cpu)?))
}

impl CpuModel {
    /// Takes the (checked) weights over.
    pub fn new(config: &ModelConfig, weights: Weights) -> Self {
        Self {
            config: config.clone(),
            embed: Matrix::from_weight(weights.embed),
            lm_head: weights.lm_head.map(Matrix::from_weight),
            norm: weights.norm.to_f32(),
            layers: weights.layers.into_iter().map(CpuLayer::new).collect(),
            rope: config.rope_table_sets(),
        }
    }

    /// Embeddings of `tokens` (ids checked by the engine).
    pub fn embed(&self, tokens: &[u32]) -> Result<CandleTensor> {
        let d = self.config.hidden;
        let mut out = Vec::with_capacity(tokens.len() * d);
        let mut scratch = Vec::new();
        for &t in tokens {
            out.extend_from_slice(self.embed.rows_f32(t as usize, 1, &mut scratch));
        }
        let scale = self.config.style.embed_scale;
        if scale != 1.0 {
            out.iter_mut().for_each(|v| *v *= scale);
        }
        to_tensor(out, &[tokens.len(), d])
    }

    /// Decoder layer `index`.
    pub fn layer(&self, call: crate::Call<'_>, cache: &mut crate::Cache) -> crate::Output {
        let LayerCall { index, hidden, positions, probe } = call;
        let layer = self.layers.get(index).ok_or_else(|| sieve_backend::Error::Input(format!("no layer {index}")))?;
        let x = with_slice(&hidden.0, <[f32]>::to_vec)
            .or_else(|_| -> Result<Vec<f32>> { Ok(hidden.0.flatten_all()?.to_vec1::<f32>()?) })?;
        let (cos, sin) = &self.rope[self.config.rope_set(index)];
        let out = layer.forward(&self.config, index, &x, positions, cache, probe, (cos, sin))?;
        self.output(out, positions.len(), cache.len())
    }

    /// Decoder layer `calls[0].index` for several sequences, each on its own cache, the
    /// weights read once for all their rows.
    pub fn layer_batch(
        &self,
        calls: &[crate::Call<'_>],
        caches: &mut [&mut crate::Cache],
    ) -> Result<Vec<LayerOutput<CandleTensor>>> {
        sieve_backend::check_batch(calls, caches.len())?;
        let Some(first) = calls.first() else { return Ok(Vec::new()) };
        let index = first.index;
        let layer = self.layers.get(index).ok_or_else(|| sieve_backend::Error::Input(format!("no layer {index}")))?;
        let mut x = Vec::new();
        for call in calls {
            let rows = with_slice(&call.hidden.0, <[f32]>::to_vec)
                .or_else(|_| -> Result<Vec<f32>> { Ok(call.hidden.0.flatten_all()?.to_vec1::<f32>()?) })?;
            x.extend_from_slice(&rows);
        }
        let mut seqs: Vec<layer::Seq<'_>> = calls
            .iter()
            .zip(caches.iter_mut())
            .map(|(call, cache)| layer::Seq { positions: call.positions, cache, probe: call.probe })
            .collect();
        let (cos, sin) = &self.rope[self.config.rope_set(index)];
        let outs = layer.forward_batch(&self.config, index, &x, &mut seqs, (cos, sin))?;
        drop(seqs);
        calls
            .iter()
            .zip(outs)
            .zip(caches.iter())
            .map(|((call, out), cache)| self.output(out, call.positions.len(), cache.len()))
            .collect()
    }

    /// A layer's output as tensors: `n` rows, `m` keys in the cache.
    fn output(&self, out: layer::Forward, n: usize, m: usize) -> crate::Output {
        let nh = self.config.n_heads;
        Ok(LayerOutput {
            hidden: to_tensor(out.hidden, &[n, self.config.hidden])?,
            attention: out.attention.map(|(p, rows)| to_tensor(p, &[nh, rows, m])).transpose()?,
            attention_sums: out.sums.map(|s| to_tensor(s, &[nh, 1, m])).transpose()?,
            queries: out.queries.map(|q| to_tensor(q, &[nh, n, self.config.head_dim])).transpose()?,
        })
    }

    /// Final norm and LM head (rows of a batched decode step through the vector kernel).
    pub fn logits(&self, hidden: &CandleTensor) -> Result<CandleTensor> {
        let x = hidden.0.flatten_all()?.to_vec1::<f32>()?;
        let n = x.len() / self.config.hidden;
        let h = rms_norm(&x, &self.norm, self.config.rms_eps);
        let head = self.lm_head.as_ref().unwrap_or(&self.embed);
        to_tensor(project(std::slice::from_ref(head), &h, n, layer::DECODE_BATCH).take(), &[n, self.config.vocab])
    }

    /// Bytes of weights held.
    pub fn bytes(&self) -> usize {
        self.embed.bytes()
            + self.lm_head.as_ref().map_or(0, Matrix::bytes)
            + 4 * self.norm.len()
            + self.layers.iter().map(CpuLayer::bytes).sum::<usize>()
    }
}
