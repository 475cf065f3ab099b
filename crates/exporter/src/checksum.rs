//! SHA-256 of (sparse) files and the `SHA256SUMS` file.
//!
//! Holes are found with `SEEK_DATA`/`SEEK_HOLE` and hashed from a static zero buffer instead of
//! being read; data is read with large `pread`s. The digest is the same as `sha256sum`'s.

use std::fmt;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::Digest;
use tokio_util::sync::CancellationToken;

use crate::{Error, Result};

/// A SHA-256 digest.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub struct Sha256(pub [u8; 32]);

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

impl From<Sha256> for String {
    fn from(s: Sha256) -> String {
        s.to_string()
    }
}

impl TryFrom<String> for Sha256 {
    type Error = hex::FromHexError;
    fn try_from(s: String) -> std::result::Result<Self, Self::Error> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s.trim(), &mut out)?;
        Ok(Sha256(out))
    }
}

const CHUNK: usize = 8 << 20;
static ZEROS: [u8; 1 << 20] = [0u8; 1 << 20];

/// Finds the next data region at or after `pos`: `Some((start, end))`, `None` at the end.
/// Filesystems without `SEEK_DATA` report everything as data.
fn next_data(file: &File, pos: u64, len: u64) -> io::Result<Option<(u64, u64)>> {
    use rustix::fs::{SeekFrom, seek};
    let start = match seek(file, SeekFrom::Data(pos)) {
        Ok(s) => s,
        Err(rustix::io::Errno::NXIO) => return Ok(None),
        Err(rustix::io::Errno::INVAL | rustix::io::Errno::NOTSUP) => {
            return Ok((pos < len).then_some((pos, len)));
        }
        Err(e) => return Err(e.into()),
    };
    if start >= len {
        return Ok(None);
    }
    let end = match seek(file, SeekFrom::Hole(start)) {
        Ok(e) => e.min(len),
        Err(rustix::io::Errno::INVAL | rustix::io::Errno::NOTSUP) => len,
        Err(e) => return Err(e.into()),
    };
    Ok(Some((start, end)))
}

fn feed_zeros(hasher: &mut sha2::Sha256, mut n: u64) {
    while n > 0 {
        let take = n.min(ZEROS.len() as u64) as usize;
        hasher.update(&ZEROS[..take]);
        n -= take as u64;
    }
}

/// Hashes `path`, calling `progress(done, total)` after each chunk. Stops with
/// [`Error::Cancelled`] once `cancel` fires. Blocking.
pub fn sha256_file(
    path: &Path,
    progress: &mut dyn FnMut(u64, u64),
    cancel: &CancellationToken,
) -> Result<Sha256> {
    let err = |source| Error::Hash {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(err)?;
    let len = file.metadata().map_err(err)?.len();
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut pos = 0u64;
    while pos < len {
        if cancel.is_cancelled() {
            return Err(Error::Cancelled {
                path: path.to_path_buf(),
            });
        }
        let Some((start, end)) = next_data(&file, pos, len).map_err(err)? else {
            feed_zeros(&mut hasher, len - pos);
            break;
        };
        feed_zeros(&mut hasher, start - pos);
        pos = start;
        while pos < end {
            if cancel.is_cancelled() {
                return Err(Error::Cancelled {
                    path: path.to_path_buf(),
                });
            }
            let take = (end - pos).min(CHUNK as u64) as usize;
            file.read_exact_at(&mut buf[..take], pos).map_err(err)?;
            hasher.update(&buf[..take]);
            pos += take as u64;
            progress(pos, len);
        }
    }
    progress(len, len);
    Ok(Sha256(hasher.finalize().into()))
}

/// Writes `SHA256SUMS` in `dir` (atomically) in the format `sha256sum -c` reads:
/// `<hex>  <file name>` per line, sorted by name.
pub fn write_sha256sums(dir: &Path, entries: &[(String, Sha256)]) -> Result<std::path::PathBuf> {
    let mut sorted: Vec<&(String, Sha256)> = entries.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    let text: String = sorted
        .iter()
        .map(|(name, sum)| format!("{sum}  {name}\n"))
        .collect();
    let path = dir.join("SHA256SUMS");
    crate::write_atomically(&path, text.as_bytes())?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Seek, Write};

    #[test]
    fn sparse_file_hash_matches_plain_hash() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sparse");
        let mut f = File::create(&path).unwrap();
        f.set_len(40 << 20).unwrap();
        f.seek(io::SeekFrom::Start(3 << 20)).unwrap();
        f.write_all(&[7u8; 5000]).unwrap();
        f.seek(io::SeekFrom::Start(30 << 20)).unwrap();
        f.write_all(b"tail data").unwrap();
        drop(f);
        let bytes = std::fs::read(&path).unwrap();
        let want: [u8; 32] = sha2::Sha256::digest(&bytes).into();
        let mut calls = 0;
        let got = sha256_file(&path, &mut |_, _| calls += 1, &CancellationToken::new()).unwrap();
        assert_eq!(got.0, want);
        assert!(calls >= 1);
        let cancelled = CancellationToken::new();
        cancelled.cancel();
        assert!(matches!(
            sha256_file(&path, &mut |_, _| {}, &cancelled),
            Err(Error::Cancelled { .. })
        ));
    }

    #[test]
    fn sha256_round_trips_through_text() {
        let s = Sha256([0xab; 32]);
        let text: String = s.into();
        assert_eq!(Sha256::try_from(text).unwrap(), s);
        assert!(Sha256::try_from("zz".to_string()).is_err());
    }
}
