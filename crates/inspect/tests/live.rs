//! `verify_live` over every recorded sample in `fixtures/nvidia-proc/`.

use std::path::PathBuf;

use inspect::{GspState, LiveOptions, LiveReport, LiveVerdict, ModuleFlavour, verify_live};

fn case_dir(case: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/nvidia-proc")
        .join(case)
}

fn run(case: &str, expect: Option<u32>) -> LiveReport {
    run_in(&case_dir(case), expect, None)
}

fn run_in(dir: &std::path::Path, expect: Option<u32>, branch: Option<&str>) -> LiveReport {
    let case = dir.display();
    let smi = std::fs::read_to_string(dir.join("nvidia-smi-q.txt")).ok();
    verify_live(&LiveOptions {
        proc_dir: dir.join("proc"),
        root: dir.join("root"),
        nvidia_smi: smi,
        expect_gpu_firmware: expect,
        expect_driver_branch: branch.map(str::to_string),
    })
    .unwrap_or_else(|e| panic!("{case}: {e}"))
}

fn check<'a>(r: &'a LiveReport, name: &str) -> &'a inspect::LiveCheck {
    r.checks
        .iter()
        .find(|c| c.check == name)
        .unwrap_or_else(|| panic!("no check {name} in {r}"))
}

#[test]
fn proprietary_565_eight_h100_on_gsp() {
    let r = run("565-proprietary-gsp-8xh100", Some(1));
    assert!(r.passed, "{r}");
    assert_eq!(r.driver.flavour, ModuleFlavour::Proprietary);
    assert_eq!(r.driver.version.as_deref(), Some("565.57.01"));
    assert_eq!(r.requested, Some(1));
    assert_eq!(
        r.requested_decoded.as_deref(),
        Some("1 = GSP forced on, no fallback")
    );
    assert_eq!(r.gpus.len(), 8);
    for g in &r.gpus {
        assert_eq!(g.model, "NVIDIA H100 80GB HBM3");
        assert_eq!(g.gsp, GspState::On);
        assert_eq!(g.verdict, LiveVerdict::Ok, "{}", g.detail);
        assert_eq!(g.nvidia_smi_gsp.as_deref(), Some("565.57.01"));
    }
    assert_eq!(r.gpus[0].bus, "0000:19:00.0");
    assert_eq!(r.gpus[7].bus, "0000:db:00.0");
    for c in &r.checks {
        assert_eq!(c.verdict, LiveVerdict::Ok, "{}: {}", c.check, c.detail);
    }
    let text = r.to_string();
    assert!(text.contains("565.57.01, proprietary module"), "{text}");
    assert!(text.ends_with("PASS: GSP on for 8 of 8 GPUs"), "{text}");
    let json = serde_json::to_value(&r).unwrap();
    assert_eq!(json["gpus"][0]["verdict"], "ok");
    assert_eq!(json["gpus"][0]["gsp"], "on");
    assert_eq!(json["driver"]["flavour"], "proprietary");
}

#[test]
fn proprietary_565_expecting_zero_fails() {
    let r = run("565-proprietary-gsp-8xh100", Some(0));
    assert!(!r.passed);
    assert_eq!(check(&r, "EnableGpuFirmware").verdict, LiveVerdict::Fail);
    assert!(r.gpus.iter().all(|g| g.verdict == LiveVerdict::Fail));
}

#[test]
fn proprietary_535_gsp_off_as_asked() {
    let r = run("535-proprietary-gsp-off-1xa100", Some(0));
    assert!(r.passed, "{r}");
    assert_eq!(r.driver.version.as_deref(), Some("535.183.01"));
    assert_eq!(r.gpus.len(), 1);
    let g = &r.gpus[0];
    assert_eq!(g.model, "NVIDIA A100-SXM4-80GB");
    // GSP not requested: the driver prints no `GPU Firmware:` line at all.
    assert_eq!(g.firmware, None);
    assert_eq!(g.gsp, GspState::Off);
    assert_eq!(g.nvidia_smi_gsp.as_deref(), Some("N/A"));
    assert_eq!(g.verdict, LiveVerdict::Ok);
    // Expecting GSP on from the same host names the GPU that runs without it.
    let r = run("535-proprietary-gsp-off-1xa100", Some(1));
    assert!(!r.passed);
    assert_eq!(r.gpus[0].verdict, LiveVerdict::Fail);
    assert!(
        r.gpus[0].detail.contains("GPU Firmware: (no line)"),
        "{}",
        r.gpus[0].detail
    );
}

#[test]
fn open_565_option_zero_is_ignored_not_a_failure() {
    let r = run("565-open-option0-1xh100", Some(0));
    assert!(r.passed, "{r}");
    assert_eq!(r.driver.flavour, ModuleFlavour::Open);
    assert_eq!(r.requested, Some(0));
    let opt = check(&r, "EnableGpuFirmware");
    assert_eq!(opt.verdict, LiveVerdict::Ignored);
    assert!(
        opt.detail.contains("ignored by the open module"),
        "{}",
        opt.detail
    );
    let g = &r.gpus[0];
    assert_eq!(g.bus, "0000:41:00.0");
    assert_eq!(g.firmware.as_deref(), Some("565.57.01"));
    assert_eq!(g.gsp, GspState::On);
    assert_eq!(g.verdict, LiveVerdict::Ignored);
    assert!(r.to_string().contains("ignored"));
    // Without an expectation the same host is judged against what was requested: still ignored.
    let r = run("565-open-option0-1xh100", None);
    assert!(r.passed);
    assert_eq!(r.gpus[0].verdict, LiveVerdict::Ignored);
}

