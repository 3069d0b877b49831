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
    Error::Mismatch { what: what.to_string(), detail }
}

fn random(shape: &[usize], seed: u64) -> HostTensor {
    let mut rng = SplitMix64::new(seed);
    let n: usize = shape.iter().product();
    let data = (0..n).map(|_| rng.next_f32() * 2.0 - 1.0).collect();
    HostTensor::new(data, shape).unwrap_or_else(|_| unreachable!("shape and data agree by construction"))
}

/// Compares a backend result with the reference: same shape, values within tolerance.
pub fn compare<T: Tensor>(what: &str, got: &T, want: &HostTensor) -> Result<()> {
    compare_within(what, got, want, ATOL, RTOL)
}

/// [`compare`] with other tolerances: `|a - b| <= atol + rtol * |b|` for every value.
pub fn compare_within<T: Tensor>(what: &str, got: &T, want: &HostTensor, atol: f32, rtol: f32) -> Result<()> {
    if got.shape() != want.shape() {
        return Err(fail(what, format!("shape {:?}, reference {:?}", got.shape(), want.shape())));
    }
    let got = got.to_host()?;
    for (i, (a, b)) in got.iter().zip(want.data()).enumerate() {
        let ok = (a - b).abs() <= atol + rtol * b.abs() || (a.is_infinite() && a == b);
        if !ok {
            return Err(fail(what, format!("element {i}: {a} vs reference {b}")));
        }
    }
    Ok(())
}

fn up<T: Tensor>(x: &HostTensor, device: &T::Device) -> Result<T> {
    T::from_host(x.data(), &x.shape(), device)
}

/// The three operands of the operation cases, on the reference and on the backend.
struct Operands<T> {
    a: HostTensor,
    b: HostTensor,
    c: HostTensor,
    ta: T,
    tb: T,
    tc: T,
}

fn operands<T: Tensor>(device: &T::Device) -> Result<Operands<T>> {
    let a = random(&[3, 4, 5], 1);
    let b = random(&[3, 5, 2], 2);
    let c = random(&[3, 4, 5], 3);
    let (ta, tb, tc) = (up::<T>(&a, device)?, up::<T>(&b, device)?, up::<T>(&c, device)?);
    Ok(Operands { a, b, c, ta, tb, tc })
}

/// `from_host`, `to_host` and `reshape`.
pub fn host_transfer<T: Tensor>(device: &T::Device) -> Result<()> {
    let o = operands::<T>(device)?;
    compare("from_host/to_host", &o.ta, &o.a)?;
    compare("reshape", &o.ta.reshape(&[12, 5])?, &o.a.reshape(&[12, 5])?)
}

/// `sum`, `mean` and `max` along every dimension.
pub fn reductions<T: Tensor>(device: &T::Device) -> Result<()> {
    let o = operands::<T>(device)?;
    for dim in 0..3 {
        compare(&format!("sum({dim})"), &o.ta.sum(dim)?, &o.a.sum(dim)?)?;
        compare(&format!("mean({dim})"), &o.ta.mean(dim)?, &o.a.mean(dim)?)?;
        compare(&format!("max({dim})"), &o.ta.max(dim)?, &o.a.max(dim)?)?;
    }
    Ok(())
}

/// `index_select`, `narrow` and `cat` along every dimension; an index past the end is an
/// error.
pub fn indexing<T: Tensor>(device: &T::Device) -> Result<()> {
    let o = operands::<T>(device)?;
    for dim in 0..3 {
        let (got, want) = (o.ta.index_select(dim, &[2, 0, 2])?, o.a.index_select(dim, &[2, 0, 2])?);
        compare(&format!("index_select({dim})"), &got, &want)?;
        compare(&format!("narrow({dim})"), &o.ta.narrow(dim, 1, 2)?, &o.a.narrow(dim, 1, 2)?)?;
        compare(&format!("cat({dim})"), &T::cat(&[&o.ta, &o.tc], dim)?, &HostTensor::cat(&[&o.a, &o.c], dim)?)?;
    }
    if o.ta.index_select(1, &[9]).is_ok() {
        return Err(fail("index_select", "an index past the end must be an error".into()));
    }
    Ok(())
}

