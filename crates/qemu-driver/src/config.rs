//! Plain configuration types for a VM (the binary maps the recipe's `vm` section to these).

use std::path::{Path, PathBuf};

use crate::accel::AccelChoice;

/// Guest firmware.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Firmware {
    /// SeaBIOS, QEMU's default (machine `pc` unless set).
    #[default]
    Bios,
    /// OVMF (machine `q35` unless set): read-only code + a per-run copy of the vars file.
    Uefi,
}

/// Where the OVMF files live (Debian/Ubuntu `ovmf` package by default).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UefiFirmware {
    /// Read-only code, e.g. `/usr/share/OVMF/OVMF_CODE_4M.fd`.
    pub code: PathBuf,
    /// Vars template, copied into the run directory per run.
    pub vars_template: PathBuf,
}

impl Default for UefiFirmware {
    fn default() -> Self {
        Self {
            code: PathBuf::from("/usr/share/OVMF/OVMF_CODE_4M.fd"),
            vars_template: PathBuf::from("/usr/share/OVMF/OVMF_VARS_4M.fd"),
        }
    }
}

/// Which host port forwards to the guest's SSH.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SshPort {
    /// A free port on 127.0.0.1, picked per launch (retried if QEMU cannot bind it).
    #[default]
    Auto,
    /// This port on 127.0.0.1; launching fails if it is taken.
    Fixed(u16),
}

/// How the guest disk's flush requests (`fsync` in the guest, journal commits, dpkg's syncs)
/// reach the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DiskCache {
    /// QEMU's `cache=writeback`: host page cache, and every guest flush is an `fdatasync` of the
    /// image file on the host.
    #[default]
    Writeback,
    /// QEMU's `cache=unsafe` (`cache.no-flush=on`): host page cache, guest flushes are ignored.
    /// Only for images that are thrown away if the host crashes: a build's top overlay is never
    /// published until QEMU has frozen it (`blockdev-snapshot` writes its metadata out) and the
    /// checkpoint store has `fsync`ed the file; the final top is `fsync`ed after QEMU exits.
    /// Under TCG a guest `fsync` costs far more than under KVM, and `apt-get install` does
    /// hundreds of them.
    Unsafe,
}

impl DiskCache {
    /// The `cache` member of a `-blockdev` / `blockdev-add` node.
    pub fn blockdev_cache(self) -> serde_json::Value {
        serde_json::json!({
            "direct": false,
            "no-flush": self == DiskCache::Unsafe,
        })
    }
}

/// Everything needed to start one VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmConfig {
    /// A name for QEMU's `-name` and for messages.
    pub name: String,
    /// Number of vCPUs.
    pub cpus: u32,
    /// Guest memory in MiB.
    pub memory_mib: u64,
    /// QEMU machine type; `None` = `pc` for BIOS, `q35` for UEFI.
    pub machine: Option<String>,
    /// Firmware.
    pub firmware: Firmware,
    /// OVMF files used when `firmware` is [`Firmware::Uefi`].
    pub uefi: UefiFirmware,
    /// Accelerator wish.
    pub accel: AccelChoice,
    /// The qcow2 overlay the guest boots from and writes to (see [`crate::overlay::create`]).
    pub disk: PathBuf,
    /// Whether the disk honours guest flushes (the overlays made by live snapshots get the
    /// same mode).
    pub disk_cache: DiskCache,
    /// The cloud-init seed image, attached read-only.
    pub seed_iso: Option<PathBuf>,
    /// Host port for the guest's SSH.
    pub ssh_port: SshPort,
    /// Private run directory (created with mode 0700): `qmp.sock`, `serial.log`, `qemu.log`,
    /// the UEFI vars copy.
    pub run_dir: PathBuf,
    /// The QEMU binary (default `qemu-system-x86_64` from `PATH`).
    pub qemu_binary: PathBuf,
}

impl VmConfig {
    /// A config with the usual defaults: 2 vCPUs, 2 GiB, BIOS, `auto` accel, no seed.
    pub fn new(
        name: impl Into<String>,
        disk: impl Into<PathBuf>,
        run_dir: impl Into<PathBuf>,
    ) -> Self {
        Self {
            name: name.into(),
            cpus: 2,
            memory_mib: 2048,
            machine: None,
            firmware: Firmware::Bios,
            uefi: UefiFirmware::default(),
            accel: AccelChoice::Auto,
            disk: disk.into(),
            disk_cache: DiskCache::default(),
            seed_iso: None,
            ssh_port: SshPort::Auto,
            run_dir: run_dir.into(),
            qemu_binary: PathBuf::from("qemu-system-x86_64"),
        }
    }

    /// The machine type in effect.
    pub fn machine_type(&self) -> &str {
        match (&self.machine, self.firmware) {
            (Some(machine), _) => machine,
            (None, Firmware::Bios) => "pc",
            (None, Firmware::Uefi) => "q35",
        }
    }
}

/// The files QEMU uses inside the run directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunPaths {
    /// The run directory itself.
    pub dir: PathBuf,
    /// QMP socket: imgbake listens, QEMU connects once at startup; the file is removed after
    /// that (the session lives on).
    pub qmp_socket: PathBuf,
    /// Guest serial console.
    pub serial_log: PathBuf,
    /// QEMU's stderr.
    pub qemu_log: PathBuf,
    /// Per-run copy of the UEFI vars.
    pub uefi_vars: PathBuf,
}

impl RunPaths {
    /// The standard layout under `dir`.
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
            qmp_socket: dir.join("qmp.sock"),
            serial_log: dir.join("serial.log"),
            qemu_log: dir.join("qemu.log"),
            uefi_vars: dir.join("OVMF_VARS.fd"),
        }
    }
}
