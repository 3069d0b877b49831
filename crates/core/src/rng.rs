//! A tiny deterministic generator (SplitMix64) so that seeded scores are identical on
//! every backend and platform, without depending on a random-number crate's versioned
//! algorithms.

/// SplitMix64 generator (Steele, Lea and Flood, 2014).
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// A generator for one use of a seed: the same seed gives independent streams for
    /// different `(a, b)`, e.g. a layer index and a step.
    pub fn for_stream(seed: u64, a: u64, b: u64) -> Self {
        let mut g = Self(seed ^ a.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let x = g.next_u64() ^ b.wrapping_mul(0xD1B5_4A32_D192_ED03);
        Self(x)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A uniform value in `[0, 1)` with 24 random bits (exact in `f32`).
    pub fn next_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_published_sequence() {
        // First outputs of SplitMix64 seeded with 0.
        let mut g = SplitMix64::new(0);
        assert_eq!(g.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(g.next_u64(), 0x6E78_9E6A_A1B9_65F4);
    }

    #[test]
    fn floats_are_in_unit_interval() {
        let mut g = SplitMix64::for_stream(7, 3, 1);
        for _ in 0..1000 {
            let x = g.next_f32();
            assert!((0.0..1.0).contains(&x));
        }
    }
}
