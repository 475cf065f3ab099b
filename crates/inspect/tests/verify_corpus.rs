//! The verification corpus: real GPT + ext4 images built with mkfs.ext4 -d and sfdisk.

mod common;

use common::{DRIVER, Guest, KERNEL, Spec, ubuntu};
use inspect::{Expectations, SettingStatus, Verdict, VerifyReport, verify};

fn expect_fw(v: u32) -> Expectations {
    Expectations {
        enable_gpu_firmware: Some(v),
        ..Expectations::default()
    }
}

fn run_verify(g: &Guest, expect: &Expectations) -> VerifyReport {
    let disk = g.build();
    verify(&disk, expect).unwrap_or_else(|e| panic!("verify failed: {e:?}"))
}

fn verdict(r: &VerifyReport, id: &str) -> Verdict {
    r.check(id)
        .unwrap_or_else(|| panic!("no check {id}: {r}"))
        .verdict
}

#[test]
fn option_values_decode_and_match_expectations() {
    if !common::tools() {
        return;
    }
    let cases: [(&str, u32, &str); 6] = [
        (
            "0",
            0,
            "0 = GSP off, driver runs on the CPU (proprietary nvidia.ko only; ignored by the open modules; impossible on Blackwell)",
        ),
        ("1", 1, "1 = GSP forced on, no fallback"),
        ("2", 2, "2 = driver default policy, no fallback"),
        (
            "17",
            17,
            "17 = GSP forced on, CPU fallback if the firmware is missing",
        ),
        (
            "18",
            18,
            "18 = driver default: default policy + CPU fallback",
        ),
        (
            "0x11",
            17,
            "17 = GSP forced on, CPU fallback if the firmware is missing",
        ),
    ];
    for (raw, value, text) in cases {
        let conf = format!("# set by imgbake\noptions nvidia NVreg_EnableGpuFirmware={raw}\n");
        let g = ubuntu(&Spec {
            modprobe: Some(Box::leak(conf.into_boxed_str())),
            ..Spec::default()
        });
        let r = run_verify(&g, &expect_fw(value));
        assert_eq!(r.gpu_firmware.decoded, text, "value {raw}");
        assert_eq!(r.gpu_firmware.root.effective, Some(value));
        assert_eq!(
            r.gpu_firmware.root.source,
            "/etc/modprobe.d/nvidia-gsp.conf:2"
        );
        assert_eq!(
            verdict(&r, "gpu-firmware"),
            Verdict::Pass,
            "value {raw}: {r}"
        );
        assert!(r.passed, "value {raw}: {r}");
        // The same image against a different expectation fails.
        let other = if value == 1 { 18 } else { 1 };
        let r2 = verify(&r.image, &expect_fw(other)).unwrap();
        assert_eq!(verdict(&r2, "gpu-firmware"), Verdict::Fail);
        assert!(!r2.passed);
    }
}

#[test]
fn missing_option_is_the_driver_default() {
    if !common::tools() {
        return;
    }
    let g = ubuntu(&Spec {
        modprobe: None,
        ..Spec::default()
    });
    let r = run_verify(&g, &Expectations::default());
    assert_eq!(
        r.gpu_firmware.decoded,
        "unset → 18 = driver default: default policy + CPU fallback"
    );
    assert_eq!(r.gpu_firmware.root.source, "driver default (not set)");
    assert_eq!(verdict(&r, "gpu-firmware"), Verdict::Pass);
    let r = verify(&r.image, &expect_fw(1)).unwrap();
    assert_eq!(verdict(&r, "gpu-firmware"), Verdict::Fail);
    assert!(
        r.check("gpu-firmware")
            .unwrap()
            .details
            .iter()
            .any(|d| d == "expected 1 = GSP forced on, no fallback")
    );
}

