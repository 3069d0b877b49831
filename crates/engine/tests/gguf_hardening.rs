//! Malformed GGUF input to the loader: an error naming what is wrong, never a panic. The
//! cases come from reading candle's GGUF reader and from the `gguf` fuzz target
//! (`cargo xtask fuzz`); each one crashed or misbehaved before the check that now catches it.

use sieve_engine::model::load_gguf_bytes;
use sieve_engine::testing::{TinyGguf, Value, patch_tensor_info};

fn tiny() -> TinyGguf {
    TinyGguf::llama().unwrap()
}

fn error_of(bytes: &[u8]) -> String {
    match load_gguf_bytes(bytes) {
        Ok(m) => panic!("loaded a model from broken input: {:?}", m.config),
        Err(e) => e.to_string(),
    }
}

#[test]
fn the_tiny_model_loads() {
    let m = load_gguf_bytes(&tiny().to_bytes().unwrap()).unwrap();
    assert_eq!(m.config.n_layers, 1);
    assert_eq!(m.weights.layers[0].q.shape, vec![32, 32]);
}

#[test]
fn a_zero_or_odd_alignment_is_an_error() {
    // candle divides the header's end by `general.alignment`: zero panicked.
    for (value, shown) in [(Value::U32(0), "= 0"), (Value::U8(3), "= 3"), (Value::I32(48), "= 48")] {
        let mut g = tiny();
        g.set("general.alignment", value);
        let err = error_of(&g.to_bytes().unwrap());
        assert!(err.contains("`general.alignment`") && err.contains(shown), "{err}");
    }
    // A negative or non-integer alignment means the default, as in candle.
    let mut g = tiny();
    g.set("general.alignment", Value::I16(-1));
    load_gguf_bytes(&g.to_bytes().unwrap()).unwrap();
}

#[test]
fn shapes_whose_element_count_overflows_are_errors() {
    // The element count of [2^40, 2^40] overflows usize: it panicked with overflow checks
    // on, and wrapped to zero without them.
    for (dims, error) in [(1 << 40, "runs past the end"), (u64::MAX, "has the impossible shape")] {
        let mut bytes = tiny().to_bytes().unwrap();
        assert!(patch_tensor_info(&mut bytes, "output_norm.weight", Some(&[dims]), None));
        let err = error_of(&bytes);
        assert!(err.contains("`output_norm.weight`") && err.contains(error), "{err}");
    }
    let mut bytes = tiny().to_bytes().unwrap();
    assert!(patch_tensor_info(&mut bytes, "blk.0.ffn_up.weight", Some(&[1 << 40, 1 << 40]), None));
    assert!(error_of(&bytes).contains("`blk.0.ffn_up.weight` has the impossible shape"));
}

#[test]
fn empty_tensors_are_errors() {
    // Found by the fuzzer: candle read the empty data of a tensor with a zero dimension
    // through an unaligned pointer (undefined behaviour, caught by debug assertions).
    for (name, dims) in [("output_norm.weight", &[0][..]), ("blk.0.attn_v.weight", &[0, 32])] {
        let mut bytes = tiny().to_bytes().unwrap();
        assert!(patch_tensor_info(&mut bytes, name, Some(dims), None));
        let err = error_of(&bytes);
        assert!(err.contains(&format!("tensor `{name}` has the empty shape")), "{err}");
    }
}

#[test]
fn rows_that_are_not_whole_blocks_are_errors() {
    let mut bytes = tiny().to_bytes().unwrap();
    // Same element count, but rows of 16 cannot hold Q8_0 blocks of 32.
    assert!(patch_tensor_info(&mut bytes, "blk.0.attn_k.weight", Some(&[32, 16]), None));
    let err = error_of(&bytes);
    assert!(err.contains("`blk.0.attn_k.weight`") && err.contains("multiple of 32"), "{err}");
}

#[test]
fn truncation_anywhere_is_an_error() {
    let bytes = tiny().to_bytes().unwrap();
    for len in (0..bytes.len()).step_by(97) {
        let err = error_of(&bytes[..len]);
        assert!(err.contains("truncated") || err.contains("too short"), "{len} bytes: {err}");
    }
}

/// The `gguf` fuzz target starts from this model; `SIEVE_BLESS=1` rewrites the committed
/// seed after the synthetic model changes.
#[test]
fn tiny_gguf_fuzz_seed_is_current() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/seeds/tiny-llama.gguf.bin");
    let bytes = tiny().to_bytes().unwrap();
    if std::env::var_os("SIEVE_BLESS").is_some() {
        std::fs::write(&path, &bytes).unwrap();
    }
    let committed = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e} (run with SIEVE_BLESS=1)", path.display()));
    assert!(committed == bytes, "{} is stale; run this test with SIEVE_BLESS=1", path.display());
}

/// What CI runs in place of the `gguf` fuzz target (`cargo xtask fuzz` runs that): every
/// byte of the tiny model changed in three ways, one at a time. Each load gives a model or
/// an error; a panic fails the test.
#[test]
fn every_single_byte_change_loads_or_is_an_error() {
    let bytes = tiny().to_bytes().unwrap();
    let mut mutated = bytes.clone();
    let (mut loaded, mut refused) = (0, 0);
    for at in 0..bytes.len() {
        for value in [bytes[at] ^ 0xff, bytes[at].wrapping_add(1), 0x80] {
            if value == bytes[at] {
                continue;
            }
            mutated[at] = value;
            match load_gguf_bytes(&mutated) {
                Ok(_) => loaded += 1,
                Err(_) => refused += 1,
            }
        }
        mutated[at] = bytes[at];
    }
    // Changes inside the weights' bytes load; changes to the header, the metadata and the
    // tensor table are mostly refused.
    eprintln!("{loaded} loaded, {refused} refused");
    assert!(loaded > 0 && refused > 0, "{loaded} loaded, {refused} refused");
}
