//! Builds real disk images for the tests: a guest tree on the host, `mkfs.ext4 -d`, `sfdisk`
//! on a file and `dd conv=notrunc`; initrds with `cpio -o -H newc` + `zstd`; kernel modules
//! compiled with `gcc` carrying a real `.modinfo` section.
#![allow(dead_code)]

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;

pub const KERNEL: &str = "5.15.0-126-generic";
pub const DRIVER: &str = "565.57.01";

pub fn tools() -> bool {
    ["mkfs.ext4", "sfdisk", "cpio", "zstd", "gcc", "dd"]
        .iter()
        .all(|t| test_support::require_tool(t))
}

pub fn run(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn sh(script: &str, dir: &Path) {
    run(Command::new("sh").arg("-euc").arg(script).current_dir(dir));
}

/// A guest file tree plus the options that shape the disk.
pub struct Guest {
    pub tmp: tempfile::TempDir,
    pub root: PathBuf,
    /// Separate /boot partition labelled BOOT (Ubuntu 24.04 layout).
    pub separate_boot: bool,
}

impl Guest {
    pub fn put(&self, path: &str, contents: &str) {
        self.put_bytes(path, contents.as_bytes());
    }

    pub fn put_bytes(&self, path: &str, contents: &[u8]) {
        let full = self.root.join(path.trim_start_matches('/'));
        // /lib is a symlink to usr/lib, as in Ubuntu: write through it.
        fs::create_dir_all(full.parent().unwrap()).unwrap();
        fs::write(full, contents).unwrap();
    }

    pub fn link(&self, path: &str, target: &str) {
        let full = self.root.join(path.trim_start_matches('/'));
        fs::create_dir_all(full.parent().unwrap()).unwrap();
        let _ = fs::remove_file(&full);
        symlink(target, full).unwrap();
    }

    pub fn remove(&self, path: &str) {
        let _ = fs::remove_file(self.root.join(path.trim_start_matches('/')));
    }

    pub fn dir(&self) -> &Path {
        self.tmp.path()
    }

    /// Writes a gcc-compiled `nvidia.ko` with the given modinfo under the DKMS dir.
    pub fn put_module(&self, version: &str, license: &str, zstd: bool) {
        let c = self.dir().join("mod.c");
        fs::write(
            &c,
            format!(
                "static const char v[] __attribute__((section(\".modinfo\"), used, aligned(1))) = \"version={version}\";\n\
                 static const char l[] __attribute__((section(\".modinfo\"), used, aligned(1))) = \"license={license}\";\n\
                 int nv_init(void) {{ return 0; }}\n"
            ),
        )
        .unwrap();
        let ko = self.dir().join("nvidia.ko");
        run(Command::new("gcc").arg("-c").arg("-o").arg(&ko).arg(&c));
        let dir = format!("/usr/lib/modules/{KERNEL}/updates/dkms");
        if zstd {
            run(Command::new("zstd")
                .arg("-q")
                .arg("-f")
                .arg(&ko)
                .arg("-o")
                .arg(self.dir().join("nvidia.ko.zst")));
            self.put_bytes(
                &format!("{dir}/nvidia.ko.zst"),
                &fs::read(self.dir().join("nvidia.ko.zst")).unwrap(),
            );
        } else {
            self.put_bytes(&format!("{dir}/nvidia.ko"), &fs::read(&ko).unwrap());
        }
    }

    /// Writes `/boot/initrd.img-KERNEL`: an uncompressed early cpio (microcode) followed by a
    /// zstd-compressed main cpio holding `files` (path → contents) and, if `nvidia`, the module.
    pub fn put_initrd(&self, nvidia: bool, files: &[(&str, &str)]) {
        let work = self.dir().join("initrd");
        let _ = fs::remove_dir_all(&work);
        let early = work.join("early");
        let main = work.join("main");
        fs::create_dir_all(early.join("kernel/x86/microcode")).unwrap();
        fs::write(
            early.join("kernel/x86/microcode/GenuineIntel.bin"),
            [0x5au8; 3000],
        )
        .unwrap();
        fs::create_dir_all(main.join("usr/lib/modules").join(KERNEL)).unwrap();
        symlink("usr/lib", main.join("lib")).unwrap();
        fs::write(main.join("init"), "#!/bin/sh\n").unwrap();
        if nvidia {
            let d = main.join(format!("usr/lib/modules/{KERNEL}/updates/dkms"));
            fs::create_dir_all(&d).unwrap();
            fs::write(d.join("nvidia.ko.zst"), b"not really a module").unwrap();
        }
        for (path, text) in files {
            let p = main.join(path.trim_start_matches('/'));
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, text).unwrap();
        }
        sh(
            "find . | LC_ALL=C sort | cpio -o -H newc --quiet > ../early.cpio",
            &early,
        );
        sh(
            "find . | LC_ALL=C sort | cpio -o -H newc --quiet | zstd -q -19 > ../main.cpio.zst",
            &main,
        );
        let mut bytes = fs::read(work.join("early.cpio")).unwrap();
        bytes.extend(fs::read(work.join("main.cpio.zst")).unwrap());
        self.put_bytes(&format!("/boot/initrd.img-{KERNEL}"), &bytes);
    }

    /// Builds the disk: GPT with p1 root (`cloudimg-rootfs`), p14 BIOS boot, p15 ESP
    /// (unformatted here) and, with `separate_boot`, p16 `/boot` (`BOOT`). Returns the RAW path.
    pub fn build(&self) -> PathBuf {
        let d = self.dir();
        let root_img = d.join("root.ext4");
        let boot_img = d.join("boot.ext4");
        if self.separate_boot {
            run(Command::new("mkfs.ext4")
                .args(["-q", "-F", "-L", "BOOT", "-d"])
                .arg(self.root.join("boot"))
                .arg(&boot_img)
                .arg("16M"));
            // The root filesystem keeps an empty /boot mount point.
            let saved = d.join("saved-boot");
            fs::rename(self.root.join("boot"), &saved).unwrap();
            fs::create_dir_all(self.root.join("boot")).unwrap();
            run(Command::new("mkfs.ext4")
                .args(["-q", "-F", "-L", "cloudimg-rootfs", "-d"])
                .arg(&self.root)
                .arg(&root_img)
                .arg("40M"));
            fs::remove_dir(self.root.join("boot")).unwrap();
            fs::rename(&saved, self.root.join("boot")).unwrap();
        } else {
            run(Command::new("mkfs.ext4")
                .args(["-q", "-F", "-L", "cloudimg-rootfs", "-d"])
                .arg(&self.root)
                .arg(&root_img)
                .arg("40M"));
        }
        let disk = d.join("disk.raw");
        let _ = fs::remove_file(&disk);
        run(Command::new("truncate").args(["-s", "128M"]).arg(&disk));
        // Sectors: p14 2048+8192, p15 10240+20480, p16 30720+32768, p1 63488+81920.
        let mut script = String::from("label: gpt\n");
        script.push_str("disk.raw1 : start=63488, size=81920, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name=\"cloudimg-rootfs\"\n");
        script.push_str(
            "disk.raw14 : start=2048, size=8192, type=21686148-6449-6E6F-744E-656564454649\n",
        );
        script.push_str(
            "disk.raw15 : start=10240, size=20480, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B\n",
        );
        if self.separate_boot {
            script.push_str(
                "disk.raw16 : start=30720, size=32768, type=BC13C2FF-59E6-4262-A352-B275FD6F7172\n",
            );
        }
        fs::write(d.join("sfdisk.script"), script).unwrap();
        sh("sfdisk -q disk.raw < sfdisk.script", d);
        sh(
            "dd if=root.ext4 of=disk.raw bs=512 seek=63488 conv=notrunc status=none",
            d,
        );
        if self.separate_boot {
            sh(
                "dd if=boot.ext4 of=disk.raw bs=512 seek=30720 conv=notrunc status=none",
                d,
            );
        }
        disk
    }
}