#[test]
fn two_files_disagree_last_in_lexical_order_wins_and_etc_shadows_lib() {
    if !common::tools() {
        return;
    }
    let g = ubuntu(&Spec {
        modprobe: Some("options nvidia NVreg_EnableGpuFirmware=1\n"),
        ..Spec::default()
    });
    g.put(
        "/etc/modprobe.d/zz-local.conf",
        "options nvidia NVreg_EnableGpuFirmware=0\n",
    );
    // Same name in /usr/lib is overridden by /etc.
    g.put(
        "/usr/lib/modprobe.d/nvidia-gsp.conf",
        "options nvidia NVreg_EnableGpuFirmware=2\n",
    );
    // Not a .conf: never read.
    g.put(
        "/etc/modprobe.d/nvidia.conf.disabled",
        "options nvidia NVreg_EnableGpuFirmware=17\n",
    );
    let r = run_verify(&g, &expect_fw(1));
    assert_eq!(r.gpu_firmware.root.effective, Some(0));
    assert_eq!(
        r.gpu_firmware.root.source,
        "/etc/modprobe.d/zz-local.conf:1"
    );
    assert_eq!(verdict(&r, "gpu-firmware"), Verdict::Fail);
    assert_eq!(verdict(&r, "gpu-firmware-conflicts"), Verdict::Warn);
    let conflicts = &r.check("gpu-firmware-conflicts").unwrap().details;
    assert_eq!(
        conflicts,
        &["/etc/modprobe.d/nvidia-gsp.conf:1 sets 1 but /etc/modprobe.d/zz-local.conf:1 gives 0"]
    );
    let shadowed = r
        .gpu_firmware
        .root
        .settings
        .iter()
        .find(|s| s.location == "/usr/lib/modprobe.d/nvidia-gsp.conf:1")
        .expect("shadowed setting listed");
    assert!(matches!(shadowed.status, SettingStatus::Shadowed(_)));
}

#[test]
fn registry_dwords_and_kernel_command_line() {
    if !common::tools() {
        return;
    }
    // Only in RegistryDwords: the parameter's default (18) is written over it.
    let g = ubuntu(&Spec {
        modprobe: Some(
            "options nvidia NVreg_RegistryDwords=\"RMForceStaticBar1=1;EnableGpuFirmware=1\"\n",
        ),
        ..Spec::default()
    });
    let r = run_verify(&g, &expect_fw(1));
    assert_eq!(r.gpu_firmware.root.effective, Some(18));
    assert_eq!(r.gpu_firmware.root.settings.len(), 1);
    assert!(matches!(
        r.gpu_firmware.root.settings[0].status,
        SettingStatus::Ignored(_)
    ));
    assert_eq!(verdict(&r, "gpu-firmware"), Verdict::Fail);
    assert_eq!(verdict(&r, "gpu-firmware-conflicts"), Verdict::Warn);

    // On the kernel command line (grub.cfg's default entry) after modprobe.d: it wins.
    let g = ubuntu(&Spec {
        modprobe: Some("options nvidia NVreg_EnableGpuFirmware=0\n"),
        ..Spec::default()
    });
    g.put(
        "/boot/grub/grub.cfg",
        &format!("menuentry 'Ubuntu' {{\n\tlinux /boot/vmlinuz-{KERNEL} root=LABEL=cloudimg-rootfs ro nvidia.NVreg_EnableGpuFirmware=1\n}}\n"),
    );
    g.put(
        "/etc/default/grub.d/60-nvidia.cfg",
        "GRUB_CMDLINE_LINUX_DEFAULT=\"$GRUB_CMDLINE_LINUX_DEFAULT nvidia.NVreg_EnableGpuFirmware=1\"\n",
    );
    let r = run_verify(&g, &expect_fw(1));
    assert_eq!(r.gpu_firmware.root.effective, Some(1));
    assert_eq!(
        r.gpu_firmware.root.source,
        "/boot/grub/grub.cfg:2 (kernel command line)"
    );
    assert_eq!(r.gpu_firmware.decoded, "1 = GSP forced on, no fallback");
    assert_eq!(verdict(&r, "gpu-firmware"), Verdict::Pass);
    assert_eq!(verdict(&r, "gpu-firmware-conflicts"), Verdict::Warn);
    assert!(r.passed, "{r}");

    // /etc/default/grub changed but grub.cfg not regenerated.
    let g = ubuntu(&Spec::default());
    g.put(
        "/etc/default/grub.d/60-nvidia.cfg",
        "GRUB_CMDLINE_LINUX=\"nvidia.NVreg_EnableGpuFirmware=1\"\n",
    );
    let r = run_verify(&g, &expect_fw(1));
    let notes = &r.check("gpu-firmware-conflicts").unwrap().details;
    assert!(notes.iter().any(|n| n.contains("run update-grub")), "{r}");
}

