//! Streaming download into `.partial/<sha>.part`, hashed on the fly, resumable with `Range`.
//!
//! Resume protocol: next to the `.part` file a small JSON record keeps a hash of the URL, the
//! server's validator (a strong `ETag`, else `Last-Modified`) and the total size. A later
//! attempt with bytes on disk sends `Range: bytes=<len>-` plus `If-Range: <validator>`:
//! - `206` with a matching `Content-Range` appends the rest; the SHA-256 state is rebuilt by
//!   re-hashing the bytes on disk first (≈2 GB/s), or kept in memory within one fetch;
//! - `200` (no Range support, or the file changed) truncates and starts from byte 0;
//! - `416` or a different range discards the partial and retries from 0.
//!
//! Without any validator the Range request is still sent (no `If-Range`); the final digest
//! check catches a changed file, and the caller then retries once from scratch.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use digest::Hasher;
use reqwest::StatusCode;
use reqwest::header::{CONTENT_RANGE, ETAG, HeaderMap, IF_RANGE, LAST_MODIFIED, RANGE};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use url::Url;

use crate::error::{Error, Result};
use crate::events::{FetchEvent, HashPurpose, RestartReason};
use crate::hash::hash_file_into;
use crate::http::{Failure, with_retries};
use crate::options::FetchOptions;
use crate::source::redact;
use digest::Sha256;

/// A finished download on disk (fsynced), not yet verified.
pub(crate) struct Downloaded {
    pub(crate) digest: Sha256,
    pub(crate) size: u64,
    /// Bytes reused from an earlier run's partial download (0 if none).
    pub(crate) resumed_from: u64,
}

/// Where the partial download and its record live.
pub(crate) struct PartFiles {
    pub(crate) part: PathBuf,
    pub(crate) record: PathBuf,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
enum Validator {
    ETag(String),
    LastModified(String),
}

#[derive(Serialize, Deserialize, Clone, Debug)]
struct PartRecord {
    /// SHA-256 of the full URL: the URL itself may hold credentials and is not stored.
    url_sha256: String,
    validator: Option<Validator>,
    total: Option<u64>,
}

/// The hash of the bytes in the `.part` file so far.
struct HashState {
    hasher: Hasher,
    position: u64,
}

/// Interval between `Downloading` events.
const PROGRESS_EVERY: Duration = Duration::from_millis(100);
/// Chunks in flight to each of the writer and hasher threads.
const QUEUE: usize = 64;

/// Downloads `url` into `files.part` and returns its digest, retrying as `opts` says.
pub(crate) async fn download(
    client: &reqwest::Client,
    url: &Url,
    files: &PartFiles,
    opts: &FetchOptions,
    progress: &(dyn Fn(FetchEvent) + Send + Sync),
    cancel: &CancellationToken,
) -> Result<Downloaded> {
    let mut state = HashState {
        hasher: Hasher::new(),
        position: 0,
    };
    let mut first_offset = None;
    let job = Job {
        client,
        url,
        url_sha256: Sha256::of(url.as_str().as_bytes()).to_hex(),
        files,
        progress,
        cancel,
    };
    let (digest, size) = with_retries(opts, progress, cancel, async || {
        job.attempt(&mut state, &mut first_offset).await
    })
    .await?;
    Ok(Downloaded {
        digest,
        size,
        resumed_from: first_offset.unwrap_or(0),
    })
}

struct Job<'a> {
    client: &'a reqwest::Client,
    url: &'a Url,
    url_sha256: String,
    files: &'a PartFiles,
    progress: &'a (dyn Fn(FetchEvent) + Send + Sync),
    cancel: &'a CancellationToken,
}

type Attempt<T> = std::result::Result<T, (Failure, bool)>;

