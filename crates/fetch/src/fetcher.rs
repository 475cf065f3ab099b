//! `BaseCache::fetch`: resolve the expected digest, then cache hit, local hash or download.

use std::path::{Path, PathBuf};

use digest::Hasher;
use tokio_util::sync::CancellationToken;
use url::Url;

use crate::cache::BaseCache;
use crate::download::{PartFiles, download};
use crate::error::{Error, Result};
use crate::events::{DigestOrigin, FetchEvent, HashPurpose, RestartReason};
use crate::hash::hash_file_into;
use crate::http;
use crate::local::{LocalCheck, check_local};
use crate::options::FetchOptions;
use crate::source::{BaseSource, ExpectedDigest, Location, redact};
use crate::sums::{self, LookupError};
use digest::Sha256;

/// No real SHA256SUMS list comes near this.
const SUMS_LIMIT: u64 = 4 << 20;

/// A verified base image on disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CachedBase {
    /// The image: a cache entry, or the local file itself for local sources.
    pub path: PathBuf,
    /// Its SHA-256 (equal to the expected digest).
    pub digest: Sha256,
    /// Its size in bytes.
    pub size: u64,
    /// Where it came from.
    pub source: Location,
    /// How this fetch got it.
    pub outcome: Outcome,
}

/// How a fetch obtained the image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// It was already in the cache; nothing was downloaded.
    CacheHit,
    /// It was downloaded into the cache, reusing `resumed_from` bytes of an earlier attempt.
    Downloaded {
        /// Bytes of an earlier run's partial download that were kept.
        resumed_from: u64,
    },
    /// A local file, hashed in place (not copied into the cache).
    LocalFile,
}

/// The progress callback type [`BaseCache::fetch`] takes.
pub type Progress<'a> = &'a (dyn Fn(FetchEvent) + Send + Sync);

impl BaseCache {
    /// Fetches `source` into this cache (or checks a local file in place) and returns the
    /// verified image.
    ///
    /// - The expected digest comes first: inline, or from the SHA256SUMS list (one GET; with
    ///   `offline`, from the copy saved when it was last fetched).
    /// - A cache hit returns at once. Otherwise, under a per-digest lock (a second concurrent
    ///   fetch waits, then finds the hit), the image is streamed to `.partial/`, hashed on the
    ///   fly, resumed with `Range` after a cut, and renamed into the cache only if it matches.
    /// - A local source (`file://` or a path) is hashed where it is and returned as is.
    ///
    /// On a mismatch the download is deleted and [`Error::Mismatch`] names both digests. On
    /// cancel the partial download is kept for the next run to resume.
    pub async fn fetch(
        &self,
        source: &BaseSource,
        opts: &FetchOptions,
        progress: Progress<'_>,
        cancel: CancellationToken,
    ) -> Result<CachedBase> {
        let client = if opts.offline {
            None
        } else {
            Some(http::client(opts)?)
        };
        let (expected, origin) = self
            .resolve_digest(source, client.as_ref(), opts, progress, &cancel)
            .await?;
        progress(FetchEvent::DigestResolved {
            digest: expected,
            origin,
        });
        match &source.location {
            Location::File(path) => {
                let local = LocalCheck {
                    path,
                    source,
                    expected,
                    record: (!opts.verify_cache_hits).then(|| self.local_record_path(path)),
                };
                check_local(&local, progress, &cancel).await
            }
            Location::Http(url) => match client {
                None => self
                    .cached(source, expected, opts, progress, &cancel)
                    .await?
                    .ok_or_else(|| Error::OfflineMiss {
                        digest: expected,
                        location: redact(url),
                        cache: self.dir().to_owned(),
                    }),
                Some(client) => {
                    let wanted = Wanted {
                        client: &client,
                        url,
                        source,
                        expected,
                        opts,
                    };
                    self.download_locked(&wanted, progress, &cancel).await
                }
            },
        }
    }

    /// The cache entry for `expected`, re-hashed first when the options ask for it.
    async fn cached(
        &self,
        source: &BaseSource,
        expected: Sha256,
        opts: &FetchOptions,
        progress: Progress<'_>,
        cancel: &CancellationToken,
    ) -> Result<Option<CachedBase>> {
        let Some(entry) = self.get(&expected)? else {
            return Ok(None);
        };
        if opts.verify_cache_hits {
            let total = entry.size;
            let report = |done| {
                progress(FetchEvent::Hashing {
                    purpose: HashPurpose::CacheEntry,
                    done,
                    total,
                });
            };
            let (hasher, _) =
                hash_file_into(&entry.path, None, Hasher::new(), &report, cancel).await?;
            let actual = hasher.finish();
            if actual != expected {
                return Err(Error::Mismatch {
                    location: entry.path.display().to_string(),
                    expected,
                    actual,
                });
            }
        }
        progress(FetchEvent::CacheHit {
            digest: expected,
            path: entry.path.clone(),
        });
        Ok(Some(CachedBase {
            path: entry.path,
            digest: expected,
            size: entry.size,
            source: source.location.clone(),
            outcome: Outcome::CacheHit,
        }))
    }

