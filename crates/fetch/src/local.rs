//! Local base files: hashed where they are (never copied into the cache), and not hashed again
//! while their stamp is the one recorded after their last good hash.
//!
//! A record is `.local/<sha256 of the absolute path>.json` in the base cache. A record whose
//! file is gone or has changed since is stale: the next fetch of a changed file hashes it and
//! writes a fresh record, and [`BaseCache::sweep_local_records`] (run by `imgbake cache gc`)
//! removes the records of files that are gone.

use std::fs;
use std::path::{Path, PathBuf};

use digest::{Hasher, Sha256};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::cache::{BaseCache, LOCAL};
use crate::error::{Error, Result};
use crate::events::{FetchEvent, HashPurpose};
use crate::fetcher::{CachedBase, Outcome, Progress};
use crate::hash::hash_file_into;
use crate::source::BaseSource;
use crate::stamp::FileStamp;

impl BaseCache {
    /// Where the record of the local base at `path` is kept.
    pub(crate) fn local_record_path(&self, path: &Path) -> PathBuf {
        let key = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
        self.dir().join(LOCAL).join(format!(
            "{}.json",
            Sha256::of(key.as_os_str().as_encoded_bytes()).to_hex()
        ))
    }

    /// Removes (or, with `dry_run`, only names) the records of local base files that no longer
    /// exist, and records that cannot be read. Returns the paths the removed records were
    /// about (the record's own path for an unreadable one). A record of a file that still
    /// exists stays, changed or not: its next fetch replaces it.
    pub fn sweep_local_records(&self, dry_run: bool) -> Result<Vec<PathBuf>> {
        let dir = self.dir().join(LOCAL);
        let read = match fs::read_dir(&dir) {
            Ok(read) => read,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::cache_io("list", dir)(e)),
        };
        let mut swept = Vec::new();
        for item in read {
            let item = item.map_err(Error::cache_io("list", &dir))?;
            let record = item.path();
            if record.extension().is_none_or(|ext| ext != "json") {
                continue;
            }
            let about = match read_record(&record) {
                // A relative path (a record written by hand, or by an older imgbake) cannot be
                // judged from here: it stays.
                Some(r) if r.path.is_relative() || fs::symlink_metadata(&r.path).is_ok() => {
                    continue;
                }
                Some(r) => r.path,
                None => record.clone(),
            };
            if !dry_run {
                match fs::remove_file(&record) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(Error::cache_io("remove", record)(e)),
                }
            }
            swept.push(about);
        }
        swept.sort();
        Ok(swept)
    }
}

fn read_record(path: &Path) -> Option<LocalRecord> {
    serde_json::from_slice(&fs::read(path).ok()?).ok()
}

/// A local base to check: where it is, what it must hash to, and where the record of its last
/// good hash is kept (`None`: hash it whatever the record says).
pub(crate) struct LocalCheck<'a> {
    pub(crate) path: &'a Path,
    pub(crate) source: &'a BaseSource,
    pub(crate) expected: Sha256,
    pub(crate) record: Option<PathBuf>,
}

/// The last good hash of a local base, with the file's stamp at the time.
#[derive(Serialize, Deserialize)]
struct LocalRecord {
    path: PathBuf,
    stamp: FileStamp,
    sha256: Sha256,
}

/// Checks a local base image where it is. It is not copied into the cache, so a later change
/// to the file cannot poison the cache. It is hashed unless its stamp (inode, size, mtime,
/// ctime) is the one recorded after its last good hash: a change moves the stamp and is
/// caught by the next fetch (as a mismatch). Hashing the fixture's 151 MB took 0.2 s of every
/// build.
pub(crate) async fn check_local(
    local: &LocalCheck<'_>,
    progress: Progress<'_>,
    cancel: &CancellationToken,
) -> Result<CachedBase> {
    let path = local.path;
    let read_err = |source| Error::ReadLocal {
        path: path.to_owned(),
        source,
    };
    let before = FileStamp::of(&fs::metadata(path).map_err(read_err)?);
    let recorded = local
        .record
        .as_deref()
        .and_then(read_record)
        .filter(|r| r.path == path && r.stamp == before && r.sha256 == local.expected);
    let trusted = recorded.is_some();
    let (actual, size) = match recorded {
        Some(r) => (r.sha256, before.size()),
        None => {
            let total = before.size();
            let report = |done| {
                progress(FetchEvent::Hashing {
                    purpose: HashPurpose::LocalBase,
                    done,
                    total,
                });
            };
            let (hasher, size) = hash_file_into(path, None, Hasher::new(), &report, cancel).await?;
            (hasher.finish(), size)
        }
    };
    if actual != local.expected {
        return Err(Error::Mismatch {
            location: path.display().to_string(),
            expected: local.expected,
            actual,
        });
    }
    // Recorded after a hash (a trusted record stays as it is), only if the file did not change
    // while it was hashed, and not in the last second (a write in the same clock tick would not
    // show). Best effort: without a record the next fetch hashes again.
    if let Some(record) = &local.record
        && !trusted
        && !before.is_racy()
        && FileStamp::of_path(path) == Some(before)
    {
        let fresh = LocalRecord {
            path: path.to_owned(),
            stamp: before,
            sha256: actual,
        };
        if let Ok(json) = serde_json::to_vec_pretty(&fresh) {
            let _ = crate::cache::write_atomic(record, &json);
        }
    }
    progress(FetchEvent::Verified {
        digest: actual,
        size,
    });
    Ok(CachedBase {
        path: path.to_owned(),
        digest: actual,
        size,
        source: local.source.location.clone(),
        outcome: Outcome::LocalFile,
    })
}
