//! A chain's secrets: the SSH keys its guests were seeded with. Every layer of a chain was
//! booted with them, so resuming the chain needs the same keys. They live in
//! `chains/<root key>/keys/`, written whole (a private temp directory renamed into place), so
//! a reader sees all of them or none.
//!
//! This crate stores bytes under file names; what they mean (provisioner's `BuildKeys`) is the
//! caller's business, so data flows one way: provisioner → pipeline → checkpoint.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use digest::CacheKey;

use crate::error::io_err;
use crate::{Error, Result};

/// Secret files by name (a plain file name: no `/`, not starting with `.`).
pub type SecretFiles = BTreeMap<String, Vec<u8>>;

const SECRETS_DIR: &str = "keys";

/// The lock on making one checkpoint ([`ChainSecrets::try_lock_making`]); released when dropped.
#[derive(Debug)]
pub struct MakingLock {
    key: CacheKey,
    _file: fs::File,
}

impl MakingLock {
    /// The checkpoint's key.
    pub fn key(&self) -> &CacheKey {
        &self.key
    }
}

/// The secrets of one chain, from [`crate::CheckpointStore::chain_secrets`].
#[derive(Clone, Debug)]
pub struct ChainSecrets {
    /// `chains/<root>/`, 0700.
    chain_dir: PathBuf,
    /// `chains/<root>/keys/`, 0700, its files 0600.
    dir: PathBuf,
}