#[test]
fn open_modules_ignore_zero() {
    if !common::tools() {
        return;
    }
    let g = ubuntu(&Spec {
        open_modules: true,
        modprobe: Some("options nvidia NVreg_EnableGpuFirmware=0\n"),
        ..Spec::default()
    });
    let r = run_verify(&g, &expect_fw(0));
    assert_eq!(r.driver.flavour, inspect::ModuleFlavour::Open);
    let c = r.check("gpu-firmware").unwrap();
    assert_eq!(c.verdict, Verdict::Fail);
    assert!(
        c.summary.ends_with("but the open modules ignore 0"),
        "{}",
        c.summary
    );
}

#[test]
fn driver_and_firmware_files() {
    if !common::tools() {
        return;
    }
    let expect = Expectations {
        driver_branch: Some("565".into()),
        ..expect_fw(1)
    };
    let r = run_verify(&ubuntu(&Spec::default()), &expect);
    assert_eq!(r.driver.version.as_deref(), Some(DRIVER));
    assert_eq!(r.driver.flavour, inspect::ModuleFlavour::Proprietary);
    assert_eq!(verdict(&r, "driver"), Verdict::Pass, "{r}");
    assert_eq!(verdict(&r, "firmware-files"), Verdict::Pass);
    assert_eq!(
        r.check("firmware-files").unwrap().summary,
        format!("/lib/firmware/nvidia/{DRIVER}: gsp_ga10x.bin, gsp_tu10x.bin")
    );
    assert!(r.passed, "{r}");

    let r = run_verify(
        &ubuntu(&Spec {
            firmware_version: None,
            ..Spec::default()
        }),
        &expect,
    );
    assert_eq!(verdict(&r, "firmware-files"), Verdict::Fail);
    assert_eq!(
        r.check("firmware-files").unwrap().summary,
        format!("no GSP firmware for {DRIVER}")
    );

    let wrong_fw = ubuntu(&Spec {
        firmware_version: Some("550.127.05"),
        ..Spec::default()
    });
    let r = run_verify(&wrong_fw, &expect);
    let c = r.check("firmware-files").unwrap();
    assert_eq!(c.verdict, Verdict::Fail);
    assert!(
        c.details
            .contains(&"firmware present for other versions: 550.127.05".to_string()),
        "{r}"
    );

    let wrong = Expectations {
        driver_branch: Some("570".into()),
        ..expect_fw(1)
    };
    let r = verify(&r.image, &wrong).unwrap();
    assert_eq!(verdict(&r, "driver"), Verdict::Fail);

    // A module built for another version than the package says (stale DKMS build).
    let g = ubuntu(&Spec::default());
    g.remove(&format!("/usr/lib/modules/{KERNEL}/updates/dkms/nvidia.ko"));
    g.put_module("560.35.03", "NVIDIA", true);
    let r = run_verify(&g, &expect);
    assert_eq!(
        r.driver.module.as_ref().unwrap().path,
        format!("/lib/modules/{KERNEL}/updates/dkms/nvidia.ko.zst")
    );
    assert_eq!(verdict(&r, "driver"), Verdict::Fail);

    // No driver at all: skipped unless a branch is expected.
    let r = run_verify(
        &ubuntu(&Spec {
            driver: None,
            modprobe: None,
            firmware_version: None,
            ..Spec::default()
        }),
        &Expectations::default(),
    );
    assert_eq!(verdict(&r, "driver"), Verdict::Skip);
    assert_eq!(verdict(&r, "gpu-firmware"), Verdict::Skip);
    assert!(r.passed, "{r}");
}

#[test]
fn initramfs_with_and_without_the_option() {
    if !common::tools() {
        return;
    }
    let conf = "options nvidia NVreg_EnableGpuFirmware=1\n";
    let g = ubuntu(&Spec::default());
    g.put_initrd(true, &[("etc/modprobe.d/nvidia-gsp.conf", conf)]);
    let r = run_verify(&g, &expect_fw(1));
    let c = r.check("initramfs").unwrap();
    assert_eq!(c.verdict, Verdict::Pass, "{r}");
    assert_eq!(
        c.summary,
        "initrd has nvidia modules and gives the same value (1)"
    );
    assert!(
        c.details[0].starts_with("2 archive(s): none + zstd"),
        "{:?}",
        c.details
    );

    let g = ubuntu(&Spec::default());
    g.put_initrd(true, &[]);
    let r = run_verify(&g, &expect_fw(1));
    let c = r.check("initramfs").unwrap();
    assert_eq!(c.verdict, Verdict::Fail);
    assert_eq!(
        c.summary,
        "initrd gives 18 but the root filesystem gives 1 (run update-initramfs -u)"
    );
    assert!(!r.passed);

    let g = ubuntu(&Spec::default());
    g.put_initrd(false, &[]);
    let r = run_verify(&g, &expect_fw(1));
    assert_eq!(verdict(&r, "initramfs"), Verdict::Pass);
    assert!(
        r.check("initramfs")
            .unwrap()
            .summary
            .contains("has no nvidia modules")
    );
}

