//! The `Sha256Digest` newtype.

use std::fmt;
use std::str::FromStr;

/// A sha256 digest, shown and parsed as 64 lower-case hex digits (an optional `sha256:` prefix
/// is accepted when parsing).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Sha256Digest([u8; 32]);

impl Sha256Digest {
    /// Wraps raw digest bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The lower-case hex form.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Display for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sha256Digest({})", self.to_hex())
    }
}

/// Why a string is not a sha256 digest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected 64 hex digits, got {given:?}")]
pub struct ParseDigestError {
    given: String,
}

impl FromStr for Sha256Digest {
    type Err = ParseDigestError;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        let hex_part = s.strip_prefix("sha256:").unwrap_or(s);
        let mut out = [0u8; 32];
        match hex::decode_to_slice(hex_part, &mut out) {
            Ok(()) => Ok(Self(out)),
            Err(_) => Err(ParseDigestError {
                given: s.chars().take(80).collect(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_and_prefixed_hex() {
        let hex = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let plain: Sha256Digest = hex.parse().unwrap();
        let prefixed: Sha256Digest = format!("sha256:{hex}").parse().unwrap();
        assert_eq!(plain, prefixed);
        assert_eq!(plain.to_string(), hex);
        let upper: Sha256Digest = hex.to_uppercase().parse().unwrap();
        assert_eq!(upper, plain);
    }

    #[test]
    fn rejects_wrong_length_and_non_hex() {
        assert!("abc".parse::<Sha256Digest>().is_err());
        assert!("zz".repeat(32).parse::<Sha256Digest>().is_err());
        assert!("".parse::<Sha256Digest>().is_err());
    }
}
