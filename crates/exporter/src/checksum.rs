//! SHA-256 of (sparse) output files, through [`digest::Hasher::update_from_file`], and the
//! `SHA256SUMS` file.

use std::path::{Path, PathBuf};

use digest::{HashError, Hasher, Sha256};
use tokio_util::sync::CancellationToken;

use crate::{Error, Result};

/// Hashes `path`, calling `progress(done, total)` after each chunk; [`Error::Cancelled`] once
/// `cancel` fires. Blocking.
pub(crate) fn sha256_file(
    path: &Path,
    progress: &mut dyn FnMut(u64, u64),
    cancel: &CancellationToken,
) -> Result<Sha256> {
    let mut hasher = Hasher::new();
    hasher
        .update_from_file(path, None, &|| cancel.is_cancelled(), progress)
        .map_err(|e| match e {
            HashError::Cancelled { path } => Error::Cancelled { path },
            source => Error::Hash {
                path: path.to_path_buf(),
                source,
            },
        })?;
    Ok(hasher.finish())
}

/// Writes `SHA256SUMS` in `dir` (atomically) in the format `sha256sum -c` reads:
/// `<hex>  <file name>` per line, sorted by name.
pub fn write_sha256sums(dir: &Path, entries: &[(String, Sha256)]) -> Result<PathBuf> {
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
    use std::fs::File;
    use std::io::{Seek, SeekFrom, Write};

    #[test]
    fn sparse_file_hash_matches_plain_hash_and_cancels() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sparse");
        let mut f = File::create(&path).unwrap();
        f.set_len(40 << 20).unwrap();
        f.seek(SeekFrom::Start(3 << 20)).unwrap();
        f.write_all(&[7u8; 5000]).unwrap();
        f.seek(SeekFrom::Start(30 << 20)).unwrap();
        f.write_all(b"tail data").unwrap();
        drop(f);
        let want = Sha256::of(&std::fs::read(&path).unwrap());
        let mut calls = 0;
        let got = sha256_file(&path, &mut |_, _| calls += 1, &CancellationToken::new()).unwrap();
        assert_eq!(got, want);
        assert!(calls >= 1);
        let cancelled = CancellationToken::new();
        cancelled.cancel();
        assert!(matches!(
            sha256_file(&path, &mut |_, _| {}, &cancelled),
            Err(Error::Cancelled { .. })
        ));
    }

    #[test]
    fn sha256sums_sorted_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_sha256sums(
            dir.path(),
            &[
                ("b.raw".to_string(), Sha256::of(b"b")),
                ("a.qcow2".to_string(), Sha256::of(b"a")),
            ],
        )
        .unwrap();
        let text = std::fs::read_to_string(path).unwrap();
        assert_eq!(
            text,
            format!(
                "{}  a.qcow2\n{}  b.raw\n",
                Sha256::of(b"a"),
                Sha256::of(b"b")
            )
        );
    }
}
