//! The HTTP client, the retry policy and small GETs (SHA256SUMS lists).

use std::time::Duration;

use reqwest::StatusCode;
use tokio_util::sync::CancellationToken;
use url::Url;

use crate::error::{Error, Result};
use crate::events::FetchEvent;
use crate::options::FetchOptions;
use crate::source::redact;

/// A failed attempt, and whether trying again could help.
pub(crate) struct Failure {
    pub(crate) error: Error,
    pub(crate) retryable: bool,
}

impl Failure {
    pub(crate) fn fatal(error: Error) -> Self {
        Self {
            error,
            retryable: false,
        }
    }
    pub(crate) fn retry(error: Error) -> Self {
        Self {
            error,
            retryable: true,
        }
    }

    /// Classifies a reqwest error: connect failures, timeouts and cut bodies are retried. (A
    /// body cut mid-stream comes as `Decode` wrapping `Body`: there is no decoding here other
    /// than reading the stream, so both count.)
    pub(crate) fn from_reqwest(url: &Url, err: reqwest::Error) -> Self {
        let retryable = err.is_connect()
            || err.is_timeout()
            || err.is_body()
            || err.is_decode()
            || err.is_request();
        let error = Error::Http {
            url: redact(url),
            source: err.without_url(),
        };
        Self { error, retryable }
    }

    /// Classifies an error status: 5xx, 408 and 429 are retried.
    pub(crate) fn from_status(url: &Url, status: StatusCode) -> Self {
        let retryable = status.is_server_error()
            || status == StatusCode::REQUEST_TIMEOUT
            || status == StatusCode::TOO_MANY_REQUESTS;
        let error = Error::Status {
            url: redact(url),
            status,
        };
        Self { error, retryable }
    }
}

/// The client with the timeouts from `opts`. No proxy is used for loopback addresses.
pub(crate) fn client(opts: &FetchOptions) -> Result<reqwest::Client> {
    reqwest::Client::builder()
        .user_agent(concat!("imgbake/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(opts.connect_timeout)
        .read_timeout(opts.read_timeout)
        .build()
        .map_err(Error::Client)
}

/// Runs `attempt` until it succeeds, fails for good, or the retries are used up. `attempt`
/// reports whether it made progress (received body bytes); progress resets the retry count, so
/// a long download over a flaky link is not limited to `retries` cuts in total.
pub(crate) async fn with_retries<T>(
    opts: &FetchOptions,
    progress: &(dyn Fn(FetchEvent) + Send + Sync),
    cancel: &CancellationToken,
    mut attempt: impl AsyncFnMut() -> std::result::Result<T, (Failure, bool)>,
) -> Result<T> {
    let mut failures = 0u32;
    loop {
        match attempt().await {
            Ok(value) => return Ok(value),
            Err((failure, progressed)) => {
                if progressed {
                    failures = 0;
                }
                if !failure.retryable || failures >= opts.retries {
                    return Err(failure.error);
                }
                let delay = backoff(opts, failures);
                failures += 1;
                progress(FetchEvent::Retrying {
                    attempt: failures,
                    delay,
                    reason: error_line(&failure.error),
                });
                tracing::debug!(
                    attempt = failures,
                    ?delay,
                    "retrying: {}",
                    error_line(&failure.error)
                );
                tokio::select! {
                    () = cancel.cancelled() => return Err(Error::Cancelled),
                    () = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

/// Exponential backoff: `backoff`, 2×, 4×, … capped at `max_backoff`.
fn backoff(opts: &FetchOptions, failures: u32) -> Duration {
    let factor = 1u32.checked_shl(failures.min(16)).unwrap_or(u32::MAX);
    opts.backoff.saturating_mul(factor).min(opts.max_backoff)
}

/// The error and its sources on one line (URLs are already redacted in our errors, and
/// reqwest sources are stripped of theirs).
pub(crate) fn error_line(err: &(dyn std::error::Error + 'static)) -> String {
    let mut line = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        line.push_str(": ");
        line.push_str(&cause.to_string());
        source = cause.source();
    }
    line
}

/// GETs a small body (at most `limit` bytes) with retries.
pub(crate) async fn get_small(
    client: &reqwest::Client,
    url: &Url,
    limit: u64,
    opts: &FetchOptions,
    progress: &(dyn Fn(FetchEvent) + Send + Sync),
    cancel: &CancellationToken,
) -> Result<Vec<u8>> {
    with_retries(opts, progress, cancel, async || {
        let fail = |f| (f, false);
        let send = client.get(url.clone()).send();
        let mut response = tokio::select! {
            () = cancel.cancelled() => return Err(fail(Failure::fatal(Error::Cancelled))),
            sent = send => sent.map_err(|e| fail(Failure::from_reqwest(url, e)))?,
        };
        if !response.status().is_success() {
            return Err(fail(Failure::from_status(url, response.status())));
        }
        let too_large = || {
            fail(Failure::fatal(Error::SumsTooLarge {
                url: redact(url),
                limit,
            }))
        };
        if response.content_length().is_some_and(|n| n > limit) {
            return Err(too_large());
        }
        let mut body = Vec::new();
        loop {
            let chunk = tokio::select! {
                () = cancel.cancelled() => return Err(fail(Failure::fatal(Error::Cancelled))),
                chunk = response.chunk() => chunk.map_err(|e| fail(Failure::from_reqwest(url, e)))?,
            };
            match chunk {
                Some(bytes) => {
                    body.extend_from_slice(&bytes);
                    if body.len() as u64 > limit {
                        return Err(too_large());
                    }
                }
                None => return Ok(body),
            }
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let opts = FetchOptions {
            backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(5),
            ..FetchOptions::default()
        };
        let got: Vec<_> = (0..6).map(|n| backoff(&opts, n).as_millis()).collect();
        assert_eq!(got, [500, 1000, 2000, 4000, 5000, 5000]);
        assert_eq!(backoff(&opts, 1000), Duration::from_secs(5));
    }

    #[test]
    fn statuses_are_classified() {
        let url = Url::parse("https://u:secret@h/x?sig=1").unwrap();
        for (code, retry) in [
            (500, true),
            (503, true),
            (429, true),
            (408, true),
            (404, false),
            (403, false),
        ] {
            let f = Failure::from_status(&url, StatusCode::from_u16(code).unwrap());
            assert_eq!(f.retryable, retry, "{code}");
            let text = f.error.to_string();
            assert!(
                !text.contains("secret") && !text.contains("sig=1"),
                "{text}"
            );
        }
    }
}
