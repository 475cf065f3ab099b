//! digest: the one SHA-256 type of imgbake, hashing of (sparse) files, and atomic writes.
//!
//! - [`Sha256`]: 32 bytes, shown and read as 64 lower-case hex digits (serde as that string).
//! - [`CacheKey`]: a checkpoint key, a newtype over [`Sha256`] so a key is never mistaken for a
//!   file's digest.
//! - [`Hasher`]: streaming SHA-256; [`Hasher::update_from_file`] feeds a file (or a prefix of
//!   it), skipping holes by `SEEK_DATA`/`SEEK_HOLE`; [`hash_file`] is the one-call form.
//! - [`write_atomic`] / [`AtomicFile`]: temp file in the same directory, fsync, rename, fsync of
//!   the directory: a reader sees the old file or the whole new one, also after a crash.
//! - [`NoSpace`]: the one "file system full" error (path, bytes needed, bytes free), made by a
//!   size check before writing ([`ensure_space`]) or from `ENOSPC` while writing
//!   ([`NoSpace::from_io`]); [`ByteSize`] shows byte counts.
//!
//! ```
//! let d = imgbake_digest::Sha256::of(b"abc");
//! assert_eq!(d.to_string().parse::<imgbake_digest::Sha256>().unwrap(), d);
//! let dir = tempfile::tempdir().unwrap();
//! imgbake_digest::write_atomic(&dir.path().join("f"), b"abc").unwrap();
//! assert_eq!(imgbake_digest::hash_file(&dir.path().join("f")).unwrap(), d);
//! ```
#![warn(missing_docs)]

mod atomic;
mod file;
mod sha;
mod space;

pub use atomic::{AtomicFile, fsync_dir, write_atomic};
pub use file::{HashError, hash_file};
pub use sha::{BadSha256, CacheKey, Hasher, Sha256};
pub use space::{ByteSize, NoSpace, ensure_space, free_space, is_full};
