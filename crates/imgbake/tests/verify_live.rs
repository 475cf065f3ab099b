//! `imgbake verify --live` over recorded `/proc` samples: exit codes and the table.

use std::path::PathBuf;

use assert_cmd::Command;

fn case(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/nvidia-proc")
        .join(name)
}

fn live(name: &str, extra: &[&str]) -> (i32, String) {
    let dir = case(name);
    let mut cmd = Command::cargo_bin("imgbake").unwrap();
    cmd.args(["verify", "--live", "--proc"])
        .arg(dir.join("proc"))
        .arg("--root")
        .arg(dir.join("root"))
        .args(extra)
        // No real nvidia-smi may leak in from the machine running the tests.
        .env("PATH", "/nonexistent");
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn live_passes_ignores_option_0_on_open_and_exits_6_on_a_stale_initramfs() {
    let (code, text) = live("565-open-option0-1xh100", &["--expect-gpu-firmware", "0"]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("565.57.01, open module"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("0000:41:00.0") && l.contains(" ignored ")),
        "{text}"
    );

    let smi = case("565-proprietary-gsp-8xh100").join("nvidia-smi-q.txt");
    let (code, json) = live(
        "565-proprietary-gsp-8xh100",
        &[
            "--expect-gpu-firmware",
            "1",
            "--json",
            "--nvidia-smi",
            smi.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{json}");
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["gpus"].as_array().unwrap().len(), 8);
    assert_eq!(v["gpus"][7]["nvidia_smi_gsp"], "565.57.01");

    let (code, text) = live(
        "565-proprietary-stale-initramfs-1xh100",
        &["--expect-gpu-firmware", "1"],
    );
    assert_eq!(code, 6, "{text}");
    assert!(text.contains("update-initramfs -u"), "{text}");
    assert!(text.contains("FAIL:"), "{text}");
}
