//! Helpers shared by the real-QEMU tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use qemu_driver::{AccelChoice, VmConfig};

/// Generous bounds: TCG on a loaded 2-core CI machine is slow; these only stop a hang.
pub const QEMU_START: Duration = Duration::from_secs(60);
pub const GUEST_BOOT: Duration = Duration::from_secs(300);

/// Both QEMU tools, or SKIPPED.
pub fn have_qemu() -> bool {
    test_support::require_tool("qemu-system-x86_64") && test_support::require_tool("qemu-img")
}

/// A blank qcow2 disk (SeaBIOS finds nothing to boot and idles: a VM without a guest OS).
pub fn blank_disk(dir: &Path) -> PathBuf {
    let disk = dir.join("blank.qcow2");
    let status = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&disk)
        .arg("64M")
        .status()
        .expect("run qemu-img");
    assert!(status.success(), "qemu-img create failed");
    disk
}

/// A small TCG VM on `disk` with its run directory under `dir`.
pub fn tcg_config(dir: &Path, disk: &Path) -> VmConfig {
    let mut config = VmConfig::new("test", disk, dir.join("run"));
    config.accel = AccelChoice::Tcg;
    config.cpus = 1;
    config.memory_mib = 256;
    config
}

/// True while /proc has a live (non-zombie) process `pid`.
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // Field 3 is the state; Z = zombie (exited, not yet reaped).
        Ok(stat) => stat
            .rsplit_once(')')
            .map(|(_, rest)| !rest.trim_start().starts_with('Z'))
            .unwrap_or(true),
        Err(_) => false,
    }
}

/// True once `/proc/<pid>` is gone entirely (exited and reaped).
pub fn reaped(pid: u32) -> bool {
    !Path::new(&format!("/proc/{pid}")).exists()
}

/// Waits until `/proc/<pid>` is gone, polling /proc every 50 ms (there is no event to wait
/// on for another process's reaping), up to `within`.
pub async fn wait_reaped(pid: u32, within: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < deadline {
        if reaped(pid) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    reaped(pid)
}

/// Waits until the serial log contains `needle`, polling the file every 200 ms (QEMU writes
/// it; there is no notification), up to `within`. Returns false on timeout.
pub async fn wait_for_serial(log: &Path, needle: &str, within: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let text = std::fs::read(log).unwrap_or_default();
        if String::from_utf8_lossy(&text).contains(needle) {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The process group of `pid`.
pub fn pgrp(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    // After ")": state ppid pgrp …
    rest.split_whitespace().nth(2)?.parse().ok()
}

/// Runs `qemu-img ARGS` and returns stdout; panics with stderr on failure.
pub fn qemu_img(args: &[&str]) -> String {
    let out = Command::new("qemu-img")
        .args(args)
        .output()
        .expect("run qemu-img");
    assert!(
        out.status.success(),
        "qemu-img {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
