//! [`BackendKind`]: a backend's name, whether or not this build contains it.

use std::fmt;
use std::str::FromStr;

/// The backends sieve has. Which of them a build contains is a matter of Cargo features
/// ([`BackendKind::compiled`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BackendKind {
    /// candle (CPU; CUDA with the `cuda` feature).
    Candle,
    /// libtorch through tch.
    Tch,
    /// ONNX Runtime through ort (the library is loaded at run time).
    Ort,
}

impl BackendKind {
    /// Every backend, in the order the parity suite runs them.
    pub const ALL: [BackendKind; 3] = [BackendKind::Candle, BackendKind::Tch, BackendKind::Ort];

    /// The name used on command lines and in reports.
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Candle => "candle",
            BackendKind::Tch => "tch",
            BackendKind::Ort => "ort",
        }
    }

    /// Whether this build contains the backend.
    pub fn compiled(self) -> bool {
        match self {
            BackendKind::Candle => cfg!(feature = "candle"),
            BackendKind::Tch => cfg!(feature = "tch"),
            BackendKind::Ort => cfg!(feature = "ort"),
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for BackendKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        BackendKind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| format!("unknown backend `{s}` (known: candle, tch, ort)"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for kind in BackendKind::ALL {
            assert_eq!(kind.name().parse::<BackendKind>(), Ok(kind));
        }
        assert!("torch".parse::<BackendKind>().is_err());
        assert!(BackendKind::Candle.compiled());
    }
}