#[test]
fn ubuntu_2404_layout_with_separate_boot() {
    if !common::tools() {
        return;
    }
    let g = ubuntu(&Spec {
        separate_boot: true,
        ..Spec::default()
    });
    g.put_initrd(
        true,
        &[(
            "usr/lib/modprobe.d/nvidia-gsp.conf",
            "options nvidia NVreg_EnableGpuFirmware=17\n",
        )],
    );
    g.put(
        "/boot/grub/grub.cfg",
        &format!("menuentry 'Ubuntu' {{\n\tlinux /vmlinuz-{KERNEL} root=LABEL=cloudimg-rootfs ro nvidia.NVreg_EnableGpuFirmware=0x11\n}}\n"),
    );
    let r = run_verify(&g, &expect_fw(17));
    assert_eq!(r.layout.root.partition, 1);
    assert_eq!(r.layout.root.label, "cloudimg-rootfs");
    let boot = r.layout.boot.as_ref().expect("separate /boot found");
    assert_eq!((boot.partition, boot.label.as_str()), (16, "BOOT"));
    assert_eq!(r.kernel.as_deref(), Some(KERNEL));
    assert_eq!(
        r.gpu_firmware.root.source,
        "/boot/grub/grub.cfg:2 (kernel command line)"
    );
    assert_eq!(verdict(&r, "gpu-firmware"), Verdict::Pass, "{r}");
    assert_eq!(verdict(&r, "initramfs"), Verdict::Pass, "{r}");
    assert!(r.passed, "{r}");
}

#[test]
fn dirty_hygiene() {
    if !common::tools() {
        return;
    }
    let g = ubuntu(&Spec::default());
    g.put("/etc/ssh/ssh_host_ed25519_key", "PRIVATE");
    g.put("/etc/ssh/ssh_host_ed25519_key.pub", "ssh-ed25519 AAAA");
    g.put("/etc/machine-id", "0123456789abcdef0123456789abcdef\n");
    g.link(
        "/var/lib/cloud/instance",
        "/var/lib/cloud/instances/iid-imgbake",
    );
    g.put(
        "/var/lib/cloud/instances/iid-imgbake/user-data.txt",
        "#cloud-config\n",
    );
    g.put(
        "/etc/passwd",
        "root:x:0:0:root:/root:/bin/bash\nimgbake:x:1001:1001::/home/imgbake:/bin/bash\n",
    );
    g.put(
        "/home/imgbake/.ssh/authorized_keys",
        "ssh-ed25519 AAAA build\n",
    );
    g.put("/root/.ssh/authorized_keys", "ssh-ed25519 AAAA root\n");
    g.put("/var/log/cloud-init.log", "2026-11-25 cloud-init ran\n");
    let r = run_verify(&g, &expect_fw(1));
    for id in [
        "ssh-host-keys",
        "machine-id",
        "cloud-init-instance",
        "build-user",
        "authorized-keys",
        "build-logs",
    ] {
        assert_eq!(
            verdict(&r, &format!("hygiene/{id}")),
            Verdict::Fail,
            "{id}: {r}"
        );
    }
    assert_eq!(
        r.check("hygiene/ssh-host-keys").unwrap().details,
        [
            "/etc/ssh/ssh_host_ed25519_key",
            "/etc/ssh/ssh_host_ed25519_key.pub"
        ]
    );
    assert_eq!(
        r.check("hygiene/authorized-keys").unwrap().details,
        [
            "/root/.ssh/authorized_keys",
            "/home/imgbake/.ssh/authorized_keys"
        ]
    );
    assert!(!r.passed);
    let lenient = Expectations {
        hygiene: false,
        ..expect_fw(1)
    };
    let r = verify(&r.image, &lenient).unwrap();
    assert_eq!(verdict(&r, "hygiene/machine-id"), Verdict::Warn);
    assert!(r.passed, "{r}");

    // The clean default guest passes every hygiene rule.
    let r = run_verify(&ubuntu(&Spec::default()), &expect_fw(1));
    assert!(
        r.checks
            .iter()
            .filter(|c| c.id.as_str().starts_with("hygiene/"))
            .all(|c| c.verdict == Verdict::Pass),
        "{r}"
    );
}

