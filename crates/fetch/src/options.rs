//! Knobs for a fetch.

use std::time::Duration;

/// How a fetch behaves. `FetchOptions::default()` is what the CLI uses.
#[derive(Clone, Debug)]
pub struct FetchOptions {
    /// Use only the cache (and saved SHA256SUMS copies); never touch the network.
    pub offline: bool,
    /// Retries after a connection error, timeout, cut body, 5xx, 408 or 429. A retry that
    /// received bytes resets the count. Default 5.
    pub retries: u32,
    /// First backoff delay; doubles on each retry. Default 1 s.
    pub backoff: Duration,
    /// Backoff cap. Default 30 s.
    pub max_backoff: Duration,
    /// Connect timeout per request. Default 30 s.
    pub connect_timeout: Duration,
    /// Longest silence while reading a response. Default 60 s.
    pub read_timeout: Duration,
    /// Re-hash a cache hit before trusting it (costs a read of the image). Default off: entries
    /// are only ever published verified, and their size is checked against the sidecar.
    pub verify_cache_hits: bool,
}

impl Default for FetchOptions {
    fn default() -> Self {
        Self {
            offline: false,
            retries: 5,
            backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(30),
            read_timeout: Duration::from_secs(60),
            verify_cache_hits: false,
        }
    }
}
