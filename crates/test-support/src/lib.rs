//! Helpers shared by imgbake's integration tests (dev-dependency only).
//!
//! Tests that need a real tool (`qemu-system-x86_64`, `sshd`, `qemu-img`, …) or the fixture
//! guest call [`require_tool`] / [`fixture_image`] first. When the thing is missing the test
//! prints `SKIPPED: …` and returns early — unless `IMGBAKE_REQUIRE_TOOLS=1` is set (CI sets it),
//! in which case the test fails, so CI can never pass by skipping. [`Tmpfs`] mounts a small
//! file system (root only, skipped the same way) for tests of full disks.
//!
//! ```no_run
//! if !test_support::require_tool("qemu-img") {
//!     return;
//! }
//! ```
#![warn(missing_docs)]

pub mod checkpoints;

use std::net::TcpListener;
use std::path::{Path, PathBuf};

/// Environment variable that turns a missing tool or fixture into a test failure.
pub const REQUIRE_TOOLS_ENV: &str = "IMGBAKE_REQUIRE_TOOLS";
/// Environment variable that overrides the fixture guest image path.
pub const FIXTURE_ENV: &str = "IMGBAKE_FIXTURE";

fn tools_required() -> bool {
    std::env::var(REQUIRE_TOOLS_ENV).is_ok_and(|v| v == "1")
}

fn skip_or_fail(what: &str) -> bool {
    if tools_required() {
        panic!("{what} (required because {REQUIRE_TOOLS_ENV}=1; run `cargo xtask deps`)");
    }
    eprintln!("SKIPPED: {what}");
    false
}

/// Finds `name` on `PATH` (also in `/usr/sbin` and `/sbin`, where `sshd` lives).
pub fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// Returns true when `name` is installed; otherwise prints `SKIPPED: <name> not installed` and
/// returns false, or panics when `IMGBAKE_REQUIRE_TOOLS=1`.
pub fn require_tool(name: &str) -> bool {
    find_tool(name).is_some() || skip_or_fail(&format!("{name} not installed"))
}

/// The workspace root (the directory holding the top-level `Cargo.toml`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("test-support lives at crates/test-support")
        .to_path_buf()
}

/// Where `cargo xtask fixture` puts the fixture guest.
pub fn default_fixture_path() -> PathBuf {
    workspace_root().join("target/fixture/debian-bookworm.qcow2")
}

/// The fixture guest image, if built. Missing: `SKIPPED` (or a failure under
/// `IMGBAKE_REQUIRE_TOOLS=1`) with the command that builds it.
pub fn fixture_image() -> Option<PathBuf> {
    let path = std::env::var_os(FIXTURE_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(default_fixture_path);
    if path.is_file() {
        Some(path)
    } else {
        skip_or_fail(&format!(
            "fixture guest {} not built (run `cargo xtask fixture`)",
            path.display()
        ));
        None
    }
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("bind an ephemeral port on 127.0.0.1")
}

/// Environment variable naming the directory `cargo xtask nvidia-bytes` made (with
/// `manifest.json`, `module/nvidia.ko`, `firmware/lib/firmware/nvidia/<version>/`).
pub const NVIDIA_BYTES_ENV: &str = "IMGBAKE_NVIDIA_BYTES";

/// The real NVIDIA bytes (Debian's `firmware-nvidia-gsp` files and a real `nvidia.ko`) made by
/// `cargo xtask nvidia-bytes`: `$IMGBAKE_NVIDIA_BYTES`, else `<target>/nvidia-bytes/current`.
/// Missing: `SKIPPED`, or a failure naming the command under `IMGBAKE_REQUIRE_TOOLS=1`.
pub fn nvidia_bytes() -> Option<PathBuf> {
    let mut candidates: Vec<PathBuf> = std::env::var_os(NVIDIA_BYTES_ENV)
        .map(PathBuf::from)
        .into_iter()
        .collect();
    if let Some(target) = option_env!("CARGO_TARGET_DIR") {
        candidates.push(Path::new(target).join("nvidia-bytes/current"));
    }
    candidates.push(workspace_root().join("target/nvidia-bytes/current"));
    if let Some(found) = candidates
        .iter()
        .find(|c| c.join("manifest.json").is_file())
    {
        return Some(found.clone());
    }
    let what = format!(
        "real NVIDIA bytes not found in {} (run `cargo xtask nvidia-bytes`, or set {NVIDIA_BYTES_ENV})",
        candidates
            .iter()
            .map(|c| c.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    if tools_required() {
        panic!("{what} (required because {REQUIRE_TOOLS_ENV}=1)");
    }
    eprintln!("SKIPPED: {what}");
    None
}

/// A tmpfs of a given size mounted on a fresh directory, for tests of full file systems;
/// unmounted when dropped.
pub struct Tmpfs {
    _dir: tempfile::TempDir,
    /// The mount point.
    pub path: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (`8m`). Mounting needs root: otherwise `SKIPPED` and `None`,
    /// or a panic under `IMGBAKE_REQUIRE_TOOLS=1` (CI runs the tests as root).
    pub fn mount(size: &str) -> Option<Tmpfs> {
        let root = std::process::Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
        if !root {
            skip_or_fail("mounting a tmpfs needs root");
            return None;
        }
        let dir = tempfile::tempdir().expect("make a mount point");
        let path = dir.path().join("fs");
        std::fs::create_dir(&path).expect("make a mount point");
        mount(
            &["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"],
            &path,
        );
        Some(Tmpfs { _dir: dir, path })
    }

    /// Gives the file system `size` in all, as a person freeing space would: same path, more room.
    pub fn grow(&self, size: &str) {
        mount(&["-o", &format!("remount,size={size}")], &self.path);
    }
}

fn mount(args: &[&str], path: &Path) {
    let out = std::process::Command::new("mount")
        .args(args)
        .arg(path)
        .output()
        .expect("run mount");
    assert!(
        out.status.success(),
        "mount {args:?} {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(&self.path)
            .output();
    }
}
