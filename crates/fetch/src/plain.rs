//! Uncompressed copies of base images: what a build boots its overlay on.
//!
//! Cloud images are qcow2 with zlib-compressed clusters, so a guest booted on an overlay of one
//! decompresses every cluster it reads from the base, under TCG on the same host CPUs that run
//! the guest. [`BaseCache::plain_copy`] makes, once per base digest, a qcow2 of the same
//! content without compression (`qemu-img convert -O qcow2`, no `-c`) and keeps it in the cache
//! next to the base:
//!
//! - `<sha256hex>.plain.qcow2` (read-only) and `<sha256hex>.plain.json` (its size and SHA-256,
//!   the base's source). Content-addressed by the **base's** digest: the same guest-visible
//!   disk, so checkpoint keys (which cover the base digest) are the same whichever file a
//!   build boots on, and a layer backed by the copy finds it at the same path after a remake.
//! - Made under a per-digest lock in `.partial/`, fsynced, renamed into place: a crash or a
//!   concurrent build never exposes half a copy.
//! - A copy whose size differs from its record, whose record is missing, or that
//!   `qemu-img check` rejects is removed and made again; with
//!   [`FetchOptions::verify_cache_hits`](crate::FetchOptions) it is re-hashed too.
//! - [`BaseCache::remove`] removes a base's copy with it; [`BaseCache::plain_copies`] lists them
//!   (also copies of local bases, which are never in the cache themselves).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::cache::{BaseCache, now_rfc3339, write_atomic};
use crate::error::{Error, Result};
use crate::events::FetchEvent;
use crate::fetcher::CachedBase;
use crate::stamp::FileStamp;
use digest::Sha256;

/// An uncompressed copy of a base image in the cache.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlainCopy {
    /// The digest of the base it is a copy of.
    pub base: Sha256,
    /// The copy (a qcow2 without compressed clusters).
    pub path: PathBuf,
    /// Its size in bytes.
    pub size: u64,
    /// Where its base came from (redacted URL or local path), if the record says.
    pub source: Option<String>,
    /// Whether this call made it (false: it was already there and intact).
    pub made: bool,
}

#[derive(Serialize, Deserialize)]
struct PlainRecord {
    base: Sha256,
    size: u64,
    sha256: Sha256,
    source: String,
    made_at: String,
    /// The file as it was when `qemu-img check` last passed it (or when it was made): a copy
    /// still matching it is not checked again — the check reads every table of the copy, ~0.5 s
    /// for the fixture's, on every build.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    checked: Option<FileStamp>,
}

/// Why an existing copy is not used.
enum Unfit {
    Missing,
    Damaged(String),
}

impl BaseCache {
    /// Where the uncompressed copy of the base with `digest` is (or would be).
    pub fn plain_path(&self, digest: &Sha256) -> PathBuf {
        self.dir().join(format!("{}.plain.qcow2", digest.to_hex()))
    }

    fn plain_record_path(&self, digest: &Sha256) -> PathBuf {
        self.dir().join(format!("{}.plain.json", digest.to_hex()))
    }

    /// The uncompressed copy of `base` (see the module docs), made now if it is missing or
    /// damaged. `verify` re-hashes an existing copy against its record. Needs `qemu-img`.
    pub async fn plain_copy(
        &self,
        base: &CachedBase,
        verify: bool,
        progress: &(dyn Fn(FetchEvent) + Send + Sync),
        cancel: &CancellationToken,
    ) -> Result<PlainCopy> {
        let digest = base.digest;
        if let Ok(copy) = self.intact_copy(&digest, verify).await {
            return Ok(copy);
        }
        let _lock = self
            .lock_named(
                &format!("{}.plain", digest.to_hex()),
                &digest,
                progress,
                cancel,
            )
            .await?;
        // Whoever held the lock may have just made it.
        match self.intact_copy(&digest, verify).await {
            Ok(copy) => return Ok(copy),
            Err(Unfit::Damaged(reason)) => {
                progress(FetchEvent::PlainCopyDamaged {
                    digest,
                    reason: reason.clone(),
                });
                self.remove_plain(&digest)?;
            }
            Err(Unfit::Missing) => {}
        }
        progress(FetchEvent::MakingPlainCopy { digest });
        self.make_plain(base, cancel).await
    }

    /// The copy for `digest` if it is there and passes the checks.
    async fn intact_copy(&self, digest: &Sha256, verify: bool) -> Result<PlainCopy, Unfit> {
        let path = self.plain_path(digest);
        let meta = match fs::metadata(&path) {
            Ok(meta) => meta,
            Err(_) => return Err(Unfit::Missing),
        };
        let mut record: PlainRecord = fs::read(self.plain_record_path(digest))
            .ok()
            .and_then(|j| serde_json::from_slice(&j).ok())
            .ok_or_else(|| Unfit::Damaged("its record is missing or unreadable".into()))?;
        if record.base != *digest || record.size != meta.len() {
            return Err(Unfit::Damaged(format!(
                "{} bytes, recorded {}",
                meta.len(),
                record.size
            )));
        }
        let stamp = FileStamp::of(&meta);
        if record.checked != Some(stamp) || stamp.is_racy() {
            qemu_img_check(&path).await.map_err(Unfit::Damaged)?;
            // Best effort: without the stamp the next build checks again.
            let stamped = PlainRecord {
                checked: Some(stamp),
                ..record
            };
            if let Ok(json) = serde_json::to_vec_pretty(&stamped) {
                let _ = write_atomic(&self.plain_record_path(digest), &json);
            }
            record = stamped;
        }
        if verify {
            let hashed = path.clone();
            let actual = tokio::task::spawn_blocking(move || digest::hash_file(&hashed))
                .await
                .map_err(|e| Unfit::Damaged(e.to_string()))?
                .map_err(|e| Unfit::Damaged(e.to_string()))?;
            if actual != record.sha256 {
                return Err(Unfit::Damaged(format!(
                    "sha256:{actual}, recorded sha256:{}",
                    record.sha256
                )));
            }
        }
        Ok(PlainCopy {
            base: *digest,
            path,
            size: meta.len(),
            source: Some(record.source),
            made: false,
        })
    }