impl Job<'_> {
    async fn attempt(
        &self,
        state: &mut HashState,
        first_offset: &mut Option<u64>,
    ) -> Attempt<(Sha256, u64)> {
        let no_progress = |f| (f, false);
        let io = |action, path: &Path| {
            let path = path.to_owned();
            move |e| (Failure::fatal(Error::cache_io(action, path)(e)), false)
        };
        let (offset, record) = self.usable_partial();
        if first_offset.is_none() {
            *first_offset = Some(offset);
        }
        // A complete partial from a run that stopped before publishing: just hash it.
        if let Some(total) = record.as_ref().and_then(|r| r.total)
            && offset == total
        {
            self.rehash(state, offset)
                .await
                .map_err(|e| no_progress(Failure::fatal(e)))?;
            let hasher = std::mem::take(&mut state.hasher);
            return Ok((hasher.finish(), total));
        }

        let mut request = self.client.get(self.url.clone());
        if offset > 0 {
            request = request.header(RANGE, format!("bytes={offset}-"));
            if let Some(validator) = record.as_ref().and_then(|r| r.validator.as_ref()) {
                let value = match validator {
                    Validator::ETag(v) | Validator::LastModified(v) => v.as_str(),
                };
                request = request.header(IF_RANGE, value);
            }
        }
        let mut response = tokio::select! {
            () = self.cancel.cancelled() => return Err(no_progress(Failure::fatal(Error::Cancelled))),
            sent = request.send() => sent.map_err(|e| no_progress(Failure::from_reqwest(self.url, e)))?,
        };

        let status = response.status();
        let (start, total) = match status {
            StatusCode::PARTIAL_CONTENT => {
                let header = header_str(response.headers(), CONTENT_RANGE);
                match parse_content_range(&header) {
                    Some((first, total)) if offset > 0 && first == offset => (offset, total),
                    _ => {
                        self.discard();
                        (self.progress)(FetchEvent::RestartedFromZero {
                            reason: RestartReason::RangeRejected,
                        });
                        return Err(no_progress(Failure::retry(Error::BadContentRange {
                            url: redact(self.url),
                            content_range: header,
                            offset,
                        })));
                    }
                }
            }
            StatusCode::OK => {
                if offset > 0 {
                    (self.progress)(FetchEvent::RestartedFromZero {
                        reason: RestartReason::RangeIgnored,
                    });
                }
                (0, response.content_length())
            }
            StatusCode::RANGE_NOT_SATISFIABLE if offset > 0 => {
                self.discard();
                (self.progress)(FetchEvent::RestartedFromZero {
                    reason: RestartReason::RangeRejected,
                });
                let mut failure = Failure::from_status(self.url, status);
                failure.retryable = true;
                return Err(no_progress(failure));
            }
            _ => return Err(no_progress(Failure::from_status(self.url, status))),
        };

        // The rest of the image must fit beside what is already there; checked before the
        // partial download is touched, so a rerun with room resumes it.
        if let Some(total) = total {
            digest::ensure_space(&self.files.part, total.saturating_sub(start))
                .map_err(|e| no_progress(Failure::fatal(e.into())))?;
        }
        let record = PartRecord {
            url_sha256: self.url_sha256.clone(),
            validator: validator(response.headers()),
            total,
        };
        let json = serde_json::to_vec(&record).unwrap_or_default();
        crate::cache::write_atomic(&self.files.record, &json)
            .map_err(|e| no_progress(Failure::fatal(e)))?;

        let file = if start == 0 {
            *state = HashState {
                hasher: Hasher::new(),
                position: 0,
            };
            *first_offset = Some(0);
            File::create(&self.files.part).map_err(io("create", &self.files.part))?
        } else {
            if state.position != start {
                self.rehash(state, start)
                    .await
                    .map_err(|e| no_progress(Failure::fatal(e)))?;
            }
            File::options()
                .append(true)
                .open(&self.files.part)
                .map_err(io("open", &self.files.part))?
        };

        (self.progress)(FetchEvent::DownloadStarted {
            url: redact(self.url),
            total,
            resumed_from: start,
        });
        let sink = Sink::spawn(file, std::mem::take(&mut state.hasher));
        let mut done = start;
        let mut last_event = Instant::now();
        let streamed: std::result::Result<(), Failure> = loop {
            let chunk = tokio::select! {
                biased;
                () = self.cancel.cancelled() => break Err(Failure::fatal(Error::Cancelled)),
                chunk = response.chunk() => chunk,
            };
            match chunk {
                Ok(Some(bytes)) => {
                    let len = bytes.len() as u64;
                    if !sink.push(bytes).await {
                        break Ok(()); // The writer failed; `finish` reports why.
                    }
                    done += len;
                    if last_event.elapsed() >= PROGRESS_EVERY {
                        last_event = Instant::now();
                        (self.progress)(FetchEvent::Downloading { done, total });
                    }
                }
                Ok(None) => break Ok(()),
                Err(e) => break Err(Failure::from_reqwest(self.url, e)),
            }
        };
        let (hasher, written) = sink.finish().await;
        state.hasher = hasher;
        state.position = done;
        (self.progress)(FetchEvent::Downloading { done, total });
        let progressed = done > start;
        let file = written.map_err(|e| {
            // The file and hash may now disagree: start over next time.
            state.position = u64::MAX;
            let needed = total.map(|t| t.saturating_sub(start));
            let error = match digest::NoSpace::from_io(&self.files.part, needed, &e) {
                Some(full) => Error::NoSpace(full),
                None => Error::cache_io("write", &self.files.part)(e),
            };
            (Failure::fatal(error), progressed)
        })?;
        streamed.map_err(|f| (f, progressed))?;
        if let Some(total) = total
            && done != total
        {
            let short = std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("body ended at byte {done} of {total}"),
            );
            return Err((
                Failure::retry(Error::cache_io("download into", &self.files.part)(short)),
                progressed,
            ));
        }
        let synced = tokio::task::spawn_blocking(move || file.sync_all()).await;
        synced
            .unwrap_or_else(|join| Err(std::io::Error::other(join.to_string())))
            .map_err(|e| {
                (
                    Failure::fatal(Error::cache_io("fsync", &self.files.part)(e)),
                    progressed,
                )
            })?;
        let hasher = std::mem::take(&mut state.hasher);
        state.position = 0;
        Ok((hasher.finish(), done))
    }

    /// The partial download's length and record, when the record is for this URL.
    fn usable_partial(&self) -> (u64, Option<PartRecord>) {
        let record: Option<PartRecord> = std::fs::read(&self.files.record)
            .ok()
            .and_then(|json| serde_json::from_slice(&json).ok())
            .filter(|r: &PartRecord| r.url_sha256 == self.url_sha256);
        let len = std::fs::metadata(&self.files.part)
            .map(|m| m.len())
            .unwrap_or(0);
        match record {
            Some(record) if len > 0 && record.total.is_none_or(|t| len <= t) => (len, Some(record)),
            _ => (0, None),
        }
    }

    fn discard(&self) {
        let _ = std::fs::remove_file(&self.files.part);
        let _ = std::fs::remove_file(&self.files.record);
    }

    /// Rebuilds the hash state from the first `len` bytes of the partial download.
    async fn rehash(&self, state: &mut HashState, len: u64) -> Result<()> {
        let progress = |done| {
            (self.progress)(FetchEvent::Hashing {
                purpose: HashPurpose::ResumePrefix,
                done,
                total: len,
            });
        };
        let (hasher, _) = hash_file_into(
            &self.files.part,
            Some(len),
            Hasher::new(),
            &progress,
            self.cancel,
        )
        .await?;
        *state = HashState {
            hasher,
            position: len,
        };
        Ok(())
    }
}