    async fn download_locked(
        &self,
        wanted: &Wanted<'_>,
        progress: Progress<'_>,
        cancel: &CancellationToken,
    ) -> Result<CachedBase> {
        let Wanted {
            client,
            url,
            source,
            expected,
            opts,
        } = *wanted;
        if let Some(hit) = self
            .cached(source, expected, opts, progress, cancel)
            .await?
        {
            return Ok(hit);
        }
        let _lock = self.lock(&expected, progress, cancel).await?;
        // Whoever held the lock may have just published it.
        if let Some(hit) = self
            .cached(source, expected, opts, progress, cancel)
            .await?
        {
            return Ok(hit);
        }
        let files = PartFiles {
            part: self.part_path(&expected),
            record: self.part_record_path(&expected),
        };
        let mut got = download(client, url, &files, opts, progress, cancel).await?;
        if got.digest != expected && got.resumed_from > 0 {
            // The bytes kept from an earlier run may be from another version of the file
            // (a server without validators): one more try from scratch settles it.
            self.discard_partial(&expected);
            progress(FetchEvent::RestartedFromZero {
                reason: RestartReason::ResumedMismatch,
            });
            got = download(client, url, &files, opts, progress, cancel).await?;
        }
        if got.digest != expected {
            self.discard_partial(&expected);
            return Err(Error::Mismatch {
                location: redact(url),
                expected,
                actual: got.digest,
            });
        }
        progress(FetchEvent::Verified {
            digest: expected,
            size: got.size,
        });
        let path = self.publish(&expected, &redact(url), got.size)?;
        Ok(CachedBase {
            path,
            digest: expected,
            size: got.size,
            source: source.location.clone(),
            outcome: Outcome::Downloaded {
                resumed_from: got.resumed_from,
            },
        })
    }

    async fn resolve_digest(
        &self,
        source: &BaseSource,
        client: Option<&reqwest::Client>,
        opts: &FetchOptions,
        progress: Progress<'_>,
        cancel: &CancellationToken,
    ) -> Result<(Sha256, DigestOrigin)> {
        let list = match &source.checksum {
            ExpectedDigest::Sha256(digest) => return Ok((*digest, DigestOrigin::Inline)),
            ExpectedDigest::SumsFile(list) => list,
        };
        let name = source
            .location
            .file_name()
            .ok_or_else(|| Error::NoFileName {
                location: source.location.redacted(),
            })?;
        let (text, origin) = match (list, client) {
            (Location::File(path), _) => (
                read_local_sums(path)?,
                DigestOrigin::Sums {
                    location: path.display().to_string(),
                },
            ),
            (Location::Http(url), Some(client)) => {
                let text = http::get_small(client, url, SUMS_LIMIT, opts, progress, cancel).await?;
                self.save_sums(url.as_str(), &redact(url), &text)?;
                (
                    text,
                    DigestOrigin::Sums {
                        location: redact(url),
                    },
                )
            }
            (Location::Http(url), None) => {
                let (text, fetched_at) = self
                    .saved_sums(url.as_str())
                    .ok_or_else(|| Error::OfflineSums { url: redact(url) })?;
                (
                    text,
                    DigestOrigin::SavedSums {
                        location: redact(url),
                        fetched_at,
                    },
                )
            }
        };
        let text = String::from_utf8_lossy(&text);
        let shown = list.redacted();
        let digest = sums::lookup(&text, &name).map_err(|e| match e {
            LookupError::Missing => Error::SumsMissing {
                url: shown.clone(),
                name: name.clone(),
            },
            LookupError::Malformed(line) => Error::SumsMalformed {
                url: shown.clone(),
                name: name.clone(),
                line,
            },
            LookupError::Conflict => Error::SumsConflict {
                url: shown.clone(),
                name: name.clone(),
            },
        })?;
        Ok((digest, origin))
    }
}

fn read_local_sums(path: &Path) -> Result<Vec<u8>> {
    let read = |source| Error::ReadLocal {
        path: path.to_owned(),
        source,
    };
    let len = std::fs::metadata(path).map_err(read)?.len();
    if len > SUMS_LIMIT {
        return Err(Error::SumsTooLarge {
            url: path.display().to_string(),
            limit: SUMS_LIMIT,
        });
    }
    std::fs::read(path).map_err(read)
}

/// One download: where from, what it must hash to, how.
#[derive(Clone, Copy)]
struct Wanted<'a> {
    client: &'a reqwest::Client,
    url: &'a Url,
    source: &'a BaseSource,
    expected: Sha256,
    opts: &'a FetchOptions,
}
