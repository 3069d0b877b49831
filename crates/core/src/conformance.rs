//! The backend conformance suite of the pruning core: every [`Tensor`] operation and every
//! scorer on a backend's tensors, compared with [`HostTensor`], the reference
//! implementation. Written once; each backend's tests run it on its own device:
//!
//! ```ignore
//! sieve_core::conformance::run_all::<MyTensor>(&my_device).unwrap();
//! ```
//!
//! Values are compared with `|a - b| <= ATOL + RTOL * |b|` (f32 reductions may associate
//! differently on another runtime; the inputs are small so these bounds are loose enough
//! for any correct implementation and far too tight for a wrong one).

use crate::error::{Error, Result};
use crate::host::{Host, HostTensor};
use crate::rng::SplitMix64;
use crate::scorer::{Aggregation, Observation, ScorerSpec, aggregate};
use crate::tensor::{Pool, Tensor};

/// Absolute tolerance of the comparisons.
pub const ATOL: f32 = 1e-5;
/// Relative tolerance of the comparisons.
pub const RTOL: f32 = 1e-4;

fn fail(what: &str, detail: String) -> Error {
    Error::InvalidPolicy(format!("conformance: {what}: {detail}"))
}

fn random(shape: &[usize], seed: u64) -> HostTensor {
    let mut rng = SplitMix64::new(seed);
    let n: usize = shape.iter().product();
    let data = (0..n).map(|_| rng.next_f32() * 2.0 - 1.0).collect();
    HostTensor::new(data, shape).unwrap_or_else(|_| unreachable!("shape and data agree by construction"))
}

/// Compares a backend result with the reference: same shape, values within tolerance.
pub fn compare<T: Tensor>(what: &str, got: &T, want: &HostTensor) -> Result<()> {
    if got.shape() != want.shape() {
        return Err(fail(what, format!("shape {:?}, reference {:?}", got.shape(), want.shape())));
    }
    let got = got.to_host()?;
    for (i, (a, b)) in got.iter().zip(want.data()).enumerate() {
        let ok = (a - b).abs() <= ATOL + RTOL * b.abs() || (a.is_infinite() && a == b);
        if !ok {
            return Err(fail(what, format!("element {i}: {a} vs reference {b}")));
        }
    }
    Ok(())
}

fn up<T: Tensor>(x: &HostTensor, device: &T::Device) -> Result<T> {
    T::from_host(x.data(), &x.shape(), device)
}

/// Every operation of the tensor trait against the reference.
pub fn check_ops<T: Tensor>(device: &T::Device) -> Result<()> {
    let a = random(&[3, 4, 5], 1);
    let b = random(&[3, 5, 2], 2);
    let c = random(&[3, 4, 5], 3);
    let (ta, tb, tc) = (up::<T>(&a, device)?, up::<T>(&b, device)?, up::<T>(&c, device)?);
    compare("from_host/to_host", &ta, &a)?;
    compare("reshape", &ta.reshape(&[12, 5])?, &a.reshape(&[12, 5])?)?;
    for dim in 0..3 {
        compare(&format!("sum({dim})"), &ta.sum(dim)?, &a.sum(dim)?)?;
        compare(&format!("mean({dim})"), &ta.mean(dim)?, &a.mean(dim)?)?;
        compare(&format!("max({dim})"), &ta.max(dim)?, &a.max(dim)?)?;
        compare(
            &format!("index_select({dim})"),
            &ta.index_select(dim, &[2, 0, 2])?,
            &a.index_select(dim, &[2, 0, 2])?,
        )?;
        compare(&format!("narrow({dim})"), &ta.narrow(dim, 1, 2)?, &a.narrow(dim, 1, 2)?)?;
        compare(&format!("cat({dim})"), &T::cat(&[&ta, &tc], dim)?, &HostTensor::cat(&[&a, &c], dim)?)?;
    }
    compare("softmax_last", &ta.softmax_last()?, &a.softmax_last()?)?;
    compare("matmul", &ta.matmul(&tb)?, &a.matmul(&b)?)?;
    compare("add", &ta.add(&tc)?, &a.add(&c)?)?;
    compare("affine", &ta.affine(-2.0, 0.5)?, &a.affine(-2.0, 0.5)?)?;
    compare("sqr", &ta.sqr()?, &a.sqr()?)?;
    compare("sqrt", &ta.sqr()?.sqrt()?, &a.sqr()?.sqrt()?)?;
    for kernel in [1, 3, 7] {
        for pool in [Pool::Avg, Pool::Max] {
            compare(&format!("pool1d({kernel}, {pool:?})"), &ta.pool1d(kernel, pool)?, &a.pool1d(kernel, pool)?)?;
        }
    }
    let scores = up::<T>(&HostTensor::new(vec![0.5, 0.9, 0.5, 0.1, 0.9], &[5])?, device)?;
    if scores.top_k(3)? != vec![1, 4, 0] {
        return Err(fail("top_k", format!("{:?}, expected [1, 4, 0]", scores.top_k(3)?)));
    }
    if ta.index_select(1, &[9]).is_ok() {
        return Err(fail("index_select", "an index past the end must be an error".into()));
    }
    Ok(())
}