#[test]
fn report_renders_as_table_and_json() {
    if !common::tools() {
        return;
    }
    let r = run_verify(&ubuntu(&Spec::default()), &expect_fw(1));
    let table = r.to_string();
    assert!(table.contains("gpu-firmware "), "{table}");
    assert!(
        table.contains("PASS     1 = GSP forced on, no fallback"),
        "{table}"
    );
    assert!(table.ends_with("overall PASS"), "{table}");
    let json = serde_json::to_value(&r).unwrap();
    assert_eq!(json["passed"], true);
    assert_eq!(
        json["gpu_firmware"]["decoded"],
        "1 = GSP forced on, no fallback"
    );
    assert_eq!(json["checks"][0]["id"], "gpu-firmware");
    assert_eq!(json["checks"][0]["verdict"], "pass");
    assert_eq!(json["format"], "raw");
    assert_eq!(json["layout"]["table"], "gpt");
}

#[test]
fn containerd_default_runtime_v2_v3_and_imports() {
    if !common::tools() {
        return;
    }
    let toolkit = "Package: nvidia-container-toolkit\nStatus: install ok installed\nArchitecture: amd64\nVersion: 1.17.8-1\n\n";
    /// (case, files written, verdict, summary prefix)
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], Verdict, &'a str);
    let cases: [Case<'_>; 6] = [
        (
            "v2 runc",
            &[(
                "/etc/containerd/config.toml",
                "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd]\n  default_runtime_name = \"runc\"\n",
            )],
            Verdict::Fail,
            "containerd's default runtime is runc, not nvidia (/etc/containerd/config.toml)",
        ),
        (
            "v2 nvidia",
            &[(
                "/etc/containerd/config.toml",
                "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd]\n  default_runtime_name = \"nvidia\"\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.nvidia]\n  runtime_type = \"io.containerd.runc.v2\"\n",
            )],
            Verdict::Pass,
            "containerd's default runtime is nvidia",
        ),
        (
            "v3 nvidia",
            &[(
                "/etc/containerd/config.toml",
                "version = 3\n[plugins.'io.containerd.cri.v1.runtime'.containerd]\n  default_runtime_name = 'nvidia'\n",
            )],
            Verdict::Pass,
            "containerd's default runtime is nvidia",
        ),
        (
            "imports conf.d",
            &[
                (
                    "/etc/containerd/config.toml",
                    "version = 2\nimports = [\"/etc/containerd/conf.d/*.toml\"]\n[plugins.\"io.containerd.grpc.v1.cri\".containerd]\n  default_runtime_name = \"runc\"\n",
                ),
                (
                    "/etc/containerd/conf.d/99-nvidia.toml",
                    "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd]\n  default_runtime_name = \"nvidia\"\n",
                ),
            ],
            Verdict::Pass,
            "containerd's default runtime is nvidia",
        ),
        (
            "unset",
            &[("/etc/containerd/config.toml", "version = 2\n")],
            Verdict::Fail,
            "containerd's default runtime is runc, not nvidia (/etc/containerd/config.toml (not set))",
        ),
        (
            "not toml",
            &[("/etc/containerd/config.toml", "version = = 2\n[[[")],
            Verdict::Fail,
            "/etc/containerd/config.toml cannot be parsed",
        ),
    ];
    for (name, files, want, summary) in cases {
        let g = ubuntu(&Spec::default());
        let status = std::fs::read_to_string(g.root.join("var/lib/dpkg/status")).unwrap();
        g.put("/var/lib/dpkg/status", &format!("{status}{toolkit}"));
        for (path, text) in files {
            g.put(path, text);
        }
        let r = run_verify(&g, &expect_fw(1));
        let c = r.check(inspect::CheckId::ContainerRuntime).unwrap();
        assert_eq!(c.verdict, want, "{name}: {r}");
        assert!(c.summary.starts_with(summary), "{name}: {}", c.summary);
        if want == Verdict::Fail {
            assert!(!r.passed);
        }
    }
    // No toolkit: not judged.
    let r = run_verify(&ubuntu(&Spec::default()), &expect_fw(1));
    assert_eq!(verdict(&r, "container-runtime"), Verdict::Skip);
}

