//! The content-addressed cache directory.
//!
//! Layout of `<dir>`:
//! - `<sha256hex>` — a verified image, read-only (0444), named by its digest;
//! - `<sha256hex>.json` — its sidecar: source (redacted), size, fetched-at;
//! - `<sha256hex>.plain.qcow2` + `<sha256hex>.plain.json` — its uncompressed copy and record
//!   (see [`crate::plain`]); also made for local bases, which are not copied in themselves;
//! - `.partial/<sha256hex>.part` + `.part.json` — a download in progress and its resume record;
//! - `.locks/<sha256hex>.lock` — the per-digest lock (an OS file lock, released on close/exit);
//! - `.sums/<sha256 of url>.txt` + `.json` — the last copy of each SHA256SUMS list fetched, so
//!   `--offline` can still learn the expected digest;
//! - `.local/<sha256 of path>.json` — a local base's last good hash with the file's stamp, so an
//!   unchanged local base is not hashed again (see [`crate::stamp`]).
//!
//! Only verified images are renamed into `<dir>`; everything else lives in dot-directories.

use std::fs::{self, File, TryLockError};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::events::FetchEvent;
use digest::Sha256;

/// A cache of verified base images, one file per SHA-256 digest.
#[derive(Clone, Debug)]
pub struct BaseCache {
    dir: PathBuf,
}

/// One image in the cache, as [`BaseCache::list`] reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheEntry {
    /// The image's digest (also its file name).
    pub digest: Sha256,
    /// The image file.
    pub path: PathBuf,
    /// Its size in bytes.
    pub size: u64,
    /// Where it was downloaded from (redacted), if the sidecar says.
    pub source: Option<String>,
    /// When it was downloaded (RFC 3339), if the sidecar says.
    pub fetched_at: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct Sidecar {
    source: String,
    size: u64,
    fetched_at: String,
}

/// What is recorded next to a saved SHA256SUMS copy.
#[derive(Serialize, Deserialize)]
pub(crate) struct SavedSumsMeta {
    pub(crate) url: String,
    pub(crate) fetched_at: String,
}

const PARTIAL: &str = ".partial";
const LOCKS: &str = ".locks";
const SUMS: &str = ".sums";
pub(crate) const LOCAL: &str = ".local";

impl BaseCache {
    /// The default cache directory: `$XDG_CACHE_HOME/imgbake/base`, or `~/.cache/imgbake/base`
    /// when `XDG_CACHE_HOME` is unset, empty or relative (as the XDG spec says).
    pub fn default_dir() -> Result<PathBuf> {
        let xdg = std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .filter(|p| p.is_absolute());
        let home = || {
            std::env::var_os("HOME")
                .filter(|h| !h.is_empty())
                .map(|h| PathBuf::from(h).join(".cache"))
        };
        let root = xdg.or_else(home).ok_or(Error::NoCacheDir)?;
        Ok(root.join("imgbake").join("base"))
    }

    /// Opens the cache at [`BaseCache::default_dir`], creating it.
    pub fn open_default() -> Result<Self> {
        Self::open(Self::default_dir()?)
    }

