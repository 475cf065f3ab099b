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
        // Never write through a hard link to the real NVIDIA bytes (put_host_file): a new file.
        let _ = fs::remove_file(&full);
        fs::write(full, contents).unwrap();
    }

    pub fn link(&self, path: &str, target: &str) {
        let full = self.root.join(path.trim_start_matches('/'));
        fs::create_dir_all(full.parent().unwrap()).unwrap();
        let _ = fs::remove_file(&full);
        symlink(target, full).unwrap();
    }

    /// Puts a hard link to a host file (the real NVIDIA bytes: no copy in the tree).
    pub fn put_host_file(&self, path: &str, host: &Path) {
        let full = self.root.join(path.trim_start_matches('/'));
        fs::create_dir_all(full.parent().unwrap()).unwrap();
        let _ = fs::remove_file(&full);
        if fs::hard_link(host, &full).is_err() {
            fs::copy(host, &full).unwrap();
        }
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
        // Room for real NVIDIA bytes (a 73 MB module, 62 MB of firmware) when present.
        let tree = tree_bytes(&self.root);
        let root_mib = 40u64.max(tree * 5 / 4 / (1 << 20) + 24);
        let root_size = format!("{root_mib}M");
        let root_sectors = root_mib * 2048;
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
                .arg(&root_size));
            fs::remove_dir(self.root.join("boot")).unwrap();
            fs::rename(&saved, self.root.join("boot")).unwrap();
        } else {
            run(Command::new("mkfs.ext4")
                .args(["-q", "-F", "-L", "cloudimg-rootfs", "-d"])
                .arg(&self.root)
                .arg(&root_img)
                .arg(&root_size));
        }
        let disk = d.join("disk.raw");
        let _ = fs::remove_file(&disk);
        let disk_mib = 128u64.max(31 + root_mib + 2);
        run(Command::new("truncate")
            .args(["-s", &format!("{disk_mib}M")])
            .arg(&disk));
        // Sectors: p14 2048+8192, p15 10240+20480, p16 30720+32768, p1 63488+81920.
        let mut script = String::from("label: gpt\n");
        script.push_str(&format!("disk.raw1 : start=63488, size={root_sectors}, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name=\"cloudimg-rootfs\"\n"));
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
        // The disk holds a copy: keep the temp dir small (real NVIDIA bytes are large).
        let _ = fs::remove_file(&root_img);
        let _ = fs::remove_file(&boot_img);
        disk
    }
}

fn tree_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    for e in fs::read_dir(dir).into_iter().flatten().flatten() {
        let Ok(meta) = fs::symlink_metadata(e.path()) else {
            continue;
        };
        if meta.is_dir() {
            total += tree_bytes(&e.path());
        } else {
            total += meta.len();
        }
    }
    total
}

/// The real NVIDIA bytes of `cargo xtask nvidia-bytes` (Debian bookworm's 535 driver).
pub struct NvidiaBytes {
    pub dir: PathBuf,
    /// `535.261.03`.
    pub version: String,
    /// The kernel the module was built for (`6.1.0-50-cloud-amd64`).
    pub kernel: String,
    /// The real proprietary `nvidia.ko`.
    pub module: PathBuf,
    /// `…/lib/firmware/nvidia/<version>`.
    pub firmware: PathBuf,
}

