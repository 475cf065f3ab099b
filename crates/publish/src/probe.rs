//! The check the region API makes of an image URI, made first by imgbake: an anonymous
//! `GET` with `Range: bytes=0-511`, and bytes 510–511 must be `55 AA` (the MBR signature, which
//! a GPT disk carries in its protective MBR). The API answers 422 otherwise; checking first
//! turns that into a message saying what is wrong, before anything is registered.

use std::fmt;
use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{CONTENT_RANGE, RANGE};
use tokio_util::sync::CancellationToken;
use url::Url;

use crate::retry::{self, RetryPolicy};
use crate::s3::parse_http_url;
use crate::{Error, Result};

/// Bytes the API reads.
const HEAD_LEN: usize = 512;

/// Why an image URI would be refused.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum UriProblem {
    /// 401 or 403 to a request without credentials.
    NotPublic {
        /// The HTTP status.
        status: u16,
    },
    /// 404.
    NotFound,
    /// Another non-success status.
    Status {
        /// The HTTP status.
        status: u16,
    },
    /// Fewer than 512 bytes.
    TooShort {
        /// Bytes there are.
        len: usize,
    },
    /// Bytes 510–511 are not `55 AA`.
    NotRaw {
        /// What the first bytes look like, when recognised (`qcow2`, `gzip`, …).
        format: Option<&'static str>,
        /// Bytes 510 and 511.
        signature: [u8; 2],
    },
}

impl fmt::Display for UriProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UriProblem::NotPublic { status } => write!(
                f,
                "is not readable without credentials (HTTP {status}); the region API reads it \
                 anonymously: make the object public (imgbake upload --public) or let the \
                 bucket policy allow anonymous reads (s3:GetObject for everyone)"
            ),
            UriProblem::NotFound => write!(
                f,
                "does not exist (HTTP 404); upload the RAW image first, or fix the URL"
            ),
            UriProblem::Status { status } => write!(
                f,
                "answered HTTP {status} to a ranged GET of its first 512 bytes; the region API \
                 needs it readable without credentials"
            ),
            UriProblem::TooShort { len } => write!(
                f,
                "holds {len} bytes; a disk image has at least 512 (the MBR sector)"
            ),
            UriProblem::NotRaw {
                format: Some(format),
                ..
            } => write!(
                f,
                "is a {format} file, not a RAW disk; the region API imports RAW only: upload \
                 the .raw export"
            ),
            UriProblem::NotRaw {
                format: None,
                signature: [a, b],
            } => write!(
                f,
                "is not a RAW disk: bytes 510-511 are {a:02X} {b:02X}, not 55 AA (no MBR or \
                 protective MBR); the region API imports RAW disks only: upload the .raw export"
            ),
        }
    }
}

/// A URI that passed the check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadableImage {
    /// The URI.
    pub uri: Url,
    /// The object's size, when the server said (`Content-Range` or `Content-Length`).
    pub size: Option<u64>,
}

/// Reads the first 512 bytes of image URIs anonymously. Never sends credentials.
#[derive(Debug, Clone)]
pub struct UriCheck {
    http: reqwest::Client,
    retry: RetryPolicy,
}

