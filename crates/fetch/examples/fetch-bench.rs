//! `cargo run --release -p fetch --features test-server --example fetch-bench -- [SIZE_MIB] [RUNS] [DIR]`
//!
//! Fetch-vs-curl throughput from a local server (what `cargo xtask bench` reports).

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let mib: u64 = args.next().map(|a| a.parse()).transpose()?.unwrap_or(1536);
    let runs: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(3);
    let dir = match args.next() {
        Some(d) => tempfile::tempdir_in(d)?,
        None => tempfile::tempdir()?,
    };
    let file = dir.path().join("source.img");
    fetch::bench::make_file(&file, mib << 20)?;
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work)?;
    let runtime = tokio::runtime::Runtime::new()?;
    let report = runtime.block_on(fetch::bench::fetch_vs_curl(&file, &work, runs))?;
    let r = &report;
    println!("{mib} MiB, median of {} runs each", r.runs);
    println!(
        "  curl -o              {:>8.2?}  {:>5.0} MB/s",
        r.curl,
        r.mb_per_s(r.curl)
    );
    println!(
        "  curl -o + fsync      {:>8.2?}  {:>5.0} MB/s",
        r.curl_fsync,
        r.mb_per_s(r.curl_fsync)
    );
    println!(
        "  fetch (no fsync yet) {:>8.2?}  {:>5.0} MB/s",
        r.fetch_unsynced,
        r.mb_per_s(r.fetch_unsynced)
    );
    println!(
        "  fetch (complete)     {:>8.2?}  {:>5.0} MB/s",
        r.fetch,
        r.mb_per_s(r.fetch)
    );
    println!(
        "  ratio curl/fetch {:.2} (paired per run {:.2}); durable (curl+fsync)/fetch {:.2}; hashing only {:.2}",
        r.ratio(),
        r.ratio_paired,
        r.ratio_durable(),
        r.ratio_unsynced()
    );
    Ok(())
}
