//! Per-build SSH keys: the user key imgbake logs in with and the host key it puts in the seed
//! (and then pins).

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use russh::keys::ssh_key::private::Ed25519Keypair;
use russh::keys::ssh_key::{HashAlg, LineEnding};
use russh::keys::{PrivateKey, PublicKey};

use crate::{Error, Result};

/// File names used by [`BuildKeys::to_files`] / [`BuildKeys::save`] and read back by
/// [`BuildKeys::from_files`] / [`BuildKeys::load`].
const USER_KEY_FILE: &str = "user_ed25519";
const HOST_KEY_FILE: &str = "host_ed25519";

/// The two ed25519 key pairs of one build.
///
/// - the **user key**: its public half goes into the seed's `ssh_authorized_keys`; imgbake logs
///   in with the private half;
/// - the **host key**: both halves go into the seed's `ssh_keys` (so the guest's sshd uses it);
///   imgbake pins its public half and refuses any other host key.
///
/// `Debug` shows only the public fingerprints.
#[derive(Clone)]
pub struct BuildKeys {
    user: PrivateKey,
    host: PrivateKey,
}

impl BuildKeys {
    /// Generates two fresh ed25519 key pairs from the OS random number generator.
    pub fn generate() -> Self {
        Self {
            user: random_ed25519("imgbake-build-user"),
            host: random_ed25519("imgbake-build-host"),
        }
    }

    /// The user's public key, one OpenSSH line (`ssh-ed25519 AAAA… comment`), for the seed's
    /// `ssh_authorized_keys`.
    pub fn user_public_openssh(&self) -> String {
        public_openssh(self.user.public_key())
    }

    /// The host's private key in OpenSSH PEM form, for the seed's `ssh_keys.ed25519_private`.
    pub fn host_private_openssh(&self) -> String {
        private_openssh(&self.host)
    }

    /// The host's public key, one OpenSSH line, for the seed's `ssh_keys.ed25519_public`.
    pub fn host_public_openssh(&self) -> String {
        public_openssh(self.host.public_key())
    }

    /// The user's private key in OpenSSH PEM form (for an `ssh -i` command the user can run
    /// to get into a kept VM, once written by [`BuildKeys::save`]).
    pub fn user_private_openssh(&self) -> String {
        private_openssh(&self.user)
    }

    /// The pinned host public key.
    pub fn host_public(&self) -> &PublicKey {
        self.host.public_key()
    }

    /// The host private key (tests use it to run an sshd or an in-process server with it).
    pub fn host_private(&self) -> &PrivateKey {
        &self.host
    }

    /// The user private key used for authentication.
    pub fn user_private(&self) -> &PrivateKey {
        &self.user
    }

    /// `SHA256:…` fingerprint of the host key, as `ssh-keygen -l` prints it.
    pub fn host_fingerprint(&self) -> String {
        fingerprint(self.host.public_key())
    }

    /// Path of the user's private key file inside a directory written by [`BuildKeys::save`].
    pub fn user_key_path(dir: &Path) -> PathBuf {
        dir.join(Self::USER_KEY_FILE)
    }

    /// The name of the user's private key among [`BuildKeys::to_files`].
    pub const USER_KEY_FILE: &str = USER_KEY_FILE;

    /// Both key pairs as files: private keys (OpenSSH PEM) as `user_ed25519` / `host_ed25519`,
    /// public keys (one OpenSSH line) as `*.pub`. Store them privately (0600): they are secrets.
    pub fn to_files(&self) -> BTreeMap<String, Vec<u8>> {
        let mut files = BTreeMap::new();
        for (name, key) in [(USER_KEY_FILE, &self.user), (HOST_KEY_FILE, &self.host)] {
            files.insert(name.to_owned(), private_openssh(key).into_bytes());
            let public = format!("{}\n", public_openssh(key.public_key()));
            files.insert(format!("{name}.pub"), public.into_bytes());
        }
        files
    }

    /// Reads the key pairs back from [`BuildKeys::to_files`]'s files (only the private ones are
    /// needed). `origin` is where they were stored, for error messages.
    pub fn from_files(files: &BTreeMap<String, Vec<u8>>, origin: &Path) -> Result<Self> {
        let key = |name: &str| {
            let path = origin.join(name);
            match files.get(name) {
                Some(bytes) => parse_ed25519(bytes, &path),
                None => Err(Error::KeyIo {
                    path,
                    source: std::io::ErrorKind::NotFound.into(),
                }),
            }
        };
        Ok(Self {
            user: key(USER_KEY_FILE)?,
            host: key(HOST_KEY_FILE)?,
        })
    }

    /// Writes both key pairs to `dir` (created with mode 0700 if missing): private keys with
    /// mode 0600 as `user_ed25519` / `host_ed25519`, public keys as `*.pub` (also 0600).
    /// Each file is written to a temporary name and renamed.
    pub fn save(&self, dir: &Path) -> Result<()> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| Error::KeyIo {
                path: dir.to_path_buf(),
                source,
            })?;
        // An existing directory keeps its mode from DirBuilder; tighten it.
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(|source| {
            Error::KeyIo {
                path: dir.to_path_buf(),
                source,
            }
        })?;
        for (name, bytes) in self.to_files() {
            write_private(&dir.join(name), &bytes)?;
        }
        Ok(())
    }

    /// Reads the key pairs written by [`BuildKeys::save`].
    pub fn load(dir: &Path) -> Result<Self> {
        let mut files = BTreeMap::new();
        for name in [USER_KEY_FILE, HOST_KEY_FILE] {
            let path = dir.join(name);
            match fs::read(&path) {
                Ok(bytes) => {
                    files.insert(name.to_owned(), bytes);
                }
                // `from_files` reports it, in the order the keys are decoded.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => return Err(Error::KeyIo { path, source }),
            }
        }
        Self::from_files(&files, dir)
    }
}