    /// Opens (creating if needed) the cache at `dir`.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self> {
        let dir = dir.into();
        for sub in [PARTIAL, LOCKS, SUMS, LOCAL] {
            let path = dir.join(sub);
            fs::create_dir_all(&path).map_err(Error::cache_io("create", path))?;
        }
        Ok(Self { dir })
    }

    /// The cache directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the image with `digest` is (or would be) stored.
    pub fn entry_path(&self, digest: &Sha256) -> PathBuf {
        self.dir.join(digest.to_hex())
    }

    /// The cached image with `digest`, if present.
    pub fn get(&self, digest: &Sha256) -> Result<Option<CacheEntry>> {
        let path = self.entry_path(digest);
        let meta = match fs::metadata(&path) {
            Ok(meta) if meta.is_file() => meta,
            Ok(_) => return Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::cache_io("stat", path)(e)),
        };
        let sidecar = self.read_sidecar(digest);
        if let Some(side) = &sidecar
            && side.size != meta.len()
        {
            return Err(Error::CacheDamaged {
                path,
                actual: meta.len(),
                recorded: side.size,
            });
        }
        Ok(Some(CacheEntry {
            digest: *digest,
            path,
            size: meta.len(),
            source: sidecar.as_ref().map(|s| s.source.clone()),
            fetched_at: sidecar.map(|s| s.fetched_at),
        }))
    }

    /// Every image in the cache, sorted by digest. Files that are not named by a digest are
    /// ignored.
    pub fn list(&self) -> Result<Vec<CacheEntry>> {
        let read = fs::read_dir(&self.dir).map_err(Error::cache_io("list", &self.dir))?;
        let mut out = Vec::new();
        for item in read {
            let item = item.map_err(Error::cache_io("list", &self.dir))?;
            let name = item.file_name();
            let Some(digest) = name.to_str().and_then(|n| n.parse::<Sha256>().ok()) else {
                continue;
            };
            if let Some(entry) = self.get(&digest)? {
                out.push(entry);
            }
        }
        out.sort_by_key(|e| e.digest);
        Ok(out)
    }

    /// Removes the image with `digest`, its sidecar and its uncompressed copy. Returns whether
    /// the image was there.
    pub fn remove(&self, digest: &Sha256) -> Result<bool> {
        let path = self.entry_path(digest);
        let existed = match fs::remove_file(&path) {
            Ok(()) => true,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
            Err(e) => return Err(Error::cache_io("remove", path)(e)),
        };
        let _ = fs::remove_file(self.sidecar_path(digest));
        self.remove_plain(digest)?;
        Ok(existed)
    }

    fn sidecar_path(&self, digest: &Sha256) -> PathBuf {
        self.dir.join(format!("{}.json", digest.to_hex()))
    }

    fn read_sidecar(&self, digest: &Sha256) -> Option<Sidecar> {
        let text = fs::read(self.sidecar_path(digest)).ok()?;
        serde_json::from_slice(&text).ok()
    }

    pub(crate) fn part_path(&self, digest: &Sha256) -> PathBuf {
        self.dir
            .join(PARTIAL)
            .join(format!("{}.part", digest.to_hex()))
    }

    pub(crate) fn part_record_path(&self, digest: &Sha256) -> PathBuf {
        self.dir
            .join(PARTIAL)
            .join(format!("{}.part.json", digest.to_hex()))
    }

    /// Deletes a partial download and its resume record.
    pub(crate) fn discard_partial(&self, digest: &Sha256) {
        let _ = fs::remove_file(self.part_path(digest));
        let _ = fs::remove_file(self.part_record_path(digest));
    }

    /// Moves a verified, fsynced partial download into the cache: sidecar first, then the image,
    /// each by rename, then fsync of the directory.
    pub(crate) fn publish(&self, digest: &Sha256, source: &str, size: u64) -> Result<PathBuf> {
        let sidecar = Sidecar {
            source: source.to_owned(),
            size,
            fetched_at: now_rfc3339(),
        };
        let json = serde_json::to_vec_pretty(&sidecar).map_err(std::io::Error::other);
        let json = json.map_err(Error::cache_io("encode", self.sidecar_path(digest)))?;
        write_atomic(&self.sidecar_path(digest), &json)?;
        let part = self.part_path(digest);
        let target = self.entry_path(digest);
        set_read_only(&part).map_err(Error::cache_io("chmod", &part))?;
        fs::rename(&part, &target).map_err(Error::cache_io("rename", &part))?;
        sync_dir(&self.dir)?;
        let _ = fs::remove_file(self.part_record_path(digest));
        Ok(target)
    }

    fn sums_base(&self, url: &str) -> PathBuf {
        self.dir
            .join(SUMS)
            .join(Sha256::of(url.as_bytes()).to_hex())
    }

    /// Saves the text of a SHA256SUMS list fetched from `url`.
    pub(crate) fn save_sums(&self, url: &str, redacted: &str, text: &[u8]) -> Result<()> {
        let base = self.sums_base(url);
        write_atomic(&base.with_extension("txt"), text)?;
        let meta = SavedSumsMeta {
            url: redacted.to_owned(),
            fetched_at: now_rfc3339(),
        };
        let json = serde_json::to_vec_pretty(&meta).map_err(std::io::Error::other);
        write_atomic(
            &base.with_extension("json"),
            &json.map_err(Error::cache_io("encode", &base))?,
        )
    }

    /// The saved copy of the SHA256SUMS list from `url`, and when it was fetched.
    pub(crate) fn saved_sums(&self, url: &str) -> Option<(Vec<u8>, Option<String>)> {
        let base = self.sums_base(url);
        let text = fs::read(base.with_extension("txt")).ok()?;
        let meta: Option<SavedSumsMeta> = fs::read(base.with_extension("json"))
            .ok()
            .and_then(|j| serde_json::from_slice(&j).ok());
        Some((text, meta.map(|m| m.fetched_at)))
    }

    /// Takes the lock for `digest`, waiting (cancellably) while another fetch holds it.
    pub(crate) async fn lock(
        &self,
        digest: &Sha256,
        progress: &(dyn Fn(FetchEvent) + Send + Sync),
        cancel: &CancellationToken,
    ) -> Result<DigestLock> {
        self.lock_named(&digest.to_hex(), digest, progress, cancel)
            .await
    }

    /// Takes the lock `.locks/<name>.lock` (about the image `digest`), waiting (cancellably)
    /// while another process holds it.
    pub(crate) async fn lock_named(
        &self,
        name: &str,
        digest: &Sha256,
        progress: &(dyn Fn(FetchEvent) + Send + Sync),
        cancel: &CancellationToken,
    ) -> Result<DigestLock> {
        let path = self.dir.join(LOCKS).join(format!("{name}.lock"));
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(Error::cache_io("open lock", &path))?;
        match file.try_lock() {
            Ok(()) => return Ok(DigestLock { _file: file }),
            Err(TryLockError::WouldBlock) => {}
            Err(TryLockError::Error(e)) => return Err(Error::cache_io("lock", path)(e)),
        }
        progress(FetchEvent::WaitingForLock { digest: *digest });
        // A blocking lock on a detached thread: if we are cancelled the thread stays blocked
        // until the holder is done (then drops the lock at once), or until the process exits.
        // It is never joined, so it cannot hold up a runtime shutdown.
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            let locked = file.lock().map(|()| file);
            let _ = tx.send(locked);
        });
        tokio::select! {
            () = cancel.cancelled() => Err(Error::Cancelled),
            got = rx => match got {
                Ok(Ok(file)) => Ok(DigestLock { _file: file }),
                Ok(Err(e)) => Err(Error::cache_io("lock", path)(e)),
                Err(_) => Err(Error::cache_io("lock", path)(std::io::Error::other("lock thread died"))),
            },
        }
    }
}