impl UriCheck {
    /// A checker that retries connection errors and 5xx answers per `retry`.
    pub fn new(retry: RetryPolicy) -> Result<Self> {
        let http = reqwest::Client::builder()
            .user_agent(concat!("imgbake/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(30))
            .read_timeout(Duration::from_secs(60))
            .build()
            .map_err(|source| Error::HttpClient { source })?;
        Ok(Self { http, retry })
    }

    /// Checks `uri` the way the region API will: readable without credentials, a RAW disk.
    pub async fn check(&self, uri: &str, cancel: &CancellationToken) -> Result<ReadableImage> {
        let url = parse_http_url("image", uri)?;
        let problem = |problem| Error::ImageUri {
            uri: url.to_string(),
            problem,
        };
        let mut attempt = 1;
        loop {
            let sent = async {
                let mut response = self
                    .http
                    .get(url.clone())
                    .header(RANGE, "bytes=0-511")
                    .send()
                    .await?;
                let status = response.status();
                let size = total_size(&response);
                let mut head = Vec::with_capacity(HEAD_LEN);
                // A server that ignores Range sends the whole disk: stop after 512 bytes.
                if status.is_success() {
                    while head.len() < HEAD_LEN {
                        match response.chunk().await? {
                            Some(chunk) => head.extend_from_slice(&chunk),
                            None => break,
                        }
                    }
                }
                Ok::<_, reqwest::Error>((status, size, head))
            };
            let outcome = tokio::select! {
                outcome = sent => outcome,
                () = cancel.cancelled() => return Err(Error::ImageUriCancelled { uri: url.to_string() }),
            };
            let retryable = match outcome {
                Ok((status, size, head)) if status.is_success() => {
                    examine(&head).map_err(problem)?;
                    tracing::debug!(uri = %url, status = status.as_u16(), "image uri is a readable RAW disk");
                    return Ok(ReadableImage { uri: url, size });
                }
                Ok((status, _, _)) => match status {
                    StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                        return Err(problem(UriProblem::NotPublic {
                            status: status.as_u16(),
                        }));
                    }
                    StatusCode::NOT_FOUND => return Err(problem(UriProblem::NotFound)),
                    // Asked for 0-511 and refused: the object is shorter than one byte.
                    StatusCode::RANGE_NOT_SATISFIABLE => {
                        return Err(problem(UriProblem::TooShort { len: 0 }));
                    }
                    s if s.is_server_error() || s == StatusCode::TOO_MANY_REQUESTS => {
                        problem(UriProblem::Status { status: s.as_u16() })
                    }
                    s => {
                        return Err(problem(UriProblem::Status { status: s.as_u16() }));
                    }
                },
                Err(source) => Error::ImageUriTransport {
                    uri: url.to_string(),
                    attempts: attempt,
                    source,
                },
            };
            if !self.retry.may_retry(attempt) {
                return Err(retryable);
            }
            if !retry::wait(self.retry.backoff(attempt, None), cancel).await {
                return Err(Error::ImageUriCancelled {
                    uri: url.to_string(),
                });
            }
            attempt += 1;
        }
    }
}

/// The object's total size from `Content-Range: bytes 0-511/<total>`, else `Content-Length`
/// of a 200.
fn total_size(response: &reqwest::Response) -> Option<u64> {
    if let Some(range) = response.headers().get(CONTENT_RANGE) {
        return range.to_str().ok()?.rsplit('/').next()?.parse().ok();
    }
    (response.status() == StatusCode::OK)
        .then(|| response.content_length())
        .flatten()
}

/// Checks the first bytes of an image: at least 512, ending in `55 AA`.
pub(crate) fn examine(head: &[u8]) -> std::result::Result<(), UriProblem> {
    if head.len() < HEAD_LEN {
        return Err(UriProblem::TooShort { len: head.len() });
    }
    let signature = [head[510], head[511]];
    if signature == [0x55, 0xAA] {
        return Ok(());
    }
    Err(UriProblem::NotRaw {
        format: recognise(head),
        signature,
    })
}

/// Names the formats an image URI is most likely to point at by mistake.
fn recognise(head: &[u8]) -> Option<&'static str> {
    const MAGIC: &[(&[u8], &str)] = &[
        (b"QFI\xfb", "qcow2"),
        (b"\x1f\x8b", "gzip"),
        (b"\xfd7zXZ\x00", "xz"),
        (b"\x28\xb5\x2f\xfd", "zstd"),
        (b"KDMV", "VMDK"),
        (b"vhdxfile", "VHDX"),
        (b"conectix", "VHD"),
        (b"<?xml", "XML (an error page?)"),
        (b"<!DOCTYPE", "HTML page"),
        (b"<html", "HTML page"),
    ];
    MAGIC
        .iter()
        .find(|(magic, _)| head.starts_with(magic))
        .map(|(_, name)| *name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sector(end: [u8; 2]) -> Vec<u8> {
        let mut s = vec![0u8; 512];
        s[510..].copy_from_slice(&end);
        s
    }

    #[test]
    fn a_boot_sector_passes_and_others_are_named() {
        assert_eq!(examine(&sector([0x55, 0xAA])), Ok(()));
        let mut big = sector([0x55, 0xAA]);
        big.extend_from_slice(&[1; 100]);
        assert_eq!(examine(&big), Ok(()));
        assert_eq!(
            examine(&[0x55; 100]),
            Err(UriProblem::TooShort { len: 100 })
        );
        let mut qcow = sector([0, 0]);
        qcow[..4].copy_from_slice(b"QFI\xfb");
        let err = examine(&qcow).unwrap_err();
        assert_eq!(
            err,
            UriProblem::NotRaw {
                format: Some("qcow2"),
                signature: [0, 0]
            }
        );
        assert!(err.to_string().contains("qcow2 file, not a RAW disk"));
        let err = examine(&sector([0x12, 0x34])).unwrap_err();
        assert!(err.to_string().contains("12 34, not 55 AA"), "{err}");
    }
}