impl fmt::Debug for BuildKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BuildKeys")
            .field("user", &fingerprint(self.user.public_key()))
            .field("host", &fingerprint(self.host.public_key()))
            .field("private", &"<redacted>")
            .finish()
    }
}

/// `SHA256:…` fingerprint of a public key.
pub(crate) fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

fn random_ed25519(comment: &str) -> PrivateKey {
    // rand 0.9 (the workspace's) and ssh-key's rand_core 0.10 differ, so draw the seed here.
    let seed: [u8; 32] = rand::random();
    let mut key = PrivateKey::from(Ed25519Keypair::from_seed(&seed));
    key.set_comment(comment);
    key
}

fn public_openssh(key: &PublicKey) -> String {
    // Encoding an in-memory ed25519 public key cannot fail (no I/O, fixed sizes).
    key.to_openssh()
        .expect("an ed25519 public key always encodes")
}

fn private_openssh(key: &PrivateKey) -> String {
    // Unencrypted ed25519: pure in-memory encoding, cannot fail.
    key.to_openssh(LineEnding::LF)
        .expect("an unencrypted ed25519 key always encodes")
        .to_string()
}

/// An atomic write (the temp file is 0600 and keeps that mode when renamed into place).
fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    digest::write_atomic(path, bytes).map_err(|source| Error::KeyIo {
        path: path.to_path_buf(),
        source,
    })
}

fn parse_ed25519(bytes: &[u8], path: &Path) -> Result<PrivateKey> {
    let key = PrivateKey::from_openssh(bytes).map_err(|source| Error::KeyDecode {
        path: path.to_path_buf(),
        source,
    })?;
    if key.algorithm() != russh::keys::Algorithm::Ed25519 {
        return Err(Error::KeyNotEd25519 {
            path: path.to_path_buf(),
            algorithm: key.algorithm().to_string(),
        });
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_are_distinct_ed25519_in_openssh_form() {
        let keys = BuildKeys::generate();
        assert!(keys.user_public_openssh().starts_with("ssh-ed25519 "));
        assert!(keys.host_public_openssh().starts_with("ssh-ed25519 "));
        assert_ne!(keys.user_public_openssh(), keys.host_public_openssh());
        let pem = keys.host_private_openssh();
        assert!(pem.starts_with("-----BEGIN OPENSSH PRIVATE KEY-----\n"));
        let parsed = PrivateKey::from_openssh(pem.as_bytes()).unwrap();
        assert_eq!(parsed.public_key(), keys.host_public());
        assert_ne!(
            BuildKeys::generate().host_public_openssh(),
            keys.host_public_openssh()
        );
    }

    #[test]
    fn debug_never_shows_private_material() {
        let keys = BuildKeys::generate();
        let debug = format!("{keys:?}");
        assert!(debug.contains("SHA256:"), "{debug}");
        let pem = keys.user_private_openssh();
        let body: Vec<&str> = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        for line in body {
            assert!(!debug.contains(line), "{debug}");
        }
        assert!(!debug.contains("BEGIN"));
    }

    #[test]
    fn save_then_load_round_trips_with_private_modes() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("keys");
        let keys = BuildKeys::generate();
        keys.save(&dir).unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        for name in [
            "user_ed25519",
            "host_ed25519",
            "user_ed25519.pub",
            "host_ed25519.pub",
        ] {
            assert_eq!(mode(&dir.join(name)), 0o600, "{name}");
        }
        let loaded = BuildKeys::load(&dir).unwrap();
        assert_eq!(loaded.user_public_openssh(), keys.user_public_openssh());
        assert_eq!(loaded.host_private_openssh(), keys.host_private_openssh());
        // Saving again over existing files works (rename replaces).
        loaded.save(&dir).unwrap();
        for name in ["user_ed25519", "host_ed25519.pub"] {
            assert_eq!(mode(&dir.join(name)), 0o600, "{name} after a second save");
        }
    }

    #[test]
    fn files_round_trip_and_name_what_is_missing() {
        let keys = BuildKeys::generate();
        let files = keys.to_files();
        let names: Vec<&str> = files.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            [
                "host_ed25519",
                "host_ed25519.pub",
                "user_ed25519",
                "user_ed25519.pub"
            ]
        );
        let back = BuildKeys::from_files(&files, Path::new("/chain/keys")).unwrap();
        assert_eq!(back.user_private_openssh(), keys.user_private_openssh());
        assert_eq!(back.host_public_openssh(), keys.host_public_openssh());
        let mut partial = files.clone();
        partial.remove(BuildKeys::USER_KEY_FILE);
        let err = BuildKeys::from_files(&partial, Path::new("/chain/keys")).unwrap_err();
        assert!(
            err.to_string().contains("/chain/keys/user_ed25519"),
            "{err}"
        );
    }

    #[test]
    fn load_reports_missing_and_garbled_files_with_their_path() {
        let tmp = tempfile::tempdir().unwrap();
        let err = BuildKeys::load(tmp.path()).unwrap_err();
        assert!(matches!(err, Error::KeyIo { .. }), "{err:?}");
        assert!(err.to_string().contains("user_ed25519"), "{err}");
        fs::write(tmp.path().join("user_ed25519"), "not a key").unwrap();
        let err = BuildKeys::load(tmp.path()).unwrap_err();
        assert!(matches!(err, Error::KeyDecode { .. }), "{err:?}");
    }
}
