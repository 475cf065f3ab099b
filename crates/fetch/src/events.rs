//! Typed progress events. The library emits them; the binary renders them (bytes, rate, ETA).

use std::path::PathBuf;
use std::time::Duration;

use digest::Sha256;

/// Something that happened during a fetch, in order. `Downloading` and `Hashing` come at most
/// about ten times a second per phase, plus a final one at 100 %.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum FetchEvent {
    /// The expected digest is known.
    DigestResolved {
        /// The digest the image must have.
        digest: Sha256,
        /// Where it came from.
        origin: DigestOrigin,
    },
    /// The image is already in the cache: nothing is downloaded.
    CacheHit {
        /// The digest.
        digest: Sha256,
        /// The cache entry.
        path: PathBuf,
    },
    /// Another fetch (this process or another) holds the lock for this digest; waiting for it.
    WaitingForLock {
        /// The digest being fetched elsewhere.
        digest: Sha256,
    },
    /// Hashing bytes already on disk.
    Hashing {
        /// Why.
        purpose: HashPurpose,
        /// Bytes hashed so far.
        done: u64,
        /// Bytes to hash.
        total: u64,
    },
    /// A download request was answered and its body starts (again after a retry).
    DownloadStarted {
        /// The URL (redacted).
        url: String,
        /// Full size of the image, when the server says.
        total: Option<u64>,
        /// Bytes already on disk from an earlier attempt that are not fetched again.
        resumed_from: u64,
    },
    /// Download progress: `done` counts the bytes of the image on disk, including resumed ones.
    Downloading {
        /// Bytes on disk.
        done: u64,
        /// Full size, when known.
        total: Option<u64>,
    },
    /// A request failed in a way worth retrying; the next try starts after `delay`.
    Retrying {
        /// 1-based number of the retry about to happen.
        attempt: u32,
        /// Backoff before it.
        delay: Duration,
        /// The failure, one line (URLs redacted).
        reason: String,
    },
    /// The partial download was thrown away and the download starts from byte 0.
    RestartedFromZero {
        /// Why.
        reason: RestartReason,
    },
    /// The image has the expected digest.
    Verified {
        /// The digest.
        digest: Sha256,
        /// Its size in bytes.
        size: u64,
    },
    /// The uncompressed copy of the base with this digest is being made (once per base).
    MakingPlainCopy {
        /// The base's digest.
        digest: Sha256,
    },
    /// The uncompressed copy of a base was damaged; it is removed and made again.
    PlainCopyDamaged {
        /// The base's digest.
        digest: Sha256,
        /// What was wrong.
        reason: String,
    },
}

/// Where the expected digest came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DigestOrigin {
    /// `sha256:<hex>` in the source.
    Inline,
    /// A SHA256SUMS list fetched (or read) just now.
    Sums {
        /// Its location (redacted).
        location: String,
    },
    /// The copy of a SHA256SUMS list saved when it was last fetched (`--offline`).
    SavedSums {
        /// Its URL (redacted).
        location: String,
        /// When that copy was fetched (RFC 3339), if recorded.
        fetched_at: Option<String>,
    },
}

/// Why bytes already on disk are being hashed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HashPurpose {
    /// A local base image, checked in place.
    LocalBase,
    /// The partial download, so the digest covers it before the rest arrives.
    ResumePrefix,
    /// A cache entry, re-verified on request.
    CacheEntry,
}

/// Why a download started over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RestartReason {
    /// The server answered a Range request with the whole body (no Range support, or the file
    /// changed and `If-Range` did not match).
    RangeIgnored,
    /// The server could not satisfy the range (416) or answered a different range.
    RangeRejected,
    /// A resumed download did not match the digest; trying once more from scratch.
    ResumedMismatch,
}
