//! Hashing files already on disk, off the async runtime, with progress and cancellation.
//! The hashing itself is [`digest::Hasher::update_from_file`].

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use digest::{HashError, Hasher};
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};

/// Feeds the first `limit` bytes of `path` (all of it when `None`) into `hasher` on a blocking
/// thread, calling `progress(done)` from the caller's task now and then. Returns the hasher and
/// the number of bytes read. Cancelling stops the reader within one chunk.
pub(crate) async fn hash_file_into(
    path: &Path,
    limit: Option<u64>,
    hasher: Hasher,
    progress: &(dyn Fn(u64) + Send + Sync),
    cancel: &CancellationToken,
) -> Result<(Hasher, u64)> {
    let (tx, mut rx) = tokio::sync::watch::channel(0u64);
    let stop = Arc::new(AtomicBool::new(false));
    let owned: PathBuf = path.to_owned();
    let stop_reader = stop.clone();
    let mut job = tokio::task::spawn_blocking(move || {
        let mut hasher = hasher;
        let stop = || stop_reader.load(Ordering::Relaxed);
        let mut report = |done, _total| {
            tx.send_replace(done);
        };
        hasher
            .update_from_file(&owned, limit, &stop, &mut report)
            .map(|done| (hasher, done))
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
    joined: std::result::Result<
        std::result::Result<(Hasher, u64), HashError>,
        tokio::task::JoinError,
    >,
    path: &Path,
) -> Result<(Hasher, u64)> {
    let read_local = |source| Error::ReadLocal {
        path: path.to_owned(),
        source,
    };
    match joined {
        Ok(Ok(done)) => Ok(done),
        Ok(Err(HashError::Cancelled { .. })) => Err(Error::Cancelled),
        Ok(Err(HashError::Read { source, .. })) => Err(read_local(source)),
        Ok(Err(short @ HashError::TooShort { .. })) => Err(read_local(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            short.to_string(),
        ))),
        Err(join) => Err(read_local(std::io::Error::other(join.to_string()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use digest::Sha256;

    #[tokio::test]
    async fn hashes_a_file_and_a_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let cancel = CancellationToken::new();
        let (h, n) = hash_file_into(&path, None, Hasher::new(), &|_| {}, &cancel)
            .await
            .unwrap();
        assert_eq!(n, data.len() as u64);
        assert_eq!(h.finish(), Sha256::of(&data));
        let (h, n) = hash_file_into(&path, Some(1000), Hasher::new(), &|_| {}, &cancel)
            .await
            .unwrap();
        assert_eq!(n, 1000);
        assert_eq!(h.finish(), Sha256::of(&data[..1000]));
        // A prefix longer than the file is an error.
        let err = hash_file_into(&path, Some(10_000_000), Hasher::new(), &|_| {}, &cancel).await;
        assert!(matches!(err, Err(Error::ReadLocal { .. })));
    }
}
