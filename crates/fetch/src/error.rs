//! The crate's error type.

use std::path::PathBuf;

use digest::Sha256;

/// Everything that can go wrong while resolving, fetching or caching a base image.
///
/// URLs in messages are always redacted (no password, no query string), so an error can be
/// printed or logged as it is.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Neither `$XDG_CACHE_HOME` nor `$HOME` is set, so there is no default cache directory.
    #[error("no cache directory: neither XDG_CACHE_HOME nor HOME is set (pass a cache dir)")]
    NoCacheDir,

    /// A file or directory inside the cache could not be created, read or written.
    #[error("cache i/o failed: {action} {}", path.display())]
    CacheIo {
        /// What was being done (`create`, `rename`, …).
        action: &'static str,
        /// The path it was done to.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },

    /// A local base image or SHA256SUMS file could not be read.
    #[error("cannot read {}", path.display())]
    ReadLocal {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },

    /// The `file://` URL does not name a local path.
    #[error("not a local file url: {url}")]
    BadFileUrl {
        /// The URL as given.
        url: String,
    },

    /// A checksum spec is neither `sha256:<64 hex>` nor `file:<url or path>`.
    #[error("bad checksum `{spec}`: {reason}")]
    BadChecksum {
        /// The spec as given.
        spec: String,
        /// What is wrong with it.
        reason: &'static str,
    },

    /// The image location has no file name to look up in a SHA256SUMS list.
    #[error("cannot look up {location} in a SHA256SUMS list: it has no file name")]
    NoFileName {
        /// The location (redacted).
        location: String,
    },

    /// The HTTP client could not be built.
    #[error("cannot build the http client")]
    Client(#[source] reqwest::Error),

    /// A request failed without an HTTP status (connect, timeout, cut body), after all retries.
    #[error("request to {url} failed")]
    Http {
        /// The URL (redacted).
        url: String,
        /// The cause (without the URL).
        #[source]
        source: reqwest::Error,
    },

    /// The server answered with an error status (after all retries for 5xx).
    #[error("{url} answered HTTP {status}")]
    Status {
        /// The URL (redacted).
        url: String,
        /// The status code and reason, e.g. `404 Not Found`.
        status: reqwest::StatusCode,
    },

    /// The server's answer to a Range request does not fit the partial download.
    #[error("{url} answered a range request with `{content_range}` (expected bytes {offset}-)")]
    BadContentRange {
        /// The URL (redacted).
        url: String,
        /// The Content-Range header as received.
        content_range: String,
        /// The offset that was asked for.
        offset: u64,
    },

    /// A SHA256SUMS list is larger than any real one.
    #[error("checksum list {url} is larger than {limit} bytes")]
    SumsTooLarge {
        /// Where the list came from (redacted).
        url: String,
        /// The limit.
        limit: u64,
    },

    /// The SHA256SUMS list has no line for the image's file name.
    #[error("checksum list {url} has no entry for `{name}`")]
    SumsMissing {
        /// Where the list came from (redacted).
        url: String,
        /// The file name looked up.
        name: String,
    },

    /// The SHA256SUMS line for the image is not `<64 hex> [ *]name`.
    #[error("checksum list {url}, line {line}: malformed entry for `{name}`")]
    SumsMalformed {
        /// Where the list came from (redacted).
        url: String,
        /// The file name looked up.
        name: String,
        /// 1-based line number.
        line: usize,
    },

    /// The SHA256SUMS list has two different digests for the image's file name.
    #[error("checksum list {url} has conflicting entries for `{name}`")]
    SumsConflict {
        /// Where the list came from (redacted).
        url: String,
        /// The file name looked up.
        name: String,
    },

    /// The image's content does not have the expected digest. The download was deleted.
    #[error("checksum mismatch for {location}: expected sha256:{expected}, got sha256:{actual}")]
    Mismatch {
        /// The image location (redacted).
        location: String,
        /// The digest the checksum spec asked for.
        expected: Sha256,
        /// The digest of what was received or found.
        actual: Sha256,
    },

    /// `--offline` and the image is not in the cache.
    #[error("offline: sha256:{digest} ({location}) is not in the cache {}", cache.display())]
    OfflineMiss {
        /// The expected digest.
        digest: Sha256,
        /// The image location (redacted).
        location: String,
        /// The cache directory searched.
        cache: PathBuf,
    },

    /// `--offline` with a `file:<url>` checksum that was never fetched before.
    #[error("offline: checksum list {url} was never fetched, so the expected digest is unknown")]
    OfflineSums {
        /// The SHA256SUMS URL (redacted).
        url: String,
    },

    /// A cache entry's size differs from what was recorded when it was published.
    #[error("cache entry {} is damaged: {actual} bytes, recorded {recorded} (remove it and fetch again)", path.display())]
    CacheDamaged {
        /// The entry.
        path: PathBuf,
        /// Its size now.
        actual: u64,
        /// The size recorded at publish time.
        recorded: u64,
    },

    /// The cache's file system is full, or would be: the path, the space needed, the space
    /// free. A partial download is kept for resuming once there is room.
    #[error(transparent)]
    NoSpace(#[from] digest::NoSpace),
    /// The uncompressed copy of a base could not be made.
    #[error("cannot make an uncompressed copy of {}: {detail}", base.display())]
    PlainCopy {
        /// The base image.
        base: PathBuf,
        /// What went wrong (qemu-img's message).
        detail: String,
    },

    /// The fetch was cancelled. A partial download is kept for resuming.
    #[error("fetch cancelled")]
    Cancelled,
}

/// `Result` with this crate's [`enum@Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The full file system behind this error, if that is what it is.
    pub fn no_space(&self) -> Option<&digest::NoSpace> {
        match self {
            Error::NoSpace(full) => Some(full),
            _ => None,
        }
    }

    pub(crate) fn cache_io(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| match digest::NoSpace::from_io(&path, None, &source) {
            Some(full) => Error::NoSpace(full),
            None => Error::CacheIo {
                action,
                path,
                source,
            },
        }
    }
}
