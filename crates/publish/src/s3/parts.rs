//! Splitting an image into parts, reading them, hashing the whole file.

use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use crate::{Error, Result};
use digest::{Hasher, Sha256};

/// S3's smallest part (all but the last).
pub(crate) const MIN_PART: u64 = 5 << 20;
/// S3's largest part.
pub(crate) const MAX_PART: u64 = 5 << 30;
/// S3's largest part count.
pub(crate) const MAX_PARTS: u64 = 10_000;

/// Part size and count for `size` bytes: `wanted` if that needs at most 10000 parts, otherwise
/// the smallest whole number of MiB that does.
pub(crate) fn plan(path: &Path, size: u64, wanted: u64) -> Result<(u64, u32)> {
    let mut part_size = wanted.clamp(MIN_PART, MAX_PART);
    if size.div_ceil(part_size) > MAX_PARTS {
        part_size = size.div_ceil(MAX_PARTS).div_ceil(1 << 20) << 20;
    }
    if part_size > MAX_PART {
        return Err(Error::ImageTooLarge {
            path: path.to_owned(),
            size,
        });
    }
    let parts =
        u32::try_from(size.div_ceil(part_size).max(1)).map_err(|_| Error::ImageTooLarge {
            path: path.to_owned(),
            size,
        })?;
    Ok((part_size, parts))
}

/// Reads part `number` (1-based) and returns it with its hex sha256 (for the signature).
pub(crate) async fn read(
    file: &Arc<std::fs::File>,
    path: &Path,
    number: u32,
    part_size: u64,
    size: u64,
) -> Result<(Bytes, String)> {
    let offset = u64::from(number - 1) * part_size;
    let len = part_size.min(size - offset);
    let file = Arc::clone(file);
    let read_error = |source| Error::ReadImage {
        path: path.to_owned(),
        source,
    };
    let joined = tokio::task::spawn_blocking(move || -> std::io::Result<(Bytes, String)> {
        let mut buf = vec![0u8; usize::try_from(len).map_err(std::io::Error::other)?];
        file.read_exact_at(&mut buf, offset)?;
        let digest = Sha256::of(&buf).to_hex();
        Ok((Bytes::from(buf), digest))
    })
    .await
    .map_err(|e| read_error(std::io::Error::other(e)))?;
    joined.map_err(read_error)
}

/// Hashes the whole image, reporting `(done, total)` after each block. Stops at cancellation.
pub(crate) async fn hash_file(
    path: &Path,
    size: u64,
    report: &(dyn Fn(u64, u64) + Send + Sync),
    cancel: &CancellationToken,
) -> Result<Option<Sha256>> {
    const BLOCK: usize = 16 << 20;
    let read_error = |source| Error::ReadImage {
        path: path.to_owned(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(read_error)?;
    let mut hasher = Hasher::new();
    let mut done = 0u64;
    let mut buf = vec![0u8; BLOCK];
    loop {
        if cancel.is_cancelled() {
            return Ok(None);
        }
        // Each block is read and hashed on the blocking pool, so the runtime stays responsive.
        let (f, b, h, n) = tokio::task::spawn_blocking(move || {
            let n = read_full(&mut file, &mut buf);
            if let Ok(n) = n {
                hasher.update(&buf[..n]);
            }
            (file, buf, hasher, n)
        })
        .await
        .map_err(|e| read_error(std::io::Error::other(e)))?;
        (file, buf, hasher) = (f, b, h);
        let n = n.map_err(read_error)?;
        if n == 0 {
            break;
        }
        done += n as u64;
        report(done, size.max(done));
    }
    Ok(Some(hasher.finish()))
}

fn read_full(file: &mut std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_parts_within_s3_limits() {
        let p = Path::new("x");
        assert_eq!(plan(p, 1, 64 << 20).unwrap(), (64 << 20, 1));
        assert_eq!(plan(p, 12 << 20, 5 << 20).unwrap(), (5 << 20, 3));
        assert_eq!(plan(p, 10 << 20, 5 << 20).unwrap(), (5 << 20, 2));
        // Too small a wish is raised to S3's minimum.
        assert_eq!(plan(p, 12 << 20, 1).unwrap(), (5 << 20, 3));
        // 1 TiB at 64 MiB would be 16384 parts: the size grows to fit 10000.
        let (size, parts) = plan(p, 1 << 40, 64 << 20).unwrap();
        assert!(parts <= 10_000 && size % (1 << 20) == 0, "{size} {parts}");
        assert!(size * u64::from(parts) >= 1 << 40);
        assert!(matches!(
            plan(p, 60 << 40, 64 << 20),
            Err(Error::ImageTooLarge { .. })
        ));
    }

    #[tokio::test]
    async fn reads_parts_and_hashes_like_sha256sum() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("img");
        let data: Vec<u8> = (0..(11u32 << 20)).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let file = Arc::new(std::fs::File::open(&path).unwrap());
        let size = data.len() as u64;
        let (last, digest) = read(&file, &path, 3, 5 << 20, size).await.unwrap();
        assert_eq!(&last[..], &data[10 << 20..]);
        assert_eq!(digest, Sha256::of(&data[10 << 20..]).to_hex());
        let seen = std::sync::Mutex::new(Vec::new());
        let whole = hash_file(
            &path,
            size,
            &|d, t| seen.lock().unwrap().push((d, t)),
            &CancellationToken::new(),
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!(whole, Sha256::of(&data));
        assert_eq!(seen.lock().unwrap().last(), Some(&(size, size)));
        let cancel = CancellationToken::new();
        cancel.cancel();
        assert!(
            hash_file(&path, size, &|_, _| {}, &cancel)
                .await
                .unwrap()
                .is_none()
        );
    }
}
