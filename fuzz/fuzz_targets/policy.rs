//! Any text handed to the policy parser gives a policy or an error, never a panic; a
//! policy that parses computes budgets, selects tokens and round-trips through TOML
//! (`sieve_core::fuzzing::policy_text`).

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = sieve_core::fuzzing::policy_text(data);
});