#[test]
fn new_hygiene_rules() {
    if !common::tools() {
        return;
    }
    let g = ubuntu(&Spec::default());
    g.remove("/etc/machine-id");
    g.put("/var/lib/imgbake/steps/01-driver.sh", "#!/bin/sh\n");
    g.put(
        "/etc/hosts",
        "127.0.0.1 localhost\n127.0.1.1 nvidia-debian.localdomain nvidia-debian\n",
    );
    g.put("/var/lib/dkms/mok.key", "-----BEGIN PRIVATE KEY-----\n");
    g.put(
        "/var/lib/shim-signed/mok/MOK.priv",
        "-----BEGIN PRIVATE KEY-----\n",
    );
    g.put("/var/lib/shim-signed/mok/MOK.der", "public");
    let expect = Expectations {
        build_hostname: Some("nvidia-debian".into()),
        ..expect_fw(1)
    };
    let r = run_verify(&g, &expect);
    assert!(!r.passed);
    let c = r.check("hygiene/machine-id").unwrap();
    assert_eq!(c.verdict, Verdict::Fail, "{r}");
    assert!(
        c.details[0].starts_with(
            "/etc/machine-id is absent: systemd does not treat the boot as a first boot"
        )
    );
    let c = r.check("hygiene/build-state").unwrap();
    assert_eq!(c.verdict, Verdict::Fail);
    assert_eq!(c.details, ["/var/lib/imgbake/steps/01-driver.sh"]);
    let c = r.check("hygiene/hosts").unwrap();
    assert_eq!(c.verdict, Verdict::Fail);
    assert_eq!(
        c.details,
        ["/etc/hosts:2 127.0.1.1 nvidia-debian.localdomain nvidia-debian"]
    );
    let c = r.check("hygiene/signing-keys").unwrap();
    assert_eq!(c.verdict, Verdict::Fail);
    assert_eq!(
        c.details,
        ["/var/lib/dkms/mok.key", "/var/lib/shim-signed/mok/MOK.priv"]
    );
    // Without --no-hygiene they fail; with it they warn.
    let lax = Expectations {
        hygiene: false,
        ..expect.clone()
    };
    let r = verify(&r.image, &lax).unwrap();
    assert_eq!(verdict(&r, "hygiene/hosts"), Verdict::Warn);
    // Another build hostname is not this image's problem.
    let other = Expectations {
        build_hostname: Some("other".into()),
        ..expect
    };
    let r = verify(&r.image, &other).unwrap();
    assert_eq!(verdict(&r, "hygiene/hosts"), Verdict::Pass);
}

#[test]
fn open_module_zero_is_a_no_op_warning_and_per_device_overrides() {
    if !common::tools() {
        return;
    }
    let g = ubuntu(&Spec {
        open_modules: true,
        modprobe: Some("options nvidia NVreg_EnableGpuFirmware=0\n"),
        ..Spec::default()
    });
    let r = run_verify(&g, &Expectations::default());
    let c = r.check("gpu-firmware").unwrap();
    assert_eq!(c.verdict, Verdict::Warn, "{r}");
    assert!(
        c.details
            .iter()
            .any(|d| d.contains("the setting is a no-op"))
    );
    // Blackwell with the open modules passes the flavour rule.
    let blackwell = Expectations {
        gpu_models: vec!["GB200".into()],
        ..Expectations::default()
    };
    let r = verify(&r.image, &blackwell).unwrap();
    assert_eq!(verdict(&r, "driver/flavour"), Verdict::Pass, "{r}");

    let g = ubuntu(&Spec {
        modprobe: Some(
            "options nvidia NVreg_EnableGpuFirmware=1 NVreg_RegistryDwordsPerDevice=\"pci=0000:41:00.0;EnableGpuFirmware=0x32\"\n",
        ),
        ..Spec::default()
    });
    let r = run_verify(&g, &expect_fw(1));
    let c = r.check("gpu-firmware").unwrap();
    assert_eq!(c.verdict, Verdict::Fail, "{r}");
    assert_eq!(r.gpu_firmware.root.per_device[0].device, "0000:41:00.0");
    assert!(
        c.details
            .iter()
            .any(|d| d.contains("GPU 0000:41:00.0 gets 0x32 instead of 1")),
        "{r}"
    );
    assert!(
        c.details
            .iter()
            .any(|d| d
                .contains("policy 0x20: GSP on by default for workstation/server SKUs (580.142+")),
        "{r}"
    );
}

