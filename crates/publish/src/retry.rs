//! Bounded retries with exponential backoff, shared by the S3 client and the API registrar.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// How often and how patiently a failed request is retried. Only transient failures are
/// retried: connection errors, 5xx answers, 429 and S3's `SlowDown`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Total attempts, the first included (at least 1).
    pub attempts: u32,
    /// Wait before the second attempt; doubled for each further attempt.
    pub initial_backoff: Duration,
    /// Upper bound for one wait (also caps a server's `Retry-After`).
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempts: 5,
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(10),
        }
    }
}

impl RetryPolicy {
    /// The wait after failed attempt `attempt` (1-based): exponential, capped, with jitter in
    /// the upper half so parallel clients spread out. A server's `Retry-After` wins when given.
    pub(crate) fn backoff(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        if let Some(wait) = retry_after {
            return wait.min(self.max_backoff);
        }
        let exp = attempt.saturating_sub(1).min(20);
        let full = self
            .initial_backoff
            .saturating_mul(1u32 << exp)
            .min(self.max_backoff);
        let half = full / 2;
        let jitter_ms = u64::try_from(half.as_millis()).unwrap_or(u64::MAX);
        half + Duration::from_millis(if jitter_ms == 0 {
            0
        } else {
            rand::random_range(0..=jitter_ms)
        })
    }

    /// True when another attempt is allowed after `attempt` (1-based) failed.
    pub(crate) fn may_retry(&self, attempt: u32) -> bool {
        attempt < self.attempts.max(1)
    }
}

/// Waits `delay` unless `cancel` fires first; returns false when cancelled.
pub(crate) async fn wait(delay: Duration, cancel: &CancellationToken) -> bool {
    tokio::select! {
        () = tokio::time::sleep(delay) => true,
        () = cancel.cancelled() => false,
    }
}

/// Parses a `Retry-After` header given in seconds (the HTTP-date form is ignored).
pub(crate) fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let policy = RetryPolicy {
            attempts: 10,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(1000),
        };
        for attempt in 1..10 {
            let wait = policy.backoff(attempt, None);
            let full = Duration::from_millis(100 * (1 << (attempt - 1))).min(policy.max_backoff);
            assert!(
                wait >= full / 2 && wait <= full,
                "attempt {attempt}: {wait:?}"
            );
        }
    }

    #[test]
    fn retry_after_wins_but_is_capped() {
        let policy = RetryPolicy::default();
        assert_eq!(
            policy.backoff(1, Some(Duration::from_secs(2))),
            Duration::from_secs(2)
        );
        assert_eq!(
            policy.backoff(1, Some(Duration::from_secs(3600))),
            policy.max_backoff
        );
    }

    #[test]
    fn attempts_are_bounded() {
        let policy = RetryPolicy {
            attempts: 3,
            ..RetryPolicy::default()
        };
        assert!(policy.may_retry(1));
        assert!(policy.may_retry(2));
        assert!(!policy.may_retry(3));
        let zero = RetryPolicy {
            attempts: 0,
            ..RetryPolicy::default()
        };
        assert!(!zero.may_retry(1));
    }

    #[test]
    fn parses_retry_after_seconds_only() {
        let mut headers = reqwest::header::HeaderMap::new();
        assert_eq!(retry_after(&headers), None);
        headers.insert(reqwest::header::RETRY_AFTER, "7".parse().unwrap());
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(7)));
        headers.insert(
            reqwest::header::RETRY_AFTER,
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&headers), None);
    }
}
