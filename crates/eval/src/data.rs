//! The evaluation text and prompts cut from it.

use std::path::{Path, PathBuf};

use sieve_engine::tokenizer::Tokenizer;

use crate::error::{Error, Result};

/// WikiText-2's test split, the project's evaluation text:
/// `$SIEVE_DATA/wikitext-2/wiki.test.raw`, else the same under `default_data`.
pub fn wikitext_test_split(default_data: &Path) -> PathBuf {
    let dir = std::env::var_os("SIEVE_DATA")
        .filter(|d| !d.is_empty())
        .map_or_else(|| default_data.to_path_buf(), PathBuf::from);
    dir.join("wikitext-2/wiki.test.raw")
}

/// Exactly the first `n` tokens of `text`; an error when it has fewer.
pub fn first_tokens(tokenizer: &Tokenizer, text: &str, n: usize) -> Result<Vec<u32>> {
    let ids = tokenizer.encode_prefix(text, n)?;
    if ids.len() < n {
        return Err(Error::TooShort { available: ids.len(), needed: n });
    }
    Ok(ids)
}

/// Median of `xs` (the mean of the middle two for an even count); 0 when empty.
pub fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(&[]), 0.0);
    }
}
