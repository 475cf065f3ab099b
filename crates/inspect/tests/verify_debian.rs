//! The NVIDIA rules on REAL bytes: Debian bookworm's 535.261.03 `nvidia.ko` (built by DKMS's
//! recipe against the fixture kernel's headers) and `firmware-nvidia-gsp`'s files, from
//! `cargo xtask nvidia-bytes`, laid out as Debian installs them, in real GPT + ext4 disks.

mod common;

use common::{DebianSpec, NvidiaBytes, debian, nvidia_bytes};
use inspect::{CheckId, Expectations, ModuleFlavour, Verdict, VerifyReport, verify};

fn expect(models: &[&str]) -> Expectations {
    Expectations {
        enable_gpu_firmware: Some(1),
        driver_branch: Some("535".into()),
        gpu_models: models.iter().map(|m| m.to_string()).collect(),
        ..Expectations::default()
    }
}

fn check(r: &VerifyReport, id: CheckId) -> &inspect::Check {
    r.check(id).unwrap_or_else(|| panic!("no check {id}: {r}"))
}

fn bytes() -> Option<NvidiaBytes> {
    if !common::tools() {
        return None;
    }
    nvidia_bytes()
}

#[test]
fn real_debian_driver_passes_from_nvidia_current_and_real_firmware() {
    let Some(b) = bytes() else { return };
    let g = debian(&b, &DebianSpec::default());
    let disk = g.build();
    let r = verify(&disk, &expect(&["A100", "H100"])).unwrap();
    assert!(r.passed, "{r}");
    assert_eq!(r.driver.version.as_deref(), Some(b.version.as_str()));
    assert_eq!(r.driver.branch.as_deref(), Some("535"));
    assert_eq!(r.driver.flavour, ModuleFlavour::Proprietary);
    let m = r.driver.module.as_ref().unwrap();
    assert_eq!(
        m.path,
        format!("/lib/modules/{}/updates/dkms/nvidia-current.ko", b.kernel)
    );
    assert_eq!(m.license.as_deref(), Some("NVIDIA"));
    assert!(
        m.vermagic
            .as_deref()
            .unwrap()
            .starts_with(&format!("{} ", b.kernel)),
        "{m:?}"
    );
    assert!(
        m.firmware
            .contains(&format!("nvidia/{}/gsp_ga10x.bin", b.version)),
        "{m:?}"
    );
    assert_eq!(
        r.driver.install_target.as_ref().map(|(_, n)| n.as_str()),
        Some("nvidia-current")
    );
    assert_eq!(r.gpu_firmware.root.effective, Some(1));
    assert_eq!(
        r.gpu_firmware.root.source,
        "/etc/modprobe.d/nvidia-options.conf:1"
    );
    for id in [
        CheckId::Driver,
        CheckId::DriverModule,
        CheckId::DriverFlavour,
        CheckId::FirmwareFiles,
        CheckId::GpuFirmware,
    ] {
        assert_eq!(check(&r, id).verdict, Verdict::Pass, "{id}: {r}");
    }
    let fw = check(&r, CheckId::FirmwareFiles);
    assert!(fw.summary.contains("gsp_ga10x.bin, gsp_tu10x.bin"), "{r}");

    // Blackwell needs the open module: the proprietary one fails, naming the rule.
    let r = verify(&disk, &expect(&["B200"])).unwrap();
    assert!(!r.passed);
    let c = check(&r, CheckId::DriverFlavour);
    assert_eq!(c.verdict, Verdict::Fail, "{r}");
    assert!(
        c.summary
            .contains("B200 (Blackwell) need the open kernel modules"),
        "{r}"
    );
    assert!(
        c.details
            .iter()
            .any(|d| d.contains("nvidia-open-kernel-dkms"))
    );
    assert!(
        r.to_string()
            .lines()
            .any(|l| l.starts_with("driver/flavour ") && l.contains(" FAIL ")),
        "{r}"
    );

    // An unknown model cannot be vouched for.
    let r = verify(&disk, &expect(&["MI300X"])).unwrap();
    assert_eq!(check(&r, CheckId::FirmwareFiles).verdict, Verdict::Fail);
}

#[test]
fn compressed_real_modules_are_read() {
    let Some(b) = bytes() else { return };
    for suffix in [".xz", ".zst"] {
        let g = debian(
            &b,
            &DebianSpec {
                module_suffix: Some(suffix),
                firmware: false,
                ..DebianSpec::default()
            },
        );
        let r = verify(&g.build(), &expect(&[])).unwrap();
        let m = r.driver.module.as_ref().unwrap();
        assert!(
            m.path.ends_with(&format!("nvidia-current.ko{suffix}")),
            "{m:?}"
        );
        assert_eq!(
            m.version.as_deref(),
            Some(b.version.as_str()),
            "{suffix}: {m:?}"
        );
        assert_eq!(
            check(&r, CheckId::DriverModule).verdict,
            Verdict::Pass,
            "{r}"
        );
        // No firmware installed: that rule decides, naming the directory.
        let fw = check(&r, CheckId::FirmwareFiles);
        assert_eq!(fw.verdict, Verdict::Fail);
        assert_eq!(fw.summary, format!("no GSP firmware for {}", b.version));
        assert!(
            fw.details.contains(&format!(
                "/lib/firmware/nvidia/{}/gsp_*.bin not found",
                b.version
            )),
            "{r}"
        );
    }
}

