//! `verify` (issue 6): `imgbake verify` wall time on a 25 GiB sparse RAW (goal < 1 s).
//!
//! The image is the fixture guest (GPT, ext4 root labelled `cloudimg-rootfs`, a real Debian
//! system) converted to RAW and grown to 25 GiB with `qemu-img resize`; `sfdisk --relocate`
//! moves the backup GPT to the new end, as growing a real disk would. Its verdict (the fixture
//! has no NVIDIA option, so exit status 6) does not matter here, only how long reading it takes.

use std::process::Command;

use anyhow::{Context, Result};
use serde_json::json;

use super::{Bench, Goal, Measurement, median};
use crate::{project_root, target_dir};

const SIZE: &str = "25G";

pub fn run(bench: &Bench) -> Result<Measurement> {
    let fixture = target_dir(&project_root()).join("fixture/debian-bookworm.qcow2");
    anyhow::ensure!(
        fixture.is_file(),
        "the fixture guest is missing ({})\n  try: cargo xtask fixture",
        fixture.display()
    );
    let image = bench.work.join("verify-25g.raw");
    bench.time(
        "verify-make-raw",
        Command::new("qemu-img")
            .args(["convert", "-O", "raw"])
            .arg(&fixture)
            .arg(&image),
        &[0],
    )?;
    bench.time(
        "verify-resize",
        Command::new("qemu-img")
            .args(["resize", "-f", "raw"])
            .arg(&image)
            .arg(SIZE),
        &[0],
    )?;
    bench.time(
        "verify-relocate-gpt",
        Command::new("sfdisk")
            .args(["--relocate", "gpt-bak-std"])
            .arg(&image),
        &[0],
    )?;
    let meta = std::fs::metadata(&image).context("stat the bench image")?;
    let allocated = std::os::unix::fs::MetadataExt::blocks(&meta) * 512;

    let runs = bench.runs.max(5);
    let mut times = Vec::new();
    for run in 0..runs {
        // 0: verified clean, 6: an expectation failed (expected for the fixture).
        times.push(bench.time(
            &format!("verify-imgbake-{run}"),
            bench.imgbake().arg("verify").arg(&image),
            &[0, 6],
        )?);
    }
    let m = median(&times);
    Ok(Measurement {
        name: "verify",
        value: m.as_secs_f64(),
        unit: "s",
        goal: Goal::Below(1.0),
        runs,
        detail: format!(
            "imgbake verify {:.3}s on a {:.1} GB sparse RAW ({} MiB allocated; first run {:.3}s)",
            m.as_secs_f64(),
            meta.len() as f64 / 1e9,
            allocated >> 20,
            times[0].as_secs_f64()
        ),
        data: json!({
            "apparent_bytes": meta.len(),
            "allocated_bytes": allocated,
            "median_s": m.as_secs_f64(),
            "runs_s": times.iter().map(|d| d.as_secs_f64()).collect::<Vec<_>>(),
        }),
    })
}