    /// Converts `base` into `.partial/`, fsyncs and hashes it, writes the record, renames the
    /// copy into place and fsyncs the directory.
    async fn make_plain(&self, base: &CachedBase, cancel: &CancellationToken) -> Result<PlainCopy> {
        let digest = base.digest;
        let part = self.part_path(&digest).with_extension("plain.qcow2");
        let _ = fs::remove_file(&part);
        let mut cmd = tokio::process::Command::new("qemu-img");
        // In order (no -W), so the same base always gives the same bytes. The source is opened
        // shared (-U): a running build may have it open as a backing file.
        cmd.args(["convert", "-U", "-O", "qcow2"])
            .arg(&base.path)
            .arg(&part)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        // Through `child::spawn`: own process group, killed with imgbake (even by `kill -9`).
        let child = child::spawn(cmd).await.map_err(|source| Error::PlainCopy {
            base: base.path.clone(),
            detail: format!("cannot run qemu-img: {source}"),
        })?;
        let out = tokio::select! {
            out = child.wait_with_output() => out,
            () = cancel.cancelled() => {
                let _ = fs::remove_file(&part);
                return Err(Error::Cancelled);
            }
        };
        let out = out.map_err(Error::cache_io("run qemu-img convert for", &part))?;
        if !out.status.success() {
            let _ = fs::remove_file(&part);
            return Err(Error::PlainCopy {
                base: base.path.clone(),
                detail: format!(
                    "qemu-img convert failed ({}): {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            });
        }
        let hashed = part.clone();
        let sha256 = tokio::task::spawn_blocking(move || {
            fs::File::open(&hashed).and_then(|f| f.sync_all())?;
            digest::hash_file(&hashed).map_err(std::io::Error::other)
        })
        .await
        .map_err(|e| Error::cache_io("hash", &part)(std::io::Error::other(e)))?
        .map_err(Error::cache_io("hash", &part))?;
        let meta = fs::metadata(&part).map_err(Error::cache_io("stat", &part))?;
        let size = meta.len();
        // qemu-img wrote it and exited well: as good as checked (the rename keeps the stamp).
        let record = PlainRecord {
            base: digest,
            size,
            sha256,
            source: base.source.to_string(),
            made_at: now_rfc3339(),
            checked: Some(FileStamp::of(&meta)),
        };
        let json = serde_json::to_vec_pretty(&record).map_err(std::io::Error::other);
        let record_path = self.plain_record_path(&digest);
        write_atomic(
            &record_path,
            &json.map_err(Error::cache_io("encode", &record_path))?,
        )?;
        let target = self.plain_path(&digest);
        let mut perms = fs::metadata(&part)
            .map_err(Error::cache_io("stat", &part))?
            .permissions();
        perms.set_readonly(true);
        fs::set_permissions(&part, perms).map_err(Error::cache_io("chmod", &part))?;
        fs::rename(&part, &target).map_err(Error::cache_io("rename", &part))?;
        digest::fsync_dir(self.dir()).map_err(Error::cache_io("fsync", self.dir()))?;
        Ok(PlainCopy {
            base: digest,
            path: target,
            size,
            source: Some(record.source),
            made: true,
        })
    }

    /// Removes the copy of the base with `digest` and its record. Returns whether a copy was
    /// there.
    pub fn remove_plain(&self, digest: &Sha256) -> Result<bool> {
        let path = self.plain_path(digest);
        let existed = match fs::remove_file(&path) {
            Ok(()) => true,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
            Err(e) => return Err(Error::cache_io("remove", path)(e)),
        };
        let _ = fs::remove_file(self.plain_record_path(digest));
        Ok(existed)
    }

    /// Every uncompressed copy in the cache, sorted by base digest.
    pub fn plain_copies(&self) -> Result<Vec<PlainCopy>> {
        let read = fs::read_dir(self.dir()).map_err(Error::cache_io("list", self.dir()))?;
        let mut out = Vec::new();
        for item in read {
            let item = item.map_err(Error::cache_io("list", self.dir()))?;
            let name = item.file_name();
            let Some(digest) = name
                .to_str()
                .and_then(|n| n.strip_suffix(".plain.qcow2"))
                .and_then(|hex| hex.parse::<Sha256>().ok())
            else {
                continue;
            };
            let path = item.path();
            let size = fs::metadata(&path)
                .map_err(Error::cache_io("stat", &path))?
                .len();
            let source = fs::read(self.plain_record_path(&digest))
                .ok()
                .and_then(|j| serde_json::from_slice::<PlainRecord>(&j).ok())
                .map(|r| r.source);
            out.push(PlainCopy {
                base: digest,
                path,
                size,
                source,
                made: false,
            });
        }
        out.sort_by_key(|c| c.base);
        Ok(out)
    }
}

/// `qemu-img check` of a copy: catches a truncated file or broken metadata in well under a
/// second (it reads tables, not data).
async fn qemu_img_check(path: &Path) -> std::result::Result<(), String> {
    let mut cmd = tokio::process::Command::new("qemu-img");
    cmd.args(["check", "-q", "-U", "-f", "qcow2"])
        .arg(path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let cannot_run = |e: std::io::Error| format!("cannot run qemu-img check: {e}");
    let out = child::spawn(cmd)
        .await
        .map_err(cannot_run)?
        .wait_with_output()
        .await
        .map_err(cannot_run)?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "qemu-img check: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}