/// Options for [`ubuntu`].
#[derive(Clone)]
pub struct Spec {
    pub driver: Option<&'static str>,
    pub open_modules: bool,
    pub firmware_version: Option<&'static str>,
    pub modprobe: Option<&'static str>,
    pub separate_boot: bool,
}

impl Default for Spec {
    fn default() -> Self {
        Spec {
            driver: Some(DRIVER),
            open_modules: false,
            firmware_version: Some(DRIVER),
            modprobe: Some("options nvidia NVreg_EnableGpuFirmware=1\n"),
            separate_boot: false,
        }
    }
}

fn dpkg_stanza(name: &str, version: &str, arch: &str) -> String {
    format!(
        "Package: {name}\nStatus: install ok installed\nPriority: optional\nArchitecture: {arch}\nVersion: {version}\nDescription: {name}\n long text\n\n"
    )
}

/// A clean Ubuntu 22.04-like guest (merged /usr) with the NVIDIA 565 server driver.
pub fn ubuntu(spec: &Spec) -> Guest {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    fs::create_dir_all(root.join("usr/lib")).unwrap();
    for d in ["etc", "var/lib/cloud", "var/log", "home", "root", "tmp"] {
        fs::create_dir_all(root.join(d)).unwrap();
    }
    symlink("usr/lib", root.join("lib")).unwrap();
    let g = Guest {
        tmp,
        root,
        separate_boot: spec.separate_boot,
    };
    g.put(
        "/etc/os-release",
        "PRETTY_NAME=\"Ubuntu 22.04.5 LTS\"\nNAME=\"Ubuntu\"\nVERSION_ID=\"22.04\"\nVERSION=\"22.04.5 LTS (Jammy Jellyfish)\"\nVERSION_CODENAME=jammy\nID=ubuntu\nID_LIKE=debian\nUBUNTU_CODENAME=jammy\n",
    );
    g.put("/etc/machine-id", "");
    g.put(
        "/etc/passwd",
        "root:x:0:0:root:/root:/bin/bash\nubuntu:x:1000:1000::/home/ubuntu:/bin/bash\n",
    );
    let mut status = dpkg_stanza("base-files", "12ubuntu4.7", "amd64");
    status += &dpkg_stanza("kubelet", "1.30.5-1.1", "amd64");
    status += &dpkg_stanza("kubeadm", "1.30.5-1.1", "amd64");
    status += "Package: old-thing\nStatus: deinstall ok config-files\nArchitecture: amd64\nVersion: 1.0\n\n";
    if let Some(v) = spec.driver {
        let open = if spec.open_modules { "-open" } else { "" };
        for name in [
            format!("nvidia-driver-565-server{open}"),
            format!("nvidia-dkms-565-server{open}"),
            "nvidia-kernel-common-565-server".to_string(),
            "nvidia-utils-565-server".to_string(),
            format!("nvidia-firmware-565-server-{v}"),
        ] {
            status += &dpkg_stanza(&name, &format!("{v}-0ubuntu0.22.04.4"), "amd64");
        }
        g.put_module(
            v,
            if spec.open_modules {
                "Dual MIT/GPL"
            } else {
                "NVIDIA"
            },
            false,
        );
    }
    g.put("/var/lib/dpkg/status", &status);
    fs::create_dir_all(g.root.join(format!("usr/lib/modules/{KERNEL}/kernel"))).unwrap();
    g.put(&format!("/boot/vmlinuz-{KERNEL}"), "kernel");
    g.link("/boot/vmlinuz", &format!("vmlinuz-{KERNEL}"));
    g.put(
        "/boot/grub/grub.cfg",
        &format!("set default=0\nmenuentry 'Ubuntu' {{\n\tsearch --label cloudimg-rootfs --set root\n\tlinux\t/boot/vmlinuz-{KERNEL} root=LABEL=cloudimg-rootfs ro console=tty1 console=ttyS0\n\tinitrd\t/boot/initrd.img-{KERNEL}\n}}\n"),
    );
    g.put(
        "/etc/default/grub",
        "GRUB_DEFAULT=0\nGRUB_CMDLINE_LINUX_DEFAULT=\"quiet splash\"\nGRUB_CMDLINE_LINUX=\"\"\n",
    );
    g.put(
        "/etc/default/grub.d/50-cloudimg-settings.cfg",
        "GRUB_CMDLINE_LINUX_DEFAULT=\"console=tty1 console=ttyS0\"\n",
    );
    if let Some(fw) = spec.firmware_version {
        g.put_bytes(
            &format!("/usr/lib/firmware/nvidia/{fw}/gsp_ga10x.bin"),
            &[1u8; 4096],
        );
        g.put_bytes(
            &format!("/usr/lib/firmware/nvidia/{fw}/gsp_tu10x.bin"),
            &[2u8; 4096],
        );
    }
    if let Some(text) = spec.modprobe {
        g.put("/etc/modprobe.d/nvidia-gsp.conf", text);
    }
    g.put(
        "/usr/lib/modprobe.d/blacklist_linux.conf",
        "blacklist nouveau\n",
    );
    fs::create_dir_all(g.root.join("etc/ssh")).unwrap();
    g.put("/etc/ssh/sshd_config", "PasswordAuthentication no\n");
    g.put("/var/log/cloud-init.log", "");
    g
}
