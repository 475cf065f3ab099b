//! Hashing files. Holes (found with `SEEK_DATA`/`SEEK_HOLE`) are fed from a static zero
//! buffer instead of being read, so a sparse 25 GB RAW hashes at the speed of its data; the
//! digest is the same as `sha256sum`'s.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::{Hasher, Sha256};

const CHUNK: usize = 8 << 20;
static ZEROS: [u8; 1 << 20] = [0u8; 1 << 20];

/// Hashing a file failed.
#[derive(Debug, thiserror::Error)]
pub enum HashError {
    /// Reading the file failed.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The file is shorter than the prefix asked for.
    #[error("{path} is {len} bytes, expected at least {want}")]
    TooShort {
        /// The file.
        path: PathBuf,
        /// Its length.
        len: u64,
        /// The prefix asked for.
        want: u64,
    },
    /// `stop` answered true.
    #[error("hashing {path} was cancelled")]
    Cancelled {
        /// The file.
        path: PathBuf,
    },
}

/// The SHA-256 of a whole file. Blocking: call it from `spawn_blocking` in async code.
pub fn hash_file(path: &Path) -> Result<Sha256, HashError> {
    let mut hasher = Hasher::new();
    hasher.update_from_file(path, None, &|| false, &mut |_, _| {})?;
    Ok(hasher.finish())
}

impl Hasher {
    /// Feeds the first `limit` bytes of `path` (all of it when `None`), calling
    /// `progress(done, total)` after each chunk and checking `stop` before each. Returns the
    /// number of bytes fed. Blocking.
    pub fn update_from_file(
        &mut self,
        path: &Path,
        limit: Option<u64>,
        stop: &dyn Fn() -> bool,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<u64, HashError> {
        let read_err = |source| HashError::Read {
            path: path.to_owned(),
            source,
        };
        let file = File::open(path).map_err(read_err)?;
        let file_len = file.metadata().map_err(read_err)?.len();
        let len = match limit {
            Some(want) if want > file_len => {
                return Err(HashError::TooShort {
                    path: path.to_owned(),
                    len: file_len,
                    want,
                });
            }
            Some(want) => want,
            None => file_len,
        };
        let mut buf = vec![0u8; CHUNK];
        let mut pos = 0u64;
        while pos < len {
            let Some((start, end)) = next_data(&file, pos, len).map_err(read_err)? else {
                self.feed_zeros(len - pos);
                break;
            };
            self.feed_zeros(start - pos);
            pos = start;
            while pos < end {
                if stop() {
                    return Err(HashError::Cancelled {
                        path: path.to_owned(),
                    });
                }
                let take = (end - pos).min(CHUNK as u64) as usize;
                file.read_exact_at(&mut buf[..take], pos)
                    .map_err(read_err)?;
                self.update(&buf[..take]);
                pos += take as u64;
                progress(pos, len);
            }
        }
        progress(len, len);
        Ok(len)
    }

    fn feed_zeros(&mut self, mut n: u64) {
        while n > 0 {
            let take = n.min(ZEROS.len() as u64) as usize;
            self.update(&ZEROS[..take]);
            n -= take as u64;
        }
    }
}

/// The next data region at or after `pos`: `Some((start, end))`, `None` at the end.
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
        assert_eq!(hash_file(&path).unwrap(), Sha256::of(&bytes));

        let mut h = Hasher::new();
        let mut calls = 0;
        let n = h
            .update_from_file(&path, Some(4 << 20), &|| false, &mut |_, _| calls += 1)
            .unwrap();
        assert_eq!(n, 4 << 20);
        assert_eq!(h.finish(), Sha256::of(&bytes[..4 << 20]));
        assert!(calls >= 1);

        let cancelled = Hasher::new().update_from_file(&path, None, &|| true, &mut |_, _| {});
        assert!(matches!(cancelled, Err(HashError::Cancelled { .. })));
        let short =
            Hasher::new().update_from_file(&path, Some(50 << 20), &|| false, &mut |_, _| {});
        assert!(matches!(short, Err(HashError::TooShort { .. })));
        assert!(matches!(
            hash_file(&dir.path().join("missing")),
            Err(HashError::Read { .. })
        ));
    }
}
