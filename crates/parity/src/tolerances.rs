//! Every tolerance of the parity suite, in one place. The backends compute in `f32` with
//! different kernels (GEMM blocking, reduction order, blocked or full attention), so their
//! numbers differ by rounding; these bounds admit rounding and nothing more.

/// Largest |difference| of the final position's logits. Measured between the backends: about
/// 1e-4 after 30 layers (logits of magnitude ~20). A wrong rotary layout, mask or scale
/// moves them by whole units; a 1e-2 bias on one layer's output by several 1e-3.
pub const LOGITS_MAX_ABS: f64 = 1e-3;

/// [`LOGITS_MAX_ABS`] when the weights are packed (`--dtype native`, the default on a
/// quantized file). The candle CPU kernels multiply packed rows by their input quantized
/// to 16 bits per block of 32 when fewer than five rows go through a product, the LM head
/// of the final position included; ONNX Runtime multiplies by the decoded blocks in `f32`
/// (`MatMulNBits` at accuracy level 0, the file's values exactly) and libtorch decodes them
/// at load. A block whose largest value is an outlier quantizes its other values coarsely,
/// which moves single logits by up to 1.6e-3 (measured on the suite, magnitudes ~20); the
/// cosine bound, the greedy tokens and the kept positions stay as strict as in `f32`, and a
/// 1e-2 bias on one layer still moves the logits by several times this bound.
pub const LOGITS_MAX_ABS_PACKED: f64 = 4e-3;

/// Smallest cosine similarity of the final logits (1 - cosine is ~1e-10 from rounding).
pub const LOGITS_COSINE_MIN: f64 = 0.999_999;

/// Smallest fraction of layers whose kept positions must be identical. Selection is
/// deterministic (ties go to the lower index), but two scores within rounding of each other
/// at the budget's edge may swap one token: one layer in twenty may differ.
pub const KEPT_EXACT_MIN: f64 = 0.95;

/// Smallest mean Jaccard index of the kept positions per layer: a swapped token changes a
/// layer of hundreds of entries by well under 1%.
pub const KEPT_JACCARD_MIN: f64 = 0.99;

/// Greedy tokens (of the first 32) that must agree before the first difference. Identical
/// logits up to rounding give identical argmaxes unless two candidates tie within the
/// logits' bound; any real difference shows at once.
pub const GENERATION_PREFIX_MIN: usize = 32;

/// Where the greedy tokens first differ, the two backends chose between two tokens that
/// tied if each put them at most this many times the logits' bound apart: logits that each
/// move by up to the bound can swap two tokens that close, and no further. Past the
/// first difference the two generations continue different texts, so nothing after it is
/// compared. The packed kernels' bound (4e-3) allows such ties: on the suite's passage
/// under lazy-prefill, candle's 16th token differs from libtorch's and ONNX Runtime's.
pub const TIE_LOGITS: f64 = 2.0;

/// Largest relative difference of the passage's perplexity: the mean of 256 token
/// log-probabilities that each differ by ~1e-5.
pub const PERPLEXITY_REL: f64 = 1e-3;

/// The bounds of a pair where one backend rounds its inputs to 16 bits before products
/// with f16 or bf16 matrices (libtorch with `--dtype bf16` or `f16`) and the other
/// multiplies the same 16-bit weights by `f32` inputs (candle and ONNX Runtime, which agree
/// with each other to 6.5e-5 in bf16). bf16 keeps 8 bits of mantissa, so the input of
/// every product moves by up to 2^-9 of itself, 210 times per token. Measured on the whole
/// suite in bf16 (`cargo xtask parity --dtype bf16`): logits up to 0.96 apart, cosine down
/// to 0.99914, kept-position Jaccard down to 0.985 with few layers identical, greedy
/// tokens agreeing for 7 to 32, perplexity up to 2.1% apart, and budgets that follow the
/// scores (`adaptive`) keeping up to 14 token-layers more or fewer. These bounds leave
/// about twice that room. A wrong layout, mask or kind still breaks them at once: it
/// turns the cosine below 0.9 and the kept positions into others.
pub const HALF_PRODUCTS: Bounds = Bounds {
    logits_max_abs: 2.0,
    logits_cosine_min: 0.998,
    kept_exact_min: 0.0,
    kept_jaccard_min: 0.97,
    generation_prefix_min: 4,
    perplexity_rel: 4e-2,
    kv_bytes_rel: 1e-2,
};

/// The bounds one comparison is held to.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Bounds {
    /// Largest |difference| of the final position's logits.
    pub logits_max_abs: f64,
    /// Smallest cosine similarity of the final position's logits.
    pub logits_cosine_min: f64,
    /// Smallest fraction of layers whose kept positions are identical.
    pub kept_exact_min: f64,
    /// Smallest mean Jaccard index of the kept positions per layer.
    pub kept_jaccard_min: f64,
    /// Greedy tokens that must agree before the first difference.
    pub generation_prefix_min: usize,
    /// Largest relative difference of the passage's perplexity.
    pub perplexity_rel: f64,
    /// Largest relative difference of the KV bytes kept (0: equal, [`KV_BYTES_REL`]).
    pub kv_bytes_rel: f64,
}

impl Bounds {
    /// The bounds of a pair: `packed` when the weights are packed blocks (f16 and bf16
    /// included), `half_products` when either backend rounds its inputs to 16 bits for
    /// products with f16 or bf16 matrices and the weights have such matrices.
    pub fn of(packed: bool, half_products: bool) -> Self {
        if half_products {
            return HALF_PRODUCTS;
        }
        Bounds {
            logits_max_abs: if packed { LOGITS_MAX_ABS_PACKED } else { LOGITS_MAX_ABS },
            logits_cosine_min: LOGITS_COSINE_MIN,
            kept_exact_min: KEPT_EXACT_MIN,
            kept_jaccard_min: KEPT_JACCARD_MIN,
            generation_prefix_min: GENERATION_PREFIX_MIN,
            perplexity_rel: PERPLEXITY_REL,
            kv_bytes_rel: KV_BYTES_REL,
        }
    }
}

/// KV bytes after prefill and generation must be equal (relative difference 0): they count
/// the entries kept, which the kept-positions check already compares; any difference is a
/// bookkeeping bug.
pub const KV_BYTES_REL: f64 = 0.0;
