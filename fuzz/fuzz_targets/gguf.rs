//! Any bytes handed to the GGUF loader give a model or an error, never a panic, a hang or
//! an allocation the file's size does not justify.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = sieve_engine::model::load_gguf_bytes(data);
});