#[test]
fn every_boot_kernel_needs_a_module_built_for_it() {
    let Some(b) = bytes() else { return };
    let g = debian(
        &b,
        &DebianSpec {
            firmware: false,
            ..DebianSpec::default()
        },
    );
    // A newer kernel without headers (no DKMS build), the default boot …
    let missing = "6.1.0-98-cloud-amd64";
    g.add_kernel(missing);
    // … and one holding the module of another kernel.
    let other = "6.1.0-99-cloud-amd64";
    g.add_kernel(other);
    g.put_real_module(&b, other, "");
    g.link("/vmlinuz", &format!("boot/vmlinuz-{missing}"));
    let r = verify(&g.build(), &expect(&[])).unwrap();
    assert!(!r.passed);
    let c = check(&r, CheckId::DriverModule);
    assert_eq!(c.verdict, Verdict::Fail, "{r}");
    assert_eq!(
        c.summary,
        format!("no usable nvidia module for kernel {missing}, {other}")
    );
    let text = c.details.join("\n");
    assert!(
        text.contains(&format!(
            "kernel {missing} (default): no nvidia module under /lib/modules/{missing}"
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!("install linux-headers-{missing}")),
        "{text}"
    );
    assert!(
        text.contains(&format!("was built for kernel {} (vermagic)", b.kernel)),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "kernel {}: /lib/modules/{}/updates/dkms/nvidia-current.ko version {}",
            b.kernel, b.kernel, b.version
        )),
        "{text}"
    );
    // The packages still tell the version, so the firmware rule still judges.
    assert_eq!(r.driver.version.as_deref(), Some(b.version.as_str()));
}

#[test]
fn firmware_per_gpu_model_and_empty_files() {
    let Some(b) = bytes() else { return };
    let g = debian(&b, &DebianSpec::default());
    let dir = format!("/usr/lib/firmware/nvidia/{}", b.version);
    g.remove(&format!("{dir}/gsp_tu10x.bin"));
    let disk = g.build();
    // H100 loads gsp_ga10x.bin, present: pass; A100 loads gsp_tu10x.bin, absent: fail.
    let r = verify(&disk, &expect(&["H100"])).unwrap();
    assert_eq!(
        check(&r, CheckId::FirmwareFiles).verdict,
        Verdict::Pass,
        "{r}"
    );
    let r = verify(&disk, &expect(&["A100", "H100"])).unwrap();
    let c = check(&r, CheckId::FirmwareFiles);
    assert_eq!(c.verdict, Verdict::Fail, "{r}");
    assert_eq!(
        c.summary,
        format!(
            "/lib/firmware/nvidia/{}/gsp_tu10x.bin not found, which A100 (Ampere GA100) loads",
            b.version
        )
    );
    assert!(
        c.details
            .iter()
            .any(|d| d.starts_with("fix: install the GSP firmware package"))
    );

    // An empty gsp_ga10x.bin fails with or without models.
    let g = debian(&b, &DebianSpec::default());
    g.put(&format!("{dir}/gsp_ga10x.bin"), "");
    let disk = g.build();
    for models in [&[][..], &["H100"][..]] {
        let r = verify(&disk, &expect(models)).unwrap();
        let c = check(&r, CheckId::FirmwareFiles);
        assert_eq!(c.verdict, Verdict::Fail, "{r}");
        assert!(
            c.summary.contains(&format!(
                "/lib/firmware/nvidia/{}/gsp_ga10x.bin is empty",
                b.version
            )),
            "{r}"
        );
    }
}

#[test]
fn container_toolkit_with_containerd_on_runc_fails() {
    let Some(b) = bytes() else { return };
    let g = debian(
        &b,
        &DebianSpec {
            container_toolkit: true,
            ..DebianSpec::default()
        },
    );
    let r = verify(&g.build(), &expect(&[])).unwrap();
    let c = check(&r, CheckId::ContainerRuntime);
    assert_eq!(c.verdict, Verdict::Fail, "{r}");
    assert!(
        c.summary.contains(
            "containerd's default runtime is runc, not nvidia (/etc/containerd/config.toml)"
        ),
        "{r}"
    );
    assert!(
        c.summary.contains(
            "Kubernetes' device plugin then sees no GPUs unless a RuntimeClass is set up"
        )
    );
    assert!(
        c.details
            .iter()
            .any(|d| d
                .contains("nvidia-ctk runtime configure --runtime=containerd --set-as-default"))
    );
    let failing: Vec<_> = r
        .checks
        .iter()
        .filter(|c| c.verdict == Verdict::Fail)
        .map(|c| c.id)
        .collect();
    assert_eq!(failing, [CheckId::ContainerRuntime], "{r}");
}
