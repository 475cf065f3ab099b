//! SHA-256 digests and cache keys.

use std::fmt;
use std::str::FromStr;

use serde::Serialize;
use sha2::Digest as _;

/// A SHA-256 digest (32 bytes), shown and read as 64 lower-case hex digits.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Sha256([u8; 32]);

impl Sha256 {
    /// Wraps raw digest bytes.
    pub const fn from_bytes(bytes: [u8; 32]) -> Sha256 {
        Sha256(bytes)
    }
    /// The raw bytes.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
    /// The digest of `data`.
    pub fn of(data: &[u8]) -> Sha256 {
        Sha256(sha2::Sha256::digest(data).into())
    }
}

impl fmt::Display for Sha256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for Sha256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sha256({self})")
    }
}

/// A string that is not 64 hex digits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a sha256 digest (64 hex digits)")]
pub struct BadSha256(pub String);

impl FromStr for Sha256 {
    type Err = BadSha256;
    /// 64 hex digits, either case.
    fn from_str(s: &str) -> Result<Self, BadSha256> {
        let mut bytes = [0u8; 32];
        if s.len() != 64 {
            return Err(BadSha256(s.to_owned()));
        }
        hex::decode_to_slice(s, &mut bytes).map_err(|_| BadSha256(s.to_owned()))?;
        Ok(Sha256(bytes))
    }
}

impl Serialize for Sha256 {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A checkpoint cache key (a SHA-256, shown as hex). See [`crate::CheckpointChain`].
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct CacheKey(pub Sha256);

impl fmt::Display for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Debug for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CacheKey({})", self.0)
    }
}

impl FromStr for CacheKey {
    type Err = BadSha256;
    fn from_str(s: &str) -> Result<Self, BadSha256> {
        s.parse().map(CacheKey)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip() {
        let d = Sha256::of(b"abc");
        assert_eq!(
            d.to_string(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(d.to_string().to_uppercase().parse::<Sha256>(), Ok(d));
        assert!("abc".parse::<Sha256>().is_err());
        assert!("zz".repeat(32).parse::<Sha256>().is_err());
    }
}
