use std::fmt;
use std::str::FromStr;

use crate::Error;

/// A checkpoint key: the sha256 (64 lower-case hex digits) that names a step's disk state.
#[derive(
    Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(try_from = "String", into = "String")]
pub struct LayerKey(String);

impl LayerKey {
    /// The key as hex.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A short form for messages (first 12 digits).
    pub fn short(&self) -> &str {
        &self.0[..12]
    }
}

impl FromStr for LayerKey {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        let ok = s.len() == 64
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(Error::InvalidKey(s.to_owned()))
        }
    }
}

impl TryFrom<String> for LayerKey {
    type Error = Error;

    fn try_from(s: String) -> Result<Self, Error> {
        s.parse()
    }
}

impl From<LayerKey> for String {
    fn from(key: LayerKey) -> String {
        key.0
    }
}

impl fmt::Display for LayerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_only_lowercase_sha256_hex() {
        let good = "a".repeat(64);
        assert_eq!(good.parse::<LayerKey>().unwrap().as_str(), good);
        for bad in [
            "",
            "abc",
            &"A".repeat(64),
            &"g".repeat(64),
            &"a".repeat(65),
            "../etc/passwd",
        ] {
            assert!(bad.parse::<LayerKey>().is_err(), "{bad:?} accepted");
        }
    }
}
