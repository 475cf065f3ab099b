//! Throughput of [`BaseCache::fetch`] against `curl -o` from the same local server.
//!
//! `cargo xtask bench` calls [`fetch_vs_curl`]; the ratio (curl time / fetch time, so higher is
//! better, goal ≥ 0.9) is the number to watch. Both clients read the same file from the same
//! [`TestServer`] (sendfile), write to the same file system, alternate runs, and the median of
//! each is taken. The fetch includes what curl does not do: SHA-256 of every byte, fsync and the
//! atomic rename into the cache.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::testserver::{Resource, TestServer};
use crate::{BaseCache, BaseSource, ExpectedDigest, FetchEvent, FetchOptions, Location};

/// What [`fetch_vs_curl`] measured.
#[derive(Clone, Debug)]
pub struct BenchReport {
    /// Size of the file fetched.
    pub bytes: u64,
    /// Median wall time of `curl -s -o FILE URL`.
    pub curl: Duration,
    /// Median wall time of `curl -s -o FILE URL` followed by an fsync of FILE (the same
    /// durability as a fetch gives).
    pub curl_fsync: Duration,
    /// Median wall time of a cold [`BaseCache::fetch`] (download, hash, fsync, publish).
    pub fetch: Duration,
    /// Median time until the fetch had every byte written (page cache) and hashed: the fetch
    /// without its fsync and publish.
    pub fetch_unsynced: Duration,
    /// Median over runs of (this run's curl time / this run's fetch time): each curl run is
    /// paired with the fetch run right after it, which resists drifting machine load better.
    pub ratio_paired: f64,
    /// Runs of each.
    pub runs: usize,
}

impl BenchReport {
    /// curl's time over fetch's: 1.0 means as fast as curl (the goal: ≥ 0.9).
    pub fn ratio(&self) -> f64 {
        self.curl.as_secs_f64() / self.fetch.as_secs_f64()
    }

    /// The same with both sides made durable (curl + fsync against the whole fetch).
    pub fn ratio_durable(&self) -> f64 {
        self.curl_fsync.as_secs_f64() / self.fetch.as_secs_f64()
    }

    /// curl against the fetch up to the point where every byte is written and hashed (no
    /// fsync): the cost of hashing on the fly alone.
    pub fn ratio_unsynced(&self) -> f64 {
        self.curl.as_secs_f64() / self.fetch_unsynced.as_secs_f64()
    }

    /// Throughput in MB/s (10^6 bytes) for a duration.
    pub fn mb_per_s(&self, took: Duration) -> f64 {
        self.bytes as f64 / 1e6 / took.as_secs_f64()
    }
}

/// Writes `size` bytes of incompressible data to `path` (an xorshift stream; fast to make).
pub fn make_file(path: &Path, size: u64) -> io::Result<()> {
    let mut out = io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut block = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        for word in block.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            word.copy_from_slice(&x.to_le_bytes());
        }
        let n = left.min(block.len() as u64) as usize;
        out.write_all(&block[..n])?;
        left -= n as u64;
    }
    out.flush()
}

/// Serves `file` from a local [`TestServer`] and times `runs` cold fetches against `runs`
/// `curl -o` downloads of it, all under `workdir`.
pub async fn fetch_vs_curl(file: &Path, workdir: &Path, runs: usize) -> io::Result<BenchReport> {
    let bytes = std::fs::metadata(file)?.len();
    let expected = digest::hash_file(file).map_err(io::Error::other)?;
    let server = TestServer::start()?;
    server.put("/bench.img", Resource::file(file));
    let url = server.url("/bench.img");
    let source = BaseSource {
        location: Location::parse(&url).map_err(io::Error::other)?,
        checksum: ExpectedDigest::Sha256(expected),
    };
    let curl_out = workdir.join("curl.out");
    let cache_dir: PathBuf = workdir.join("cache");
    let (mut curl_times, mut curl_fsync_times) = (Vec::new(), Vec::new());
    let (mut fetch_times, mut unsynced_times) = (Vec::new(), Vec::new());
    for _ in 0..runs.max(1) {
        // Each timed run starts with no dirty pages left over from the previous one.
        settle().await?;
        let _ = std::fs::remove_file(&curl_out);
        let started = Instant::now();
        let status = tokio::process::Command::new("curl")
            .args(["-s", "-f", "-o"])
            .arg(&curl_out)
            .arg(&url)
            .status()
            .await?;
        curl_times.push(started.elapsed());
        if !status.success() {
            return Err(io::Error::other(format!("curl failed: {status}")));
        }
        std::fs::File::open(&curl_out)?.sync_all()?;
        curl_fsync_times.push(started.elapsed());
        let _ = std::fs::remove_file(&curl_out);

        let _ = std::fs::remove_dir_all(&cache_dir);
        let cache = BaseCache::open(&cache_dir).map_err(io::Error::other)?;
        settle().await?;
        let all_bytes = std::sync::Mutex::new(None);
        let progress = |event: FetchEvent| {
            if event
                == (FetchEvent::Downloading {
                    done: bytes,
                    total: Some(bytes),
                })
            {
                *all_bytes.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
            }
        };
        let started = Instant::now();
        let got = cache
            .fetch(
                &source,
                &FetchOptions::default(),
                &progress,
                CancellationToken::new(),
            )
            .await
            .map_err(io::Error::other)?;
        fetch_times.push(started.elapsed());
        let unsynced = all_bytes.lock().unwrap_or_else(|e| e.into_inner()).take();
        unsynced_times.push(unsynced.map_or(Duration::ZERO, |at| at - started));
        if got.size != bytes {
            return Err(io::Error::other("fetched size differs"));
        }
    }
    let _ = std::fs::remove_dir_all(&cache_dir);
    let mut paired: Vec<f64> = curl_times
        .iter()
        .zip(&fetch_times)
        .map(|(c, f)| c.as_secs_f64() / f.as_secs_f64())
        .collect();
    paired.sort_by(f64::total_cmp);
    Ok(BenchReport {
        ratio_paired: paired[paired.len() / 2],
        bytes,
        curl: median(&mut curl_times),
        curl_fsync: median(&mut curl_fsync_times),
        fetch: median(&mut fetch_times),
        fetch_unsynced: median(&mut unsynced_times),
        runs: runs.max(1),
    })
}

/// `sync`: flush every dirty page so one run's writeback does not slow the next.
async fn settle() -> io::Result<()> {
    let status = tokio::process::Command::new("sync").status().await?;
    if status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!("sync failed: {status}")))
    }
}

fn median(times: &mut [Duration]) -> Duration {
    times.sort();
    times[times.len() / 2]
}