/// Every scorer and both head aggregations on a GQA-shaped observation.
pub fn check_scorers<T: Tensor + Send + 'static>(device: &T::Device) -> Result<()> {
    let (q_heads, kv_heads, w, k, d) = (6, 2, 4, 16, 8);
    let logits = random(&[q_heads, w, k], 11);
    let attention = logits.softmax_last()?;
    let keys = random(&[kv_heads, k, d], 12);
    let values = random(&[kv_heads, k, d], 13);
    let positions: Vec<usize> = (0..k).map(|i| 3 * i).collect();
    let (ta, tk, tv) = (up::<T>(&attention, device)?, up::<T>(&keys, device)?, up::<T>(&values, device)?);
    let specs = [
        ScorerSpec::LastQuery { aggregation: Aggregation::Mean },
        ScorerSpec::LastQuery { aggregation: Aggregation::Max },
        ScorerSpec::Snapkv { window: 3, kernel: 5, pooling: Pool::Avg, aggregation: Aggregation::Mean },
        ScorerSpec::Snapkv { window: 8, kernel: 3, pooling: Pool::Max, aggregation: Aggregation::Max },
        ScorerSpec::H2o { aggregation: Aggregation::Mean },
        ScorerSpec::Knorm {},
        ScorerSpec::Vnorm {},
        ScorerSpec::Recency {},
        ScorerSpec::Random { seed: 5 },
    ];
    for spec in specs {
        let obs = Observation {
            layer: 3,
            step: 0,
            kv_heads,
            positions: &positions,
            attention: Some(&ta),
            keys: Some(&tk),
            values: Some(&tv),
            device: device.clone(),
        };
        let reference = Observation {
            layer: 3,
            step: 0,
            kv_heads,
            positions: &positions,
            attention: Some(&attention),
            keys: Some(&keys),
            values: Some(&values),
            device: Host,
        };
        let (mut ours, mut theirs) = (spec.build::<T>(), spec.build::<HostTensor>());
        compare(&format!("scorer {spec:?}"), &ours.score_tokens(&obs)?, &theirs.score_tokens(&reference)?)?;
    }
    let per_head = random(&[q_heads, k], 21);
    for agg in [Aggregation::Mean, Aggregation::Max] {
        let got = aggregate(&up::<T>(&per_head, device)?, kv_heads, agg)?;
        compare(&format!("aggregate({agg:?})"), &got, &aggregate(&per_head, kv_heads, agg)?)?;
    }
    Ok(())
}

/// The whole core suite.
pub fn run_all<T: Tensor + Send + 'static>(device: &T::Device) -> Result<()> {
    check_ops::<T>(device)?;
    check_scorers::<T>(device)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reference_conforms_to_itself() {
        run_all::<HostTensor>(&Host).unwrap();
    }
}
