//! The SHA-256 digest newtype and hashing of files already on disk.

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};

/// A SHA-256 digest. Displays as 64 lower-case hex digits (no `sha256:` prefix).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sha256Digest(pub [u8; 32]);

impl Sha256Digest {
    /// The 64 lower-case hex digits.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses exactly 64 hex digits (either case).
    pub fn from_hex(text: &str) -> Option<Self> {
        let mut out = [0u8; 32];
        (text.len() == 64 && hex::decode_to_slice(text, &mut out).is_ok()).then_some(Self(out))
    }

    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Self(Sha256::digest(bytes).into())
    }

    pub(crate) fn from_hasher(hasher: Sha256) -> Self {
        Self(hasher.finalize().into())
    }
}

impl fmt::Display for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.to_hex())
    }
}

impl FromStr for Sha256Digest {
    type Err = Error;

    /// Accepts `<64 hex>` or `sha256:<64 hex>`.
    fn from_str(text: &str) -> Result<Self> {
        let hex = text.strip_prefix("sha256:").unwrap_or(text);
        Self::from_hex(hex).ok_or_else(|| Error::BadChecksum {
            spec: text.to_owned(),
            reason: "expected 64 hex digits",
        })
    }
}

/// Read size for hashing files: large enough that syscalls do not matter next to SHA-256.
const READ_CHUNK: usize = 1 << 20;

/// Feeds the first `limit` bytes of `path` (all of it when `None`) into `hasher` on a blocking
/// thread, calling `progress(done)` from the caller's task now and then. Returns the hasher and
/// the number of bytes read. Cancelling stops the reader within one chunk.
pub(crate) async fn hash_file_into(
    path: &Path,
    limit: Option<u64>,
    hasher: Sha256,
    progress: &(dyn Fn(u64) + Send + Sync),
    cancel: &CancellationToken,
) -> Result<(Sha256, u64)> {
    let (tx, mut rx) = tokio::sync::watch::channel(0u64);
    let stop = Arc::new(AtomicBool::new(false));
    let owned: PathBuf = path.to_owned();
    let stop_reader = stop.clone();
    let mut job = tokio::task::spawn_blocking(move || {
        hash_blocking(&owned, limit, hasher, &tx, &stop_reader)
    });
    let mut sender_gone = false;
    loop {
        tokio::select! {
            () = cancel.cancelled() => {
                stop.store(true, Ordering::Relaxed);
                return Err(Error::Cancelled);
            }
            changed = rx.changed(), if !sender_gone => match changed {
                Ok(()) => progress(*rx.borrow_and_update()),
                Err(_) => sender_gone = true,
            },
            joined = &mut job => {
                let (hasher, done) = finish(joined, path)?;
                // The last value may not have been seen above: always end at 100 %.
                progress(done);
                return Ok((hasher, done));
            }
        }
    }
}

fn finish(
    joined: std::result::Result<std::io::Result<(Sha256, u64)>, tokio::task::JoinError>,
    path: &Path,
) -> Result<(Sha256, u64)> {
    let read = joined.map_err(|join| std::io::Error::other(join.to_string()));
    read.and_then(|inner| inner)
        .map_err(|source| Error::ReadLocal {
            path: path.to_owned(),
            source,
        })
}

fn hash_blocking(
    path: &Path,
    limit: Option<u64>,
    mut hasher: Sha256,
    progress: &tokio::sync::watch::Sender<u64>,
    stop: &AtomicBool,
) -> std::io::Result<(Sha256, u64)> {
    let file = std::fs::File::open(path)?;
    let mut reader = file.take(limit.unwrap_or(u64::MAX));
    let mut buf = vec![0u8; READ_CHUNK];
    let mut done = 0u64;
    loop {
        if stop.load(Ordering::Relaxed) {
            return Err(std::io::Error::other("cancelled"));
        }
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        done += n as u64;
        progress.send_replace(done);
    }
    if let Some(want) = limit
        && done != want
    {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("file is {done} bytes, expected at least {want}"),
        ));
    }
    Ok((hasher, done))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_and_prefix() {
        let d = Sha256Digest::of(b"abc");
        assert_eq!(
            d.to_hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(d.to_hex().parse::<Sha256Digest>().unwrap(), d);
        assert_eq!(format!("sha256:{d}").parse::<Sha256Digest>().unwrap(), d);
        assert_eq!(
            d.to_hex().to_uppercase().parse::<Sha256Digest>().unwrap(),
            d
        );
    }

    #[test]
    fn bad_hex_is_an_error_not_a_panic() {
        for bad in [
            "",
            "abc",
            "sha256:",
            &"g".repeat(64),
            &"a".repeat(63),
            &"a".repeat(65),
        ] {
            assert!(bad.parse::<Sha256Digest>().is_err(), "{bad:?}");
        }
    }

    #[tokio::test]
    async fn hashes_a_file_and_a_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let cancel = CancellationToken::new();
        let (h, n) = hash_file_into(&path, None, Sha256::new(), &|_| {}, &cancel)
            .await
            .unwrap();
        assert_eq!(n, data.len() as u64);
        assert_eq!(Sha256Digest::from_hasher(h), Sha256Digest::of(&data));
        let (h, n) = hash_file_into(&path, Some(1000), Sha256::new(), &|_| {}, &cancel)
            .await
            .unwrap();
        assert_eq!(n, 1000);
        assert_eq!(
            Sha256Digest::from_hasher(h),
            Sha256Digest::of(&data[..1000])
        );
        // A prefix longer than the file is an error.
        let err = hash_file_into(&path, Some(10_000_000), Sha256::new(), &|_| {}, &cancel).await;
        assert!(matches!(err, Err(Error::ReadLocal { .. })));
    }
}
