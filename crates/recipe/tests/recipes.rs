//! The shipped recipes in recipes/: they load, resolve as documented, and their scripts pass
//! shellcheck.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use recipe::{
    AccelChoice, BaseLocation, ByteSize, Checksum, ExportFormat, Firmware, GpuVendor, Recipe,
    VarOverride,
};

fn recipe_path(name: &str) -> PathBuf {
    test_support::workspace_root().join("recipes").join(name)
}

fn ids(r: &Recipe) -> Vec<String> {
    r.steps.iter().map(|s| s.id.to_string()).collect()
}

#[test]
fn nvidia_fw1_resolves_to_seven_steps() {
    let r = Recipe::load(&recipe_path("nvidia-fw1.yaml"), &[]).unwrap();
    assert_eq!(r.name, "ubuntu-22.04-nvidia-565-firmware1");
    assert_eq!(ids(&r), ["01", "02", "03", "04", "05", "06", "99"]);
    let names: Vec<&str> = r.steps.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names[3], "04-nvidia-driver");
    let driver = r.step(&"04".parse().unwrap()).unwrap();
    assert!(driver.reboot);
    assert_eq!(driver.timeout, Duration::from_secs(45 * 60));
    assert!(r.steps.iter().filter(|s| s.reboot).count() == 1);
    assert_eq!(
        r.base.location,
        BaseLocation::Http(
            "https://cloud-images.ubuntu.com/jammy/current/jammy-server-cloudimg-amd64.img"
                .parse()
                .unwrap()
        )
    );
    assert!(
        matches!(&r.base.checksum, Checksum::SumsFile(BaseLocation::Http(u)) if u.as_str().ends_with("/jammy/current/SHA256SUMS"))
    );
    assert_eq!(r.vm.disk_size, ByteSize::gib(25));
    assert_eq!(r.vm.firmware, Firmware::Bios);
    assert_eq!(r.vm.accel, AccelChoice::Auto);
    assert_eq!(r.export.formats, [ExportFormat::Raw, ExportFormat::Qcow2]);
    let nvidia = r.verify.nvidia.as_ref().unwrap();
    assert_eq!(nvidia.enable_gpu_firmware, Some(1));
    assert_eq!(nvidia.driver_branch.as_deref(), Some("565"));
    assert!(r.verify.hygiene);
    let gpu = r.payload.gpu.as_ref().unwrap();
    assert_eq!(gpu.vendor, GpuVendor::Nvidia);
    assert_eq!(gpu.models, ["A100", "H100", "H200"]);
    assert_eq!(r.payload.name, r.name);
    let env = r.step_env(driver);
    assert_eq!(env["NVIDIA_DRIVER_BRANCH"], "565");
    assert_eq!(env["UBUNTU_CODENAME"], "jammy");
}

#[test]
fn gpu_ready_has_no_driver_steps() {
    let r = Recipe::load(&recipe_path("gpu-ready.yaml"), &[]).unwrap();
    assert_eq!(ids(&r), ["01", "02", "03", "99"]);
    assert_eq!(r.vm.disk_size, ByteSize::gib(20));
    assert!(r.verify.nvidia.is_none());
    assert!(r.steps.iter().all(|s| !s.name.contains("nvidia")));
}

#[test]
fn overrides_flow_into_every_templated_value() {
    let overrides: Vec<VarOverride> = [
        "ubuntu_version=24.04",
        "ubuntu_codename=noble",
        "nvidia_driver_branch=580",
    ]
    .iter()
    .map(|s| s.parse().unwrap())
    .collect();
    let r = Recipe::load(&recipe_path("nvidia-fw1.yaml"), &overrides).unwrap();
    assert_eq!(r.name, "ubuntu-24.04-nvidia-580-firmware1");
    assert!(
        r.base
            .location
            .to_string()
            .contains("/noble/current/noble-server")
    );
    assert_eq!(
        r.verify.nvidia.as_ref().unwrap().driver_branch.as_deref(),
        Some("580")
    );
    assert_eq!(r.vars["nvidia_driver_branch"], "580");
}

#[test]
fn step_lookup_lists_valid_ids() {
    let r = Recipe::load(&recipe_path("gpu-ready.yaml"), &[]).unwrap();
    let err = r.step(&"04".parse().unwrap()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "no step `04` (the recipe's steps are 01, 02, 03, 99)"
    );
    assert_eq!(r.step_by_arg("3").unwrap().name, "03-kubernetes-tools");
    assert!(r.step_by_arg("x1").is_err());
}

#[test]
fn scripts_pass_shellcheck() {
    if !test_support::require_tool("shellcheck") {
        return;
    }
    let dir = test_support::workspace_root().join("recipes/scripts");
    let mut scripts: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "sh"))
        .collect();
    scripts.sort();
    assert!(scripts.len() >= 7, "found only {scripts:?}");
    let out = Command::new("shellcheck")
        .args(["--shell=bash", "--severity=style", "--external-sources"])
        .args(&scripts)
        .output()
        .expect("run shellcheck");
    assert!(
        out.status.success(),
        "shellcheck found problems:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    for script in &scripts {
        let text = std::fs::read_to_string(script).unwrap();
        assert!(
            text.lines().any(|l| l.trim() == "set -euo pipefail"),
            "{} lacks `set -euo pipefail`",
            script.display()
        );
    }
}

#[test]
fn verify_nvidia_gpu_models_are_read_and_default_to_empty() {
    let path = recipe_path("nvidia-fw1.yaml");
    let r = Recipe::load(&path, &[]).unwrap();
    // Not set: empty here, `payload.gpu.models` is used by pipeline::expectations.
    assert!(r.verify.nvidia.as_ref().unwrap().gpu_models.is_empty());
    let text = std::fs::read_to_string(&path).unwrap().replace(
        "    driver_branch: \"{{nvidia_driver_branch}}\"\n",
        "    driver_branch: \"{{nvidia_driver_branch}}\"\n    gpu_models: [A100, \"RTX PRO 6000\"]\n",
    );
    let r = Recipe::from_source(&path, &text, &[]).unwrap();
    assert_eq!(
        r.verify.nvidia.as_ref().unwrap().gpu_models,
        ["A100", "RTX PRO 6000"]
    );
    let bad = text.replace("[A100, \"RTX PRO 6000\"]", "[A100, \"\"]");
    let e = Recipe::from_source(&path, &bad, &[]).unwrap_err();
    assert!(e.to_string().contains("verify.nvidia.gpu_models[1]"), "{e}");
}