#[test]
fn facts_read_imgbake_versions_and_the_packages() {
    if !common::tools() {
        return;
    }
    let g = ubuntu(&Spec::default());
    g.put(
        "/etc/imgbake-versions",
        "KUBERNETES_VERSION=v1.30.0\nNVIDIA_DRIVER_VERSION=565.57.01\n",
    );
    let r = run_verify(&g, &Expectations::default());
    assert_eq!(r.facts.kubernetes.as_deref(), Some("v1.30.5"));
    assert_eq!(
        r.facts
            .versions
            .get("KUBERNETES_VERSION")
            .map(String::as_str),
        Some("v1.30.0")
    );
    assert_eq!(r.facts.versions.len(), 2);
    assert_eq!(r.facts.nvidia_driver.as_deref(), Some(DRIVER));
    // Without the file: no versions.
    let r = run_verify(&ubuntu(&Spec::default()), &Expectations::default());
    assert!(r.facts.versions.is_empty());
}

/// Runs e2fsprogs' own `debugfs` on the ext4 at `offset` in `disk`, writing: the superblock as
/// a kernel leaves it mounted, a journal with a transaction not yet replayed.
fn debugfs_write(disk: &std::path::Path, offset: u64, requests: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let commands = dir.path().join("commands");
    std::fs::write(&commands, requests.join("\n") + "\n").unwrap();
    common::run(
        std::process::Command::new("debugfs")
            .arg("-w")
            .arg("-f")
            .arg(&commands)
            .arg(format!("{}?offset={offset}", disk.display())),
    );
}

#[test]
fn a_filesystem_still_mounted_or_with_errors_fails_filesystems_clean() {
    if !common::tools() || !test_support::require_tool("debugfs") {
        return;
    }
    let g = ubuntu(&Spec {
        separate_boot: true,
        ..Spec::default()
    });
    let r = run_verify(&g, &expect_fw(1));
    assert_eq!(verdict(&r, "filesystems-clean"), Verdict::Pass, "{r}");
    let start_of = |number: u32| {
        r.layout
            .partitions
            .iter()
            .find(|p| p.number == number)
            .unwrap()
            .start
    };
    let (root, boot) = (
        start_of(r.layout.root.partition),
        start_of(r.layout.boot.as_ref().unwrap().partition),
    );

    // What a copy of a running guest's disk looks like: a committed journal transaction (a
    // revoke record, harmless) not yet replayed, so the RECOVER flag is set.
    debugfs_write(&r.image, root, &["jo -c", "jw -r 333", "jc"]);
    let dirty = verify(&r.image, &expect_fw(1)).unwrap();
    let c = dirty.check("filesystems-clean").unwrap();
    assert_eq!(c.verdict, Verdict::Fail, "{dirty}");
    assert!(!dirty.passed);
    assert_eq!(c.details.len(), 1, "{:?}", c.details);
    assert!(
        c.details[0].starts_with("root filesystem (partition 1, label \"cloudimg-rootfs\")")
            && c.details[0].ends_with("its journal needs replaying (it was still mounted)"),
        "{:?}",
        c.details
    );
    debugfs_write(&r.image, root, &["feature ^needs_recovery"]);
    assert_eq!(
        verdict(
            &verify(&r.image, &expect_fw(1)).unwrap(),
            "filesystems-clean"
        ),
        Verdict::Pass
    );

    // Not cleanly unmounted (state 0), and errors recorded (state 3: valid + errors).
    debugfs_write(&r.image, boot, &["ssv state 0"]);
    debugfs_write(&r.image, root, &["ssv state 3"]);
    let c = verify(&r.image, &expect_fw(1))
        .unwrap()
        .check("filesystems-clean")
        .unwrap()
        .clone();
    assert_eq!(c.verdict, Verdict::Fail);
    assert_eq!(c.details.len(), 2, "{:?}", c.details);
    assert!(c.details[0].ends_with("the kernel recorded errors on it (fix: e2fsck it)"));
    assert!(c.details[1].starts_with("/boot filesystem"));
    assert!(c.details[1].ends_with("it was not cleanly unmounted"));
}