fn header_str(headers: &HeaderMap, name: reqwest::header::HeaderName) -> String {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

/// The validator to send back in `If-Range`: a strong ETag (weak ones are not allowed there),
/// else Last-Modified.
fn validator(headers: &HeaderMap) -> Option<Validator> {
    let etag = header_str(headers, ETAG);
    if !etag.is_empty() && !etag.starts_with("W/") {
        return Some(Validator::ETag(etag));
    }
    let modified = header_str(headers, LAST_MODIFIED);
    (!modified.is_empty()).then_some(Validator::LastModified(modified))
}

/// Parses `bytes <first>-<last>/<total or *>` into (first, total).
fn parse_content_range(value: &str) -> Option<(u64, Option<u64>)> {
    let rest = value.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (first, last) = range.split_once('-')?;
    let first: u64 = first.trim().parse().ok()?;
    let last: u64 = last.trim().parse().ok()?;
    let total = match total.trim() {
        "*" => None,
        t => Some(t.parse::<u64>().ok()?),
    };
    let consistent = first <= last && total.is_none_or(|t| last < t);
    consistent.then_some((first, total))
}

/// Writes and hashes the body on two threads while the async side receives the next chunk: on a
/// fast link, receiving, SHA-256 and the page-cache copy each take a similar share of a core.
struct Sink {
    to_writer: mpsc::Sender<Bytes>,
    to_hasher: mpsc::Sender<Bytes>,
    writer: tokio::task::JoinHandle<std::io::Result<File>>,
    hasher: tokio::task::JoinHandle<Hasher>,
}

impl Sink {
    fn spawn(file: File, mut hasher: Hasher) -> Self {
        let (to_writer, mut writer_rx) = mpsc::channel::<Bytes>(QUEUE);
        let (to_hasher, mut hasher_rx) = mpsc::channel::<Bytes>(QUEUE);
        let writer = tokio::task::spawn_blocking(move || {
            let mut out = BufWriter::with_capacity(1 << 20, file);
            while let Some(chunk) = writer_rx.blocking_recv() {
                out.write_all(&chunk)?;
            }
            out.into_inner().map_err(|e| e.into_error())
        });
        let hasher = tokio::task::spawn_blocking(move || {
            while let Some(chunk) = hasher_rx.blocking_recv() {
                hasher.update(&chunk);
            }
            hasher
        });
        Self {
            to_writer,
            to_hasher,
            writer,
            hasher,
        }
    }

    /// Queues a chunk for both threads; false when the writer has stopped (an I/O error).
    async fn push(&self, chunk: Bytes) -> bool {
        let wrote = self.to_writer.send(chunk.clone()).await.is_ok();
        let hashed = self.to_hasher.send(chunk).await.is_ok();
        wrote && hashed
    }

    /// Waits for both threads: the hasher (fed exactly what was pushed) and the flushed file.
    async fn finish(self) -> (Hasher, std::io::Result<File>) {
        drop(self.to_writer);
        drop(self.to_hasher);
        let written = match self.writer.await {
            Ok(result) => result,
            Err(join) => Err(std::io::Error::other(join.to_string())),
        };
        // The hasher thread cannot fail; a panic there is a bug worth propagating.
        let hasher = match self.hasher.await {
            Ok(hasher) => hasher,
            Err(join) => std::panic::resume_unwind(join.into_panic()),
        };
        (hasher, written)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range() {
        assert_eq!(
            parse_content_range("bytes 100-199/200"),
            Some((100, Some(200)))
        );
        assert_eq!(parse_content_range("bytes 0-0/*"), Some((0, None)));
        assert_eq!(parse_content_range("bytes 5-4/10"), None);
        assert_eq!(parse_content_range("bytes 5-10/10"), None);
        assert_eq!(parse_content_range("bytes */10"), None);
        assert_eq!(parse_content_range("items 1-2/3"), None);
        assert_eq!(parse_content_range(""), None);
    }

    #[test]
    fn validators() {
        let mut h = HeaderMap::new();
        assert_eq!(validator(&h), None);
        h.insert(
            LAST_MODIFIED,
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap(),
        );
        assert_eq!(
            validator(&h),
            Some(Validator::LastModified(
                "Wed, 21 Oct 2015 07:28:00 GMT".into()
            ))
        );
        h.insert(ETAG, "W/\"weak\"".parse().unwrap());
        assert!(matches!(validator(&h), Some(Validator::LastModified(_))));
        h.insert(ETAG, "\"strong\"".parse().unwrap());
        assert_eq!(validator(&h), Some(Validator::ETag("\"strong\"".into())));
    }
}