#[test]
fn open_535_eight_h100_default() {
    let r = run("535-open-gsp-8xh100", None);
    assert!(r.passed, "{r}");
    assert_eq!(r.driver.flavour, ModuleFlavour::Open);
    assert_eq!(r.driver.version.as_deref(), Some("535.183.01"));
    assert_eq!(r.requested, Some(18));
    assert_eq!(r.gpus.len(), 8);
    assert!(
        r.gpus
            .iter()
            .all(|g| g.gsp == GspState::On && g.verdict == LiveVerdict::Ok)
    );
    assert!(r.gpus.iter().all(|g| g.nvidia_smi_gsp.is_none()));
    // modprobe.d sets nothing: the driver default 18 is what was loaded.
    assert_eq!(check(&r, "modprobe.d").verdict, LiveVerdict::Ok);
}

#[test]
fn stale_initramfs_fails_with_the_fix() {
    let r = run("565-proprietary-stale-initramfs-1xh100", Some(1));
    assert!(!r.passed);
    let m = check(&r, "modprobe.d");
    assert_eq!(m.verdict, LiveVerdict::Fail);
    assert!(
        m.detail
            .contains("/etc/modprobe.d/nvidia-gsp.conf:2 gives 1"),
        "{}",
        m.detail
    );
    assert!(m.detail.contains("update-initramfs -u"), "{}", m.detail);
    assert_eq!(check(&r, "EnableGpuFirmware").verdict, LiveVerdict::Fail);
    // GSP still runs: 565's default policy turns it on for Hopper.
    assert_eq!(r.gpus[0].gsp, GspState::On);
    assert_eq!(r.gpus[0].verdict, LiveVerdict::Ok);
}

#[test]
fn firmware_missing_and_gsp_expected_but_na() {
    let r = run("535-proprietary-firmware-missing-1xh100", None);
    assert!(!r.passed);
    let fw = check(&r, "gsp firmware");
    assert_eq!(fw.verdict, LiveVerdict::Fail);
    assert!(
        fw.detail.contains("/lib/firmware/nvidia/535.183.01"),
        "{}",
        fw.detail
    );
    let g = &r.gpus[0];
    assert_eq!(g.gsp, GspState::Off);
    assert_eq!(g.verdict, LiveVerdict::Fail);
    assert!(g.detail.contains("GSP expected"), "{}", g.detail);
    assert_eq!(check(&r, "modprobe.d").verdict, LiveVerdict::Ok);
    assert!(r.to_string().contains("FAIL: 2 row(s) failed"), "{r}");
}

#[test]
fn missing_proc_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let err = verify_live(&LiveOptions {
        proc_dir: dir.path().to_path_buf(),
        root: dir.path().to_path_buf(),
        nvidia_smi: None,
        expect_gpu_firmware: None,
        expect_driver_branch: None,
    })
    .unwrap_err();
    assert!(err.to_string().contains("driver/nvidia/version"), "{err}");
}

#[test]
fn driver_branch_is_checked() {
    let dir = case_dir("535-open-gsp-8xh100");
    let r = run_in(&dir, None, Some("535"));
    assert!(r.passed, "{r}");
    assert_eq!(check(&r, "driver").verdict, LiveVerdict::Ok);
    let r = run_in(&dir, None, Some("565"));
    assert!(!r.passed);
    let d = check(&r, "driver");
    assert_eq!(d.verdict, LiveVerdict::Fail);
    assert_eq!(d.detail, "535.183.01 loaded, branch 565 expected");
}

/// A per-device `EnableGpuFirmware=0` for one GPU of the 8-GPU proprietary host: that GPU is
/// judged against 0, the others against the global 1 (a mixed machine shows up per GPU).
#[test]
fn per_device_override_applies_to_its_gpu_only() {
    let src = case_dir("565-proprietary-gsp-8xh100");
    let tmp = tempfile::tempdir().unwrap();
    copy_tree(&src, tmp.path());
    let params = tmp.path().join("proc/driver/nvidia/params");
    let text = std::fs::read_to_string(&params).unwrap().replace(
        "RegistryDwordsPerDevice: \"\"",
        "RegistryDwordsPerDevice: \"pci=0000:3b:00.0;EnableGpuFirmware=0\"",
    );
    std::fs::write(&params, text).unwrap();
    let r = run_in(tmp.path(), None, None);
    assert_eq!(
        r.registry_dwords_per_device,
        "pci=0000:3b:00.0;EnableGpuFirmware=0"
    );
    assert_eq!(r.gpus[0].requested, Some(1));
    assert_eq!(r.gpus[0].verdict, LiveVerdict::Ok);
    assert_eq!(r.gpus[1].bus, "0000:3b:00.0");
    assert_eq!(r.gpus[1].requested, Some(0));
    // It runs GSP although its override asks for GSP off: the override did not take.
    assert_eq!(r.gpus[1].verdict, LiveVerdict::Fail);
    assert!(!r.passed);
}

fn copy_tree(from: &std::path::Path, to: &std::path::Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let dest = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            std::fs::create_dir_all(&dest).unwrap();
            copy_tree(&entry.path(), &dest);
        } else {
            std::fs::copy(entry.path(), &dest).unwrap();
        }
    }
}
