//! `cargo xtask e2e nvidia --traps`: after the real NVIDIA image verified, break a copy of it the
//! way a GPU node would fail on, one trap per copy, and check that `imgbake verify` exits 6 naming
//! the cause. The copies are edited offline with `debugfs -w` on the root partition (addressed by
//! byte offset, as the image has no loop device here); the build's own RAW is never written.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};

use crate::e2e::{VERIFY_FAILED, verify_command};

/// One way to break the image.
struct Trap {
    what: &'static str,
    /// `debugfs -w` requests, run in order.
    edits: Vec<String>,
    /// Text the failing report must contain.
    expect: String,
}

/// What the traps need to know about the image and how to verify it.
pub struct TrapRun<'a> {
    pub imgbake: &'a Path,
    pub root: &'a Path,
    pub recipe: &'a str,
    pub raw: &'a Path,
    pub vars: &'a [String],
}

pub fn run(run: &TrapRun<'_>) -> Result<()> {
    let offset = root_partition_offset(run.raw)?;
    let fs = format!("{}?offset={offset}", run.raw.display());
    let kernel = only_entry(
        &debugfs_list(&fs, "/lib/modules")?,
        "a kernel in /lib/modules",
    )?;
    let dkms = format!("/lib/modules/{kernel}/updates/dkms");
    // The main module is by far the largest file DKMS installs (nvidia-current.ko: 65 MB).
    let module = debugfs_list(&fs, &dkms)?
        .into_iter()
        .filter(|(name, _)| name.contains(".ko"))
        .max_by_key(|(_, size)| *size)
        .map(|(name, _)| name)
        .with_context(|| format!("no module in {dkms} of {}", run.raw.display()))?;
    let version = only_entry(
        &debugfs_list(&fs, "/lib/firmware/nvidia")?,
        "a firmware version in /lib/firmware/nvidia",
    )?;
    let firmware = format!("/lib/firmware/nvidia/{version}");
    let empty = std::env::temp_dir().join("imgbake-e2e-empty-file");
    std::fs::write(&empty, b"").context("write an empty file")?;

    let traps = [
        Trap {
            what: "the nvidia module removed",
            edits: vec![format!("rm {dkms}/{module}")],
            expect: kernel.clone(),
        },
        Trap {
            what: "gsp_ga10x.bin emptied (H100 in the models)",
            edits: vec![
                format!("rm {firmware}/gsp_ga10x.bin"),
                format!("write {} {firmware}/gsp_ga10x.bin", empty.display()),
            ],
            expect: "gsp_ga10x.bin".into(),
        },
        Trap {
            what: "gsp_tu10x.bin dropped (A100 in the models)",
            edits: vec![format!("rm {firmware}/gsp_tu10x.bin")],
            expect: "gsp_tu10x.bin".into(),
        },
    ];
    println!();
    println!("e2e nvidia traps on copies of {}:", run.raw.display());
    let mut failed = Vec::new();
    for trap in &traps {
        let started = Instant::now();
        let copy = copy_path(run.raw);
        let result = spring(run, trap, &copy, offset);
        let _ = std::fs::remove_file(&copy);
        match result {
            Ok(line) => println!(
                "  {:<44} exit 6 in {:.1}s: {line}",
                trap.what,
                started.elapsed().as_secs_f64()
            ),
            Err(e) => {
                println!("  {:<44} NOT CAUGHT: {e:#}", trap.what);
                failed.push(trap.what);
            }
        }
    }
    println!(
        "  (containerd left on runc needs the NVIDIA Container Toolkit, which Debian's archive does \
         not carry: that trap runs on real bytes in crates/imgbake/tests/verify_gpu_node.rs)"
    );
    ensure!(failed.is_empty(), "verify missed: {}", failed.join(", "));
    Ok(())
}

/// Copies the image, applies the trap, verifies the copy: the report line that names the cause.
fn spring(run: &TrapRun<'_>, trap: &Trap, copy: &Path, offset: u64) -> Result<String> {
    let status = Command::new("cp")
        .arg("--sparse=always")
        .arg(run.raw)
        .arg(copy)
        .status()
        .context("run cp")?;
    ensure!(status.success(), "cp {} failed", run.raw.display());
    let fs = format!("{}?offset={offset}", copy.display());
    for edit in &trap.edits {
        let out = Command::new("debugfs")
            .args(["-w", "-R", edit, &fs])
            .output()
            .context("run debugfs")?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        // debugfs exits 0 even when a request fails; it says so on stderr after its banner.
        ensure!(
            out.status.success() && stderr.lines().skip(1).all(|l| l.trim().is_empty()),
            "debugfs -w -R {edit:?}: {stderr}"
        );
    }
    let out = verify_command(run.imgbake, run.root, copy, run.recipe, run.vars)
        .output()
        .context("run imgbake verify")?;
    let report = String::from_utf8_lossy(&out.stdout);
    if out.status.code() != Some(VERIFY_FAILED) {
        bail!("imgbake verify exited {:?}:\n{report}", out.status.code());
    }
    report
        .lines()
        .find(|l| l.contains("FAIL") && l.contains(&trap.expect))
        .map(|l| l.trim().to_owned())
        .with_context(|| format!("no FAIL line naming {}:\n{report}", trap.expect))
}

/// Byte offset of the image's root partition: the largest one (`sfdisk -J`).
fn root_partition_offset(raw: &Path) -> Result<u64> {
    let out = Command::new("sfdisk")
        .arg("-J")
        .arg(raw)
        .output()
        .context("run sfdisk")?;
    ensure!(out.status.success(), "sfdisk -J {} failed", raw.display());
    let table: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("sfdisk -J output")?;
    let table = &table["partitiontable"];
    let sector = table["sectorsize"].as_u64().unwrap_or(512);
    table["partitions"]
        .as_array()
        .into_iter()
        .flatten()
        .max_by_key(|p| p["size"].as_u64().unwrap_or(0))
        .and_then(|p| p["start"].as_u64())
        .map(|start| start * sector)
        .with_context(|| format!("no partition in {}", raw.display()))
}

/// `(name, size)` of the entries of `dir` (`debugfs -R "ls -p"`: `/inode/mode/uid/gid/name/size/`).
fn debugfs_list(fs: &str, dir: &str) -> Result<Vec<(String, u64)>> {
    let out = Command::new("debugfs")
        .args(["-R", &format!("ls -p {dir}"), fs])
        .output()
        .context("run debugfs")?;
    ensure!(out.status.success(), "debugfs ls -p {dir} failed");
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split('/').collect();
            let (name, size) = (fields.get(5)?, fields.get(6)?);
            (!matches!(*name, "" | "." | ".."))
                .then(|| (name.to_string(), size.parse().unwrap_or(0)))
        })
        .collect())
}

fn only_entry(entries: &[(String, u64)], what: &str) -> Result<String> {
    match entries {
        [(name, _)] => Ok(name.clone()),
        [] => bail!("no {what}"),
        many => bail!(
            "more than {what}: {:?}",
            many.iter().map(|(n, _)| n).collect::<Vec<_>>()
        ),
    }
}

/// Where a trap's copy goes: beside the image, so it is on the same file system.
fn copy_path(raw: &Path) -> PathBuf {
    raw.with_extension("trap.raw")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_entry_wants_exactly_one() {
        assert_eq!(only_entry(&[("a".into(), 1)], "x").unwrap(), "a");
        assert!(only_entry(&[], "x").is_err());
        assert!(only_entry(&[("a".into(), 1), ("b".into(), 2)], "x").is_err());
    }
}