/// `softmax_last` and batched `matmul`.
pub fn softmax_matmul<T: Tensor>(device: &T::Device) -> Result<()> {
    let o = operands::<T>(device)?;
    compare("softmax_last", &o.ta.softmax_last()?, &o.a.softmax_last()?)?;
    compare("matmul", &o.ta.matmul(&o.tb)?, &o.a.matmul(&o.b)?)
}

/// The element-wise operations: `add`, `affine`, `sqr`, `sqrt`.
pub fn elementwise<T: Tensor>(device: &T::Device) -> Result<()> {
    let o = operands::<T>(device)?;
    compare("add", &o.ta.add(&o.tc)?, &o.a.add(&o.c)?)?;
    compare("affine", &o.ta.affine(-2.0, 0.5)?, &o.a.affine(-2.0, 0.5)?)?;
    compare("sqr", &o.ta.sqr()?, &o.a.sqr()?)?;
    compare("sqrt", &o.ta.sqr()?.sqrt()?, &o.a.sqr()?.sqrt()?)
}

/// `pool1d` with both poolings and several kernels; even kernels are errors.
pub fn pooling<T: Tensor>(device: &T::Device) -> Result<()> {
    let o = operands::<T>(device)?;
    for kernel in [1, 3, 7] {
        for pool in [Pool::Avg, Pool::Max] {
            compare(&format!("pool1d({kernel}, {pool:?})"), &o.ta.pool1d(kernel, pool)?, &o.a.pool1d(kernel, pool)?)?;
        }
    }
    if o.ta.pool1d(2, Pool::Avg).is_ok() || o.ta.pool1d(0, Pool::Max).is_ok() {
        return Err(fail("pool1d", "an even or zero kernel must be an error".into()));
    }
    Ok(())
}

/// `top_k`: best first, ties to the lower index.
pub fn top_k<T: Tensor>(device: &T::Device) -> Result<()> {
    let scores = up::<T>(&HostTensor::new(vec![0.5, 0.9, 0.5, 0.1, 0.9], &[5])?, device)?;
    let got = scores.top_k(3)?;
    if got != vec![1, 4, 0] {
        return Err(fail("top_k", format!("{got:?}, expected [1, 4, 0]")));
    }
    Ok(())
}

/// Compares the scorer built from each of `specs` on the backend with the reference, on
/// a GQA-shaped observation (6 query heads over 2 KV heads).
fn scorers<T: Tensor + Send + 'static>(device: &T::Device, specs: &[ScorerSpec]) -> Result<()> {
    let (q_heads, kv_heads, w, k, d) = (6, 2, 4, 16, 8);
    let attention = random(&[q_heads, w, k], 11).softmax_last()?;
    let keys = random(&[kv_heads, k, d], 12);
    let values = random(&[kv_heads, k, d], 13);
    let positions: Vec<usize> = (0..k).map(|i| 3 * i).collect();
    let (ta, tk, tv) = (up::<T>(&attention, device)?, up::<T>(&keys, device)?, up::<T>(&values, device)?);
    for spec in specs {
        let obs = Observation {
            layer: 3,
            step: 0,
            kv_heads,
            positions: &positions,
            attention: Some(&ta),
            keys: Some(&tk),
            values: Some(&tv),
            queries: None,
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
            queries: None,
            device: Host,
        };
        let (mut ours, mut theirs) = (spec.build::<T>(), spec.build::<HostTensor>());
        compare(&format!("scorer {spec:?}"), &ours.score_tokens(&obs)?, &theirs.score_tokens(&reference)?)?;
    }
    Ok(())
}