/// The real bytes, or `None` (skip; a failure naming `cargo xtask nvidia-bytes` under
/// `IMGBAKE_REQUIRE_TOOLS=1`).
pub fn nvidia_bytes() -> Option<NvidiaBytes> {
    let dir = test_support::nvidia_bytes()?;
    let manifest: serde_json::Value =
        serde_json::from_slice(&fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    let field = |k: &str| {
        manifest[k]
            .as_str()
            .unwrap_or_else(|| panic!("manifest {k}"))
            .to_string()
    };
    // `modules.<package>.path`, one per flavour (xtask nvidia-bytes' manifest).
    let module = manifest["modules"]["nvidia-kernel-dkms"]["path"]
        .as_str()
        .unwrap_or_else(|| panic!("manifest modules.nvidia-kernel-dkms.path"))
        .to_string();
    Some(NvidiaBytes {
        module: dir.join(module),
        firmware: dir.join(field("firmware_dir")),
        version: field("driver_version"),
        kernel: field("kernel_release"),
        dir,
    })
}

/// Options for [`debian`].
#[derive(Clone)]
pub struct DebianSpec {
    /// Install the real module as `updates/dkms/nvidia-current.ko` + this suffix (`""`, `.xz`,
    /// `.zst`); `None`: no module.
    pub module_suffix: Option<&'static str>,
    /// Put the real GSP firmware files.
    pub firmware: bool,
    /// The NVIDIA Container Toolkit with containerd on runc.
    pub container_toolkit: bool,
}

impl Default for DebianSpec {
    fn default() -> Self {
        DebianSpec {
            module_suffix: Some(""),
            firmware: true,
            container_toolkit: false,
        }
    }
}

/// Debian nvidia-kernel-support's `/etc/nvidia/current/nvidia-modprobe.conf` (535).
pub const DEBIAN_NVIDIA_MODPROBE: &str = "\
# This file was installed by nvidia-kernel-support.
alias char-major-195* nvidia
install nvidia modprobe -i nvidia-current $CMDLINE_OPTS
install nvidia-modeset modprobe nvidia ; modprobe -i nvidia-current-modeset $CMDLINE_OPTS
install nvidia-drm modprobe nvidia-modeset ; modprobe -i nvidia-current-drm $CMDLINE_OPTS
install nvidia-uvm modprobe nvidia ; modprobe -i nvidia-current-uvm $CMDLINE_OPTS
install nvidia-peermem modprobe nvidia ; modprobe -i nvidia-current-peermem $CMDLINE_OPTS
remove nvidia modprobe -r -i nvidia-drm nvidia-modeset nvidia-peermem nvidia-uvm nvidia
";

impl Guest {
    /// Adds a kernel: `/boot/vmlinuz-<release>` and `/lib/modules/<release>/kernel`.
    pub fn add_kernel(&self, release: &str) {
        fs::create_dir_all(self.root.join(format!("usr/lib/modules/{release}/kernel"))).unwrap();
        self.put(&format!("/boot/vmlinuz-{release}"), "kernel");
    }

    /// Installs the real module for `release` as Debian's DKMS names it, compressed by
    /// `suffix` (`""`, `.xz`, `.zst`, `.gz`) with the real tools.
    pub fn put_real_module(&self, b: &NvidiaBytes, release: &str, suffix: &str) {
        let path = format!("/usr/lib/modules/{release}/updates/dkms/nvidia-current.ko{suffix}");
        if suffix.is_empty() {
            self.put_host_file(&path, &b.module);
            return;
        }
        let out = self.dir().join(format!("nvidia-current.ko{suffix}"));
        if !out.exists() {
            let tool = match suffix {
                ".xz" => "xz -1 -T2 -c",
                ".zst" => "zstd -q -1 -c",
                ".gz" => "gzip -1 -c",
                other => panic!("suffix {other}"),
            };
            sh(
                &format!("{tool} '{}' > '{}'", b.module.display(), out.display()),
                self.dir(),
            );
        }
        self.put_host_file(&path, &out);
    }

    /// Puts the real GSP firmware files under `/lib/firmware/nvidia/<version>/`.
    pub fn put_real_firmware(&self, b: &NvidiaBytes) {
        for name in ["gsp_ga10x.bin", "gsp_tu10x.bin"] {
            self.put_host_file(
                &format!("/usr/lib/firmware/nvidia/{}/{name}", b.version),
                &b.firmware.join(name),
            );
        }
    }
}

/// A Debian 12 guest (merged /usr) with Debian's real 535 driver as DKMS installs it: the
/// module renamed `nvidia-current.ko`, loaded through nvidia-kernel-support's `install` lines
/// (a modprobe.d symlink through `/etc/alternatives`), `options nvidia
/// NVreg_EnableGpuFirmware=1`, and firmware-nvidia-gsp's files.
pub fn debian(b: &NvidiaBytes, spec: &DebianSpec) -> Guest {
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
        separate_boot: false,
    };
    g.put(
        "/etc/os-release",
        "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nNAME=\"Debian GNU/Linux\"\nVERSION_ID=\"12\"\nVERSION_CODENAME=bookworm\nID=debian\n",
    );
    g.put("/etc/machine-id", "");
    g.put(
        "/etc/passwd",
        "root:x:0:0:root:/root:/bin/bash\ndebian:x:1000:1000::/home/debian:/bin/bash\n",
    );
    let v = format!("{}-1", b.version);
    let mut status = dpkg_stanza("base-files", "12.4+deb12u13", "amd64");
    for name in [
        "nvidia-kernel-dkms",
        "nvidia-kernel-support",
        "firmware-nvidia-gsp",
        "nvidia-smi",
    ] {
        status += &dpkg_stanza(name, &v, "amd64");
    }
    if spec.container_toolkit {
        status += &dpkg_stanza("nvidia-container-toolkit", "1.17.8-1", "amd64");
        status += &dpkg_stanza("containerd", "1.6.20~ds1-1+b1", "amd64");
        g.put(
            "/etc/containerd/config.toml",
            "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd]\n  default_runtime_name = \"runc\"\n",
        );
    }
    g.put("/var/lib/dpkg/status", &status);
    let k = &b.kernel;
    g.add_kernel(k);
    g.link("/vmlinuz", &format!("boot/vmlinuz-{k}"));
    if let Some(suffix) = spec.module_suffix {
        g.put_real_module(b, k, suffix);
    }
    g.put(
        "/boot/grub/grub.cfg",
        &format!("set default=0\nmenuentry 'Debian GNU/Linux' {{\n\tlinux\t/boot/vmlinuz-{k} root=LABEL=cloudimg-rootfs ro console=ttyS0\n\tinitrd\t/boot/initrd.img-{k}\n}}\n"),
    );
    g.put(
        "/etc/nvidia/current/nvidia-modprobe.conf",
        DEBIAN_NVIDIA_MODPROBE,
    );
    g.link(
        "/etc/alternatives/nvidia--nvidia-modprobe.conf",
        "/etc/nvidia/current/nvidia-modprobe.conf",
    );
    g.link(
        "/etc/modprobe.d/nvidia.conf",
        "/etc/alternatives/nvidia--nvidia-modprobe.conf",
    );
    g.put(
        "/etc/modprobe.d/nvidia-options.conf",
        "options nvidia NVreg_EnableGpuFirmware=1\n",
    );
    if spec.firmware {
        g.put_real_firmware(b);
    }
    fs::create_dir_all(g.root.join("etc/ssh")).unwrap();
    g
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
