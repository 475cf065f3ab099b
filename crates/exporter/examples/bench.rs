//! Measures what `cargo xtask bench` reports, calling the exporter's API directly:
//!
//! - `bench export SOURCE OUTDIR`: a plain `qemu-img convert -O raw` of SOURCE against
//!   `exporter::export` (RAW only: check + convert + SHA-256), three runs each, medians;
//! - `bench verify IMAGE`: `inspect::verify` wall time, five runs, median.
//!
//! Prints one JSON object per measurement on stdout.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("verify") => {
            let image = PathBuf::from(&args[1]);
            let mut times = Vec::new();
            for _ in 0..5 {
                let t = Instant::now();
                let r = inspect::verify(&image, &inspect::Expectations::default())?;
                times.push(t.elapsed());
                std::hint::black_box(r);
            }
            println!(
                "{{\"bench\":\"verify\",\"image\":{:?},\"size\":{},\"median_s\":{:.4}}}",
                image,
                std::fs::metadata(&image)?.len(),
                median(times).as_secs_f64()
            );
        }
        Some("export") => {
            let source = PathBuf::from(&args[1]);
            let out = PathBuf::from(&args[2]);
            std::fs::create_dir_all(&out)?;
            let rt = tokio::runtime::Runtime::new()?;
            let (mut plain, mut ours, mut convert_only) = (Vec::new(), Vec::new(), Vec::new());
            for _ in 0..3 {
                let dst = out.join("plain.raw");
                let t = Instant::now();
                let st = Command::new("qemu-img")
                    .args(["convert", "-O", "raw"])
                    .arg(&source)
                    .arg(&dst)
                    .status()?;
                anyhow::ensure!(st.success(), "qemu-img convert failed");
                plain.push(t.elapsed());
                std::fs::remove_file(&dst)?;

                let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
                let req = exporter::ExportRequest::new(&source, &out, "ours");
                let t = Instant::now();
                rt.block_on(exporter::export(
                    &req,
                    tx,
                    &tokio_util::sync::CancellationToken::new(),
                ))?;
                ours.push(t.elapsed());
                while let Ok(e) = rx.try_recv() {
                    if let exporter::ExportEvent::Finished {
                        stage: exporter::Stage::Convert(_),
                        elapsed,
                    } = e
                    {
                        convert_only.push(elapsed);
                    }
                }
                std::fs::remove_file(out.join("ours.raw"))?;
            }
            let (p, o, c) = (median(plain), median(ours), median(convert_only));
            println!(
                "{{\"bench\":\"export\",\"plain_convert_s\":{:.3},\"export_total_s\":{:.3},\"export_convert_stage_s\":{:.3},\"ratio_total\":{:.3},\"ratio_convert\":{:.3}}}",
                p.as_secs_f64(),
                o.as_secs_f64(),
                c.as_secs_f64(),
                p.as_secs_f64() / o.as_secs_f64(),
                p.as_secs_f64() / c.as_secs_f64()
            );
        }
        _ => anyhow::bail!("usage: bench verify IMAGE | bench export SOURCE OUTDIR"),
    }
    Ok(())
}
