//! `export` (issue 6): `imgbake export QCOW2` (qemu-img check + convert to sparse RAW + SHA-256)
//! against a plain `qemu-img convert -O raw` of the same qcow2. The figure is throughput
//! imgbake / throughput qemu-img = qemu-img's time / imgbake's time (goal ≥ 0.95).
//!
//! The source is a qcow2 with real data: 1.5 GiB of random bytes in a 3 GiB disk (the rest a
//! hole, as in a real image), so neither side can skip work by finding zeros.

use std::process::Command;

use anyhow::Result;
use serde_json::json;

use super::{Bench, Goal, Measurement, median, settle};

const DATA_MIB: u64 = 1536;
const DISK_GIB: u64 = 3;

pub fn run(bench: &Bench) -> Result<Measurement> {
    let raw = bench.work.join("source.raw");
    super::fetch::random_file(&raw, DATA_MIB << 20)?;
    std::fs::File::options()
        .write(true)
        .open(&raw)?
        .set_len(DISK_GIB << 30)?;
    let source = bench.work.join("source.qcow2");
    bench.time(
        "export-make-source",
        Command::new("qemu-img")
            .args(["convert", "-f", "raw", "-O", "qcow2"])
            .arg(&raw)
            .arg(&source),
        &[0],
    )?;
    std::fs::remove_file(&raw)?;

    let out = bench.work.join("out");
    let plain_raw = bench.work.join("plain.raw");
    let (mut plain, mut ours, mut convert_stage) = (Vec::new(), Vec::new(), Vec::new());
    // A second baseline with the same deliverable as imgbake's: the RAW plus its checksum.
    let mut plain_with_sum = Vec::new();
    for run in 0..bench.runs {
        settle()?;
        plain.push(
            bench.time(
                &format!("export-qemu-img-{run}"),
                Command::new("qemu-img")
                    .args(["convert", "-O", "raw"])
                    .arg(&source)
                    .arg(&plain_raw),
                &[0],
            )?,
        );
        let sum = bench.time(
            &format!("export-sha256sum-{run}"),
            Command::new("sha256sum").arg(&plain_raw),
            &[0],
        )?;
        plain_with_sum.push(*plain.last().expect("pushed above") + sum);
        std::fs::remove_file(&plain_raw)?;
        settle()?;
        ours.push(
            bench.time(
                &format!("export-imgbake-{run}"),
                bench
                    .imgbake()
                    .arg("export")
                    .arg(&source)
                    .arg("--output")
                    .arg(&out)
                    .args(["--name", "bench"]),
                &[0],
            )?,
        );
        std::fs::remove_dir_all(&out)?;
        if let Some(secs) =
            convert_stage_secs(&bench.logs.join(format!("export-imgbake-{run}.log")))
        {
            convert_stage.push(std::time::Duration::from_secs_f64(secs));
        }
    }
    // The convert stage alone, as imgbake reports it (informational: absent if its wording changes).
    let convert = (convert_stage.len() == bench.runs).then(|| median(&convert_stage).as_secs_f64());
    let (p, o) = (median(&plain), median(&ours));
    let ps = median(&plain_with_sum);
    let mb = (DATA_MIB << 20) as f64 / 1e6;
    let ratio = p.as_secs_f64() / o.as_secs_f64();
    Ok(Measurement {
        name: "export",
        value: ratio,
        unit: "ratio",
        goal: Goal::AtLeast(0.95),
        runs: bench.runs,
        detail: format!(
            "imgbake export {:.2}s ({:.0} MB/s, incl. check + sha256) vs qemu-img convert {:.2}s ({:.0} MB/s); {DATA_MIB} MiB data in a {DISK_GIB} GiB qcow2",
            o.as_secs_f64(),
            mb / o.as_secs_f64(),
            p.as_secs_f64(),
            mb / p.as_secs_f64()
        ) + &convert.map_or(String::new(), |c| {
            format!("; its convert stage alone {c:.2}s")
        }) + &format!(
            "; vs qemu-img convert + sha256sum {:.2}s the ratio is {:.2}",
            ps.as_secs_f64(),
            ps.as_secs_f64() / o.as_secs_f64()
        ),
        data: json!({
            "data_bytes": DATA_MIB << 20,
            "virtual_bytes": DISK_GIB << 30,
            "imgbake_export_s": o.as_secs_f64(),
            "qemu_img_convert_s": p.as_secs_f64(),
            "qemu_img_convert_plus_sha256sum_s": ps.as_secs_f64(),
            "ratio_vs_convert_plus_sha256sum": ps.as_secs_f64() / o.as_secs_f64(),
            "imgbake_convert_stage_s": convert,
            "imgbake_runs_s": ours.iter().map(|d| d.as_secs_f64()).collect::<Vec<_>>(),
            "qemu_img_runs_s": plain.iter().map(|d| d.as_secs_f64()).collect::<Vec<_>>(),
        }),
    })
}

/// The seconds in imgbake export's `convert raw done in 0.5 s` line.
fn convert_stage_secs(log: &std::path::Path) -> Option<f64> {
    let text = std::fs::read_to_string(log).ok()?;
    let line = text
        .lines()
        .find(|l| l.starts_with("convert raw done in "))?;
    line.strip_prefix("convert raw done in ")?
        .trim_end_matches(" s")
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_the_convert_stage_time() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("x.log");
        std::fs::write(&log, "check done in 0.0 s\nconvert raw done in 2.5 s\n").unwrap();
        assert_eq!(super::convert_stage_secs(&log), Some(2.5));
        std::fs::write(&log, "something else\n").unwrap();
        assert_eq!(super::convert_stage_secs(&log), None);
    }
}