impl ChainSecrets {
    pub(crate) fn open(chain_dir: PathBuf) -> Result<ChainSecrets> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&chain_dir)
            .map_err(io_err("create", &chain_dir))?;
        // An existing directory keeps its mode from DirBuilder; tighten it.
        fs::set_permissions(&chain_dir, fs::Permissions::from_mode(0o700))
            .map_err(io_err("chmod", &chain_dir))?;
        let dir = chain_dir.join(SECRETS_DIR);
        Ok(ChainSecrets { chain_dir, dir })
    }

    /// Takes the lock on making the checkpoint `key` of this chain, or `None` while another
    /// build holds it. A build holds it from the moment it starts making that checkpoint (the
    /// first boot, or a step) until the layer is published, so a second build that would make
    /// the same one waits and then starts from it, instead of making it too and losing the
    /// race to publish it (which would leave every later layer of its own unpublished).
    pub fn try_lock_making(&self, key: &CacheKey) -> Result<Option<MakingLock>> {
        let path = self.chain_dir.join(format!("making-{key}.lock"));
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(io_err("open", &path))?;
        match file.try_lock() {
            Ok(()) => Ok(Some(MakingLock {
                key: *key,
                _file: file,
            })),
            Err(fs::TryLockError::WouldBlock) => Ok(None),
            Err(fs::TryLockError::Error(e)) => Err(io_err("lock", &path)(e)),
        }
    }

    /// The directory holding the secrets (for messages).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the secret `name` is (or would be) stored: e.g. the user key an `ssh -i` command
    /// for a kept VM points at.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The chain's secrets, or `None` if it has none yet.
    pub fn load(&self) -> Result<Option<SecretFiles>> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err("read", &self.dir)(e)),
        };
        let mut files = SecretFiles::new();
        for entry in entries {
            let entry = entry.map_err(io_err("read", &self.dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            let path = entry.path();
            files.insert(name, fs::read(&path).map_err(io_err("read", &path))?);
        }
        Ok(Some(files))
    }

    /// The chain's secrets; if it has none yet, `generate`s them and stores them (dir 0700,
    /// files 0600). When two builds race, the first to store wins and both get its secrets.
    pub fn create_or_load(&self, generate: impl FnOnce() -> SecretFiles) -> Result<SecretFiles> {
        if let Some(files) = self.load()? {
            return Ok(files);
        }
        let files = generate();
        let tmp = tempfile::Builder::new()
            .prefix(".keys.tmp-")
            .permissions(fs::Permissions::from_mode(0o700))
            .tempdir_in(&self.chain_dir)
            .map_err(io_err("create a temp directory in", &self.chain_dir))?;
        // Whatever the umask did: the directory is private before anything goes in.
        fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o700))
            .map_err(io_err("chmod", tmp.path()))?;
        for (name, bytes) in &files {
            if name.is_empty() || name.starts_with('.') || name.contains('/') {
                return Err(Error::Io {
                    action: "store the secret",
                    path: tmp.path().join(name),
                    source: io::Error::new(io::ErrorKind::InvalidInput, "not a plain file name"),
                });
            }
            write_private(&tmp.path().join(name), bytes)?;
        }
        digest::fsync_dir(tmp.path()).map_err(io_err("sync", tmp.path()))?;
        match fs::rename(tmp.path(), &self.dir) {
            Ok(()) => {
                digest::fsync_dir(&self.chain_dir).map_err(io_err("sync", &self.chain_dir))?;
                Ok(files)
            }
            // Another build stored the chain's secrets first: use theirs (the temp dir goes
            // when `tmp` drops).
            Err(_) if self.dir.is_dir() => self.load()?.ok_or_else(|| Error::Io {
                action: "read",
                path: self.dir.clone(),
                source: io::ErrorKind::NotFound.into(),
            }),
            Err(e) => Err(io_err("rename into place", &self.dir)(e)),
        }
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io_err("create", path))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(io_err("write", path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_build_at_a_time_makes_a_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let chain = || ChainSecrets::open(dir.path().join("chain")).unwrap();
        let (one, two): (CacheKey, CacheKey) = (
            format!("{:064x}", 1).parse().unwrap(),
            format!("{:064x}", 2).parse().unwrap(),
        );
        let held = chain().try_lock_making(&one).unwrap().expect("a free lock");
        assert_eq!(held.key(), &one);
        assert!(
            chain().try_lock_making(&one).unwrap().is_none(),
            "taken twice"
        );
        assert!(
            chain().try_lock_making(&two).unwrap().is_some(),
            "another key is free"
        );
        drop(held);
        assert!(
            chain().try_lock_making(&one).unwrap().is_some(),
            "not released"
        );
        assert_eq!(chain().load().unwrap(), None, "a lock file is not a secret");
    }

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    fn files(tag: &str) -> SecretFiles {
        SecretFiles::from([
            (
                "user_ed25519".to_owned(),
                format!("user {tag}").into_bytes(),
            ),
            (
                "host_ed25519".to_owned(),
                format!("host {tag}").into_bytes(),
            ),
        ])
    }

    #[test]
    fn created_once_private_and_loaded_after() {
        let tmp = tempfile::tempdir().unwrap();
        let secrets = ChainSecrets::open(tmp.path().join("chains/abc")).unwrap();
        assert_eq!(secrets.load().unwrap(), None);
        let made = secrets.create_or_load(|| files("one")).unwrap();
        assert_eq!(made, files("one"));
        assert_eq!(mode(&tmp.path().join("chains/abc")), 0o700);
        assert_eq!(mode(secrets.dir()), 0o700);
        for name in made.keys() {
            assert_eq!(mode(&secrets.path(name)), 0o600, "{name}");
        }
        // A second call loads what is stored and never generates.
        let again = secrets
            .create_or_load(|| panic!("secrets generated twice"))
            .unwrap();
        assert_eq!(again, files("one"));
        assert_eq!(secrets.load().unwrap(), Some(files("one")));
        // No temp directory is left beside the secrets.
        let names: Vec<_> = fs::read_dir(tmp.path().join("chains/abc"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["keys"]);
    }

    #[test]
    fn a_racing_build_that_stored_first_wins() {
        let tmp = tempfile::tempdir().unwrap();
        let chain = tmp.path().join("chains/abc");
        let first = ChainSecrets::open(chain.clone()).unwrap();
        let second = ChainSecrets::open(chain.clone()).unwrap();
        // The second build generates while the first stores its secrets.
        let got = second
            .create_or_load(|| {
                first.create_or_load(|| files("first")).unwrap();
                files("second")
            })
            .unwrap();
        assert_eq!(got, files("first"));
        assert_eq!(fs::read_dir(&chain).unwrap().count(), 1);
    }

    #[test]
    fn names_that_are_not_plain_file_names_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let secrets = ChainSecrets::open(tmp.path().join("c")).unwrap();
        for bad in ["../escape", ".hidden", ""] {
            let err = secrets
                .create_or_load(|| SecretFiles::from([(bad.to_owned(), b"x".to_vec())]))
                .unwrap_err();
            assert!(matches!(err, Error::Io { .. }), "{bad:?}: {err:?}");
        }
        assert_eq!(secrets.load().unwrap(), None);
    }
}