/// The last-query scorer (LazyLLM, TOVA) with both head aggregations.
pub fn scorer_last_query<T: Tensor + Send + 'static>(device: &T::Device) -> Result<()> {
    scorers::<T>(
        device,
        &[
            ScorerSpec::LastQuery { aggregation: Aggregation::Mean },
            ScorerSpec::LastQuery { aggregation: Aggregation::Max },
        ],
    )
}

/// The observation-window scorer (SnapKV) with both poolings.
pub fn scorer_snapkv<T: Tensor + Send + 'static>(device: &T::Device) -> Result<()> {
    scorers::<T>(
        device,
        &[
            ScorerSpec::Snapkv { window: 3, kernel: 5, pooling: Pool::Avg, aggregation: Aggregation::Mean },
            ScorerSpec::Snapkv { window: 8, kernel: 3, pooling: Pool::Max, aggregation: Aggregation::Max },
        ],
    )
}

/// The accumulated-attention scorer (H2O).
pub fn scorer_h2o<T: Tensor + Send + 'static>(device: &T::Device) -> Result<()> {
    scorers::<T>(
        device,
        &[
            ScorerSpec::H2o { aggregation: Aggregation::Mean, normalize: false },
            ScorerSpec::H2o { aggregation: Aggregation::Max, normalize: true },
        ],
    )
}

/// The scorers that read no attention: key and value norms, recency, random.
pub fn scorer_attention_free<T: Tensor + Send + 'static>(device: &T::Device) -> Result<()> {
    scorers::<T>(
        device,
        &[ScorerSpec::Knorm {}, ScorerSpec::Vnorm {}, ScorerSpec::Recency {}, ScorerSpec::Random { seed: 5 }],
    )
}

/// Both aggregations of per-head scores into per-token scores over GQA groups.
pub fn aggregation<T: Tensor>(device: &T::Device) -> Result<()> {
    let per_head = random(&[6, 16], 21);
    for agg in [Aggregation::Mean, Aggregation::Max] {
        let got = aggregate(&up::<T>(&per_head, device)?, 2, agg)?;
        compare(&format!("aggregate({agg:?})"), &got, &aggregate(&per_head, 2, agg)?)?;
    }
    Ok(())
}

/// Every case in turn, stopping at the first failure (for a device that a test binary
/// may or may not have, such as a GPU; [`crate::tensor_conformance!`] makes one test per
/// case instead).
pub fn run_all<T: Tensor + Send + 'static>(device: &T::Device) -> Result<()> {
    host_transfer::<T>(device)?;
    reductions::<T>(device)?;
    indexing::<T>(device)?;
    softmax_matmul::<T>(device)?;
    elementwise::<T>(device)?;
    pooling::<T>(device)?;
    top_k::<T>(device)?;
    scorer_last_query::<T>(device)?;
    scorer_snapkv::<T>(device)?;
    scorer_h2o::<T>(device)?;
    scorer_attention_free::<T>(device)?;
    aggregation::<T>(device)
}

/// Instantiates the core's conformance suite for a tensor type: one `#[test]` per case,
/// each on the device that `$device` evaluates to.
///
/// ```ignore
/// mod conformance {
///     sieve_core::tensor_conformance!(sieve_candle::CandleTensor, candle_core::Device::Cpu);
/// }
/// ```
#[macro_export]
macro_rules! tensor_conformance {
    ($tensor:ty, $device:expr) => {
        $crate::tensor_conformance!(@cases $tensor, $device;
            host_transfer, reductions, indexing, softmax_matmul, elementwise, pooling, top_k,
            scorer_last_query, scorer_snapkv, scorer_h2o, scorer_attention_free, aggregation);
    };
    (@cases $tensor:ty, $device:expr; $($case:ident),* $(,)?) => {
        $(
            #[test]
            fn $case() {
                let device = $device;
                if let Err(e) = $crate::conformance::$case::<$tensor>(&device) {
                    panic!("{e}");
                }
            }
        )*
    };
}

#[cfg(test)]
mod tests {
    use crate::HostTensor;
    use crate::host::Host;

    crate::tensor_conformance!(HostTensor, Host);
}