/// Holds a per-digest lock; dropping it releases the lock.
#[derive(Debug)]
pub(crate) struct DigestLock {
    _file: File,
}

/// [`digest::write_atomic`], with the cache's error.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    digest::write_atomic(path, bytes).map_err(Error::cache_io("write", path))
}

fn sync_dir(dir: &Path) -> Result<()> {
    digest::fsync_dir(dir).map_err(Error::cache_io("fsync", dir))
}

fn set_read_only(path: &Path) -> std::io::Result<()> {
    let mut perms = fs::metadata(path)?.permissions();
    perms.set_readonly(true);
    fs::set_permissions(path, perms)
}

pub(crate) fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_dir_follows_xdg_then_home() {
        // Only reads the environment (setting it is `unsafe` in edition 2024) and checks the
        // rule against whatever this process was given.
        let saved = (std::env::var_os("XDG_CACHE_HOME"), std::env::var_os("HOME"));
        let dir = BaseCache::default_dir();
        match (&saved.0, &saved.1) {
            (Some(x), _) if Path::new(x).is_absolute() => {
                assert_eq!(dir.unwrap(), Path::new(x).join("imgbake/base"));
            }
            (_, Some(h)) if !h.is_empty() => {
                assert_eq!(dir.unwrap(), Path::new(h).join(".cache/imgbake/base"));
            }
            _ => assert!(matches!(dir, Err(Error::NoCacheDir))),
        }
    }

    #[test]
    fn list_get_remove_and_damage() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = BaseCache::open(tmp.path()).unwrap();
        assert!(cache.list().unwrap().is_empty());
        let data = b"image bytes";
        let digest = Sha256::of(data);
        fs::write(cache.part_path(&digest), data).unwrap();
        let path = cache
            .publish(&digest, "https://h/x.img", data.len() as u64)
            .unwrap();
        assert_eq!(path, tmp.path().join(digest.to_hex()));
        assert!(fs::metadata(&path).unwrap().permissions().readonly());
        // Stray files are not entries.
        fs::write(tmp.path().join("notes.txt"), b"x").unwrap();
        let list = cache.list().unwrap();
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].digest, digest);
        assert_eq!(list[0].size, data.len() as u64);
        assert_eq!(list[0].source.as_deref(), Some("https://h/x.img"));
        assert!(list[0].fetched_at.is_some());
        assert!(!cache.part_path(&digest).exists());

        // A size that no longer matches the sidecar is reported, not trusted.
        let mut perms = fs::metadata(&path).unwrap().permissions();
        #[allow(clippy::permissions_set_readonly_false)]
        perms.set_readonly(false);
        fs::set_permissions(&path, perms).unwrap();
        fs::write(&path, b"shorter").unwrap();
        assert!(matches!(
            cache.get(&digest),
            Err(Error::CacheDamaged { .. })
        ));

        assert!(cache.remove(&digest).unwrap());
        assert!(!cache.remove(&digest).unwrap());
        assert!(cache.get(&digest).unwrap().is_none());
    }

    #[test]
    fn saved_sums_round_trip() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = BaseCache::open(tmp.path()).unwrap();
        assert!(cache.saved_sums("https://h/SHA256SUMS").is_none());
        cache
            .save_sums("https://h/SHA256SUMS", "https://h/SHA256SUMS", b"abc")
            .unwrap();
        let (text, at) = cache.saved_sums("https://h/SHA256SUMS").unwrap();
        assert_eq!(text, b"abc");
        assert!(at.is_some());
    }
}
