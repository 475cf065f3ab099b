//! `fetch` (issue 7): `imgbake fetch` of a 1.5 GiB image from a local HTTP server (the fetch
//! crate's test server on 127.0.0.1, which sends files with `sendfile`) against `curl -o` of the
//! same URL. The figure is throughput imgbake / throughput curl = curl's time / imgbake's time
//! (goal ≥ 0.9). imgbake does more than curl: SHA-256 of every byte on the fly, fsync and the
//! atomic rename into the cache; `curl + fsync` is reported too, for the durable comparison.

use std::io::{Read, Write};
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result};
use fetch::testserver::{Resource, TestServer};
use serde_json::json;
use sha2::{Digest, Sha256};

use super::{Bench, Goal, Measurement, median, settle};

const MIB: u64 = 1536;

/// Writes `size` random bytes (from /dev/urandom) to `path`.
pub fn random_file(path: &Path, size: u64) -> Result<()> {
    let mut random = std::fs::File::open("/dev/urandom").context("open /dev/urandom")?;
    let mut out =
        std::fs::File::create(path).with_context(|| format!("create {}", path.display()))?;
    let copied = std::io::copy(&mut (&mut random).take(size), &mut out)?;
    anyhow::ensure!(copied == size, "short read from /dev/urandom");
    out.flush()?;
    Ok(())
}

fn sha256_of(path: &Path) -> Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher)?;
    Ok(hex::encode(hasher.finalize()))
}

pub fn run(bench: &Bench) -> Result<Measurement> {
    let image = bench.work.join("bench.img");
    random_file(&image, MIB << 20)?;
    let digest = sha256_of(&image)?;
    let server = TestServer::start().context("start the local HTTP server")?;
    server.put("/bench.img", Resource::file(&image));
    let url = server.url("/bench.img");

    let recipe_dir = bench.work.join("recipe");
    std::fs::create_dir_all(recipe_dir.join("steps"))?;
    std::fs::write(recipe_dir.join("steps/01-noop.sh"), "#!/bin/sh\ntrue\n")?;
    let recipe = recipe_dir.join("bench-fetch.yaml");
    std::fs::write(
        &recipe,
        format!(
            "name: bench-fetch\nbase:\n  url: {url}\n  checksum: sha256:{digest}\n\
             vm: {{ cpus: 1, memory: 512M, disk_size: 4G, firmware: bios, accel: tcg }}\n\
             steps:\n  - steps/01-noop.sh\n"
        ),
    )?;

    let curl_out = bench.work.join("curl.out");
    let cache = bench.work.join("cache");
    let (mut curl, mut curl_fsync, mut ours) = (Vec::new(), Vec::new(), Vec::new());
    for run in 0..bench.runs {
        settle()?;
        let took = bench.time(
            &format!("fetch-curl-{run}"),
            Command::new("curl")
                .args(["-s", "-f", "-o"])
                .arg(&curl_out)
                .arg(&url),
            &[0],
        )?;
        let started = std::time::Instant::now();
        std::fs::File::open(&curl_out)?.sync_all()?;
        curl.push(took);
        curl_fsync.push(took + started.elapsed());
        std::fs::remove_file(&curl_out)?;

        let _ = std::fs::remove_dir_all(&cache);
        settle()?;
        ours.push(
            bench.time(
                &format!("fetch-imgbake-{run}"),
                bench
                    .imgbake()
                    .arg("fetch")
                    .arg(&recipe)
                    .arg("--cache-dir")
                    .arg(&cache),
                &[0],
            )?,
        );
        let fetched = cache.join(&digest);
        anyhow::ensure!(
            fetched.is_file(),
            "imgbake fetch did not put the image at {}",
            fetched.display()
        );
    }
    let _ = std::fs::remove_dir_all(&cache);
    let (c, cf, o) = (median(&curl), median(&curl_fsync), median(&ours));
    let mb = (MIB << 20) as f64 / 1e6;
    Ok(Measurement {
        name: "fetch",
        value: c.as_secs_f64() / o.as_secs_f64(),
        unit: "ratio",
        goal: Goal::AtLeast(0.9),
        runs: bench.runs,
        detail: format!(
            "imgbake fetch {:.2}s ({:.0} MB/s, sha256 + fsync + publish) vs curl -o {:.2}s ({:.0} MB/s); curl+fsync {:.2}s (ratio {:.2}); {MIB} MiB",
            o.as_secs_f64(),
            mb / o.as_secs_f64(),
            c.as_secs_f64(),
            mb / c.as_secs_f64(),
            cf.as_secs_f64(),
            cf.as_secs_f64() / o.as_secs_f64(),
        ),
        data: json!({
            "bytes": MIB << 20,
            "imgbake_fetch_s": o.as_secs_f64(),
            "curl_s": c.as_secs_f64(),
            "curl_fsync_s": cf.as_secs_f64(),
            "ratio_durable": cf.as_secs_f64() / o.as_secs_f64(),
            "imgbake_runs_s": ours.iter().map(|d| d.as_secs_f64()).collect::<Vec<_>>(),
            "curl_runs_s": curl.iter().map(|d| d.as_secs_f64()).collect::<Vec<_>>(),
        }),
    })
}
