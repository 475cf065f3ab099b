use std::fmt;
use std::path::PathBuf;

use digest::{CacheKey, Sha256};

/// The `recipe` of a layer no single recipe owns: a base's first boot (cloud-init done), which
/// every recipe on that base with the same disk and machine builds its first step on. `cache rm`
/// of one recipe leaves it for the others, and `--keep` does not count it as a recipe's step.
pub const SHARED_RECIPE: &str = "(shared)";

/// The record published beside a layer file (`layers/<key>.json`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LayerMeta {
    /// This checkpoint's key.
    pub key: CacheKey,
    /// The key of the layer this one is backed by; `None` for the first step (backed by the base).
    pub parent: Option<CacheKey>,
    /// The chain's root key (base image + disk size + seed inputs).
    pub root: CacheKey,
    /// The layer's file name inside `layers/`.
    pub file: String,
    /// The backing file written in the layer's qcow2 header.
    pub backing: PathBuf,
    /// sha256 of the layer file, taken when it was published (hex in the JSON).
    pub sha256: Sha256,
    /// Apparent size of the layer file in bytes.
    pub size: u64,
    /// The recipe that made it.
    pub recipe: String,
    /// The step id (`04`).
    pub step_id: String,
    /// The step's name (`04-nvidia-driver`).
    pub step_name: String,
    /// When it was published (seconds since the Unix epoch).
    pub created_unix: u64,
}

/// A published, verified layer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layer {
    /// Absolute path of the qcow2 layer file.
    pub path: PathBuf,
    /// Its record.
    pub meta: LayerMeta,
}

/// Why a checkpoint was thrown away instead of being used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Discarded {
    /// A layer file without a record: its build was cut off before publishing it.
    Incomplete {
        /// The key the layer was being written for.
        key: String,
        /// The file that was removed.
        file: PathBuf,
    },
    /// The record names a file that is gone.
    Missing {
        /// The layer's key.
        key: CacheKey,
        /// The missing file.
        file: PathBuf,
    },
    /// The layer file no longer hashes to its recorded digest.
    Corrupt {
        /// The layer's key.
        key: CacheKey,
        /// Digest in the record.
        expected: Sha256,
        /// Digest of the file now.
        actual: Sha256,
    },
    /// The record is unreadable.
    BadRecord {
        /// The record file.
        file: PathBuf,
        /// What was wrong.
        reason: String,
    },
}

impl fmt::Display for Discarded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Incomplete { key, file } => write!(
                f,
                "checkpoint {} was cut off before it was complete; removed {}",
                &key[..key.len().min(12)],
                file.display()
            ),
            Self::Missing { key, file } => {
                write!(
                    f,
                    "checkpoint {} lost its layer file {}",
                    key.short(),
                    file.display()
                )
            }
            Self::Corrupt {
                key,
                expected,
                actual,
            } => write!(
                f,
                "checkpoint {} is corrupt (sha256 {actual}, recorded {expected}); it will be rebuilt",
                key.short()
            ),
            Self::BadRecord { file, reason } => {
                write!(
                    f,
                    "checkpoint record {} is unreadable ({reason})",
                    file.display()
                )
            }
        }
    }
}

/// The result of looking a key up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// A published layer whose file still matches its digest.
    Hit(Layer),
    /// Nothing published under the key.
    Miss,
    /// Something was published but is unusable; it has been removed.
    Discarded(Discarded),
}

/// The key a file in `layers/` is named for: only the canonical lower-case hex form counts,
/// so a stray name never aliases a key.
pub(crate) fn key_from_name(name: &str) -> Option<CacheKey> {
    let key: CacheKey = name.parse().ok()?;
    (key.to_string() == name).then_some(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_only_lowercase_sha256_hex() {
        let good = "a".repeat(64);
        assert_eq!(key_from_name(&good).unwrap().to_string(), good);
        for bad in [
            "",
            "abc",
            &"A".repeat(64),
            &"g".repeat(64),
            &"a".repeat(65),
            "../etc/passwd",
        ] {
            assert!(key_from_name(bad).is_none(), "{bad:?} accepted");
        }
    }
}
