//! Fetch base images into a verified, content-addressed cache.
//!
//! [`BaseCache`] is a directory of images named by their SHA-256
//! (`$XDG_CACHE_HOME/imgbake/base/<sha256hex>` by default). [`BaseCache::fetch`] takes a
//! [`BaseSource`] — a [`Location`] (HTTP(S) URL, `file://` URL or path) and an
//! [`ExpectedDigest`] (`sha256:<hex>` or a `file:<url>` SHA256SUMS list) — and returns a
//! [`CachedBase`]: the path of a file whose digest was checked.
//!
//! - Downloads stream through SHA-256 as they arrive, resume with HTTP `Range` after a cut,
//!   restart from zero when the server ignores `Range`, and retry with backoff.
//! - Nothing unverified enters the cache: downloads go to `.partial/` and are renamed in only
//!   after the digest matched. A per-digest lock makes concurrent fetches download once.
//! - Local bases are hashed in place, never copied.
//! - Progress is reported as typed [`FetchEvent`]s through a callback; this crate never prints.
//! - [`BaseCache::plain_copy`] keeps an uncompressed qcow2 copy of each base ([`PlainCopy`],
//!   made once, content-addressed by the base's digest): builds boot on it, so the guest reads
//!   plain clusters instead of decompressing zlib ones.
//! - Errors ([`enum@Error`]) show URLs redacted (no password, no query string).
//!
//! Decisions worth knowing:
//! - **Offline with a `file:<url>` checksum**: every SHA256SUMS list fetched online is saved
//!   in the cache (`.sums/`); offline, the digest is looked up in that saved copy (the event
//!   says so, with its date). A list never fetched gives [`Error::OfflineSums`].
//! - **Local bases are not copied**, so they can never poison the cache. Their digest is only
//!   as good as the moment it was computed: a fetch hashes the file again unless its stamp
//!   (inode, size, mtime, ctime) is the one recorded after its last good hash (a later change
//!   moves the stamp and shows up as a mismatch at the next fetch), but a change *between*
//!   fetch and use is not seen. Callers that keep the path around should open it read-only
//!   (QEMU's backing file). [`BaseCache::sweep_local_records`] drops the records of files that
//!   are gone.
//! - **Resume without validators**: when the server sent neither a strong ETag nor
//!   Last-Modified, a cut download still resumes (no `If-Range`); if the result mismatches,
//!   it is downloaded once more from scratch before [`Error::Mismatch`] is returned.
//! - **Cache hits are trusted** after a size check against the sidecar
//!   ([`FetchOptions::verify_cache_hits`] re-hashes them).
//!
//! ```no_run
//! use fetch::{BaseCache, BaseSource, ExpectedDigest, FetchOptions, Location};
//! use tokio_util::sync::CancellationToken;
//!
//! # async fn demo() -> fetch::Result<()> {
//! let cache = BaseCache::open_default()?;
//! let source = BaseSource {
//!     location: Location::parse(
//!         "https://cloud-images.ubuntu.com/jammy/current/jammy-server-cloudimg-amd64.img",
//!     )?,
//!     checksum: "file:https://cloud-images.ubuntu.com/jammy/current/SHA256SUMS".parse()?,
//! };
//! let base = cache
//!     .fetch(&source, &FetchOptions::default(), &|event| eprintln!("{event:?}"), CancellationToken::new())
//!     .await?;
//! println!("{} sha256:{}", base.path.display(), base.digest);
//! # Ok(())
//! # }
//! ```
#![warn(missing_docs)]

mod cache;
mod download;
mod error;
mod events;
mod fetcher;
mod hash;
mod http;
mod local;
mod options;
mod plain;
mod source;
mod stamp;
pub mod sums;

#[cfg(feature = "test-server")]
pub mod bench;
#[cfg(feature = "test-server")]
pub mod testserver;

pub use cache::{BaseCache, CacheEntry};
/// The digest type is the workspace's `digest` crate's, re-exported for callers of this crate.
pub use digest::Sha256;
pub use error::{Error, Result};
pub use events::{DigestOrigin, FetchEvent, HashPurpose, RestartReason};
pub use fetcher::{CachedBase, Outcome, Progress};
pub use options::FetchOptions;
pub use plain::PlainCopy;
pub use source::{BaseSource, ExpectedDigest, Location, redact};
