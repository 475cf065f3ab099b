//! `imgbake verify` on real GPU-node disks (issue 11's "done when"): Debian's real 535 module
//! and GSP firmware (`cargo xtask nvidia-bytes`) in a GPT + ext4 disk; removing the module,
//! emptying a firmware file, dropping `gsp_tu10x.bin` with A100 in the models, or leaving
//! containerd on runc each exits 6 with a message naming the cause.

#[path = "../../inspect/tests/common/mod.rs"]
mod common;

use assert_cmd::Command;
use common::{DebianSpec, NvidiaBytes, debian, nvidia_bytes};

/// Runs `imgbake verify DISK ARGS…`; returns (exit code, stdout).
fn verify(disk: &std::path::Path, args: &[&str]) -> (i32, String) {
    let out = Command::cargo_bin("imgbake")
        .unwrap()
        .arg("verify")
        .arg(disk)
        .args([
            "--expect-gpu-firmware",
            "1",
            "--expect-driver-branch",
            "535",
        ])
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// The line of the report for `id`, and whether it says FAIL.
fn failing_line<'a>(report: &'a str, id: &str) -> Option<&'a str> {
    report
        .lines()
        .find(|l| l.starts_with(&format!("{id} ")) && l.contains(" FAIL "))
}

fn bytes() -> Option<NvidiaBytes> {
    if !common::tools() {
        return None;
    }
    nvidia_bytes()
}

#[test]
fn a_clean_real_image_passes_and_each_gpu_node_trap_exits_6() {
    let Some(b) = bytes() else { return };
    let fw_dir = format!("/usr/lib/firmware/nvidia/{}", b.version);

    let clean = debian(&b, &DebianSpec::default());
    let (code, out) = verify(&clean.build(), &["--gpu-models", "A100,H100"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("overall PASS"), "{out}");
    drop(clean);

    // 1. The module removed (DKMS never built it for this kernel).
    let g = debian(
        &b,
        &DebianSpec {
            module_suffix: None,
            ..DebianSpec::default()
        },
    );
    let (code, out) = verify(&g.build(), &["--gpu-models", "A100,H100"]);
    assert_eq!(code, 6, "{out}");
    let line = failing_line(&out, "driver/module").unwrap_or_else(|| panic!("{out}"));
    assert!(
        line.contains(&format!("no usable nvidia module for kernel {}", b.kernel)),
        "{out}"
    );
    assert!(
        out.contains(&format!("install linux-headers-{}", b.kernel)),
        "{out}"
    );
    drop(g);

    // 2. A firmware file emptied.
    let g = debian(&b, &DebianSpec::default());
    g.put(&format!("{fw_dir}/gsp_ga10x.bin"), "");
    let (code, out) = verify(&g.build(), &[]);
    assert_eq!(code, 6, "{out}");
    let line = failing_line(&out, "firmware-files").unwrap_or_else(|| panic!("{out}"));
    assert!(
        line.contains(&format!(
            "/lib/firmware/nvidia/{}/gsp_ga10x.bin is empty",
            b.version
        )),
        "{out}"
    );
    drop(g);

    // 3. gsp_tu10x.bin dropped, A100 among the models (H100 alone would pass).
    let g = debian(&b, &DebianSpec::default());
    g.remove(&format!("{fw_dir}/gsp_tu10x.bin"));
    let disk = g.build();
    let (code, out) = verify(&disk, &["--gpu-models", "H100"]);
    assert_eq!(code, 0, "{out}");
    let (code, out) = verify(&disk, &["--gpu-models", "A100,H100"]);
    assert_eq!(code, 6, "{out}");
    let line = failing_line(&out, "firmware-files").unwrap_or_else(|| panic!("{out}"));
    assert!(
        line.contains("gsp_tu10x.bin not found, which A100 (Ampere GA100) loads"),
        "{out}"
    );
    drop(g);

    // 4. The Container Toolkit installed, containerd left on runc.
    let g = debian(
        &b,
        &DebianSpec {
            container_toolkit: true,
            ..DebianSpec::default()
        },
    );
    let (code, out) = verify(&g.build(), &["--gpu-models", "A100,H100"]);
    assert_eq!(code, 6, "{out}");
    let line = failing_line(&out, "container-runtime").unwrap_or_else(|| panic!("{out}"));
    assert!(
        line.contains("containerd's default runtime is runc, not nvidia"),
        "{out}"
    );
    assert!(line.contains("unless a RuntimeClass is set up"), "{out}");
}
