//! imgbake's last stage: export a baked qcow2 to sparse RAW (and compressed qcow2), hash it,
//! write the manifest and the Nscale API payload, and verify the image **offline** — reading
//! the partition table and ext4 straight from the file, no mount, no root, no boot.
//!
//! Main entry points:
//! - [`export()`] with an [`ExportRequest`] runs `qemu-img check` and `qemu-img convert`,
//!   reports [`ExportEvent`]s, writes `SHA256SUMS` and returns an [`ExportOutput`];
//! - [`verify()`] reads a RAW or qcow2 image (qcow2 through its backing chain) and returns a
//!   [`VerifyReport`]: `NVreg_EnableGpuFirmware` from every place it can be set, the driver
//!   and its GSP firmware, the initramfs copy of the option, and hygiene;
//! - [`write_manifest`] and [`build_payload`]/[`write_payload`] produce `manifest.json` and
//!   `api-payload.json` from plain input types ([`ManifestInput`], [`PayloadSpec`]) and the
//!   [`GuestFacts`] read from the image.
//!
//! The crate never prints: progress comes as events, results as data. The report implements
//! `Display` (the table `imgbake verify` shows) and `Serialize` (`--json`).
//!
//! ```no_run
//! use exporter::{Expectations, verify};
//!
//! let expect = Expectations { enable_gpu_firmware: Some(1), ..Expectations::default() };
//! let report = verify(std::path::Path::new("out/image.raw"), &expect)?;
//! println!("{report}");
//! assert_eq!(report.gpu_firmware.decoded, "1 = GSP forced on, no fallback");
//! # Ok::<(), exporter::Error>(())
//! ```
#![warn(missing_docs)]

mod checksum;
mod disk;
mod driver;
mod error;
mod export;
mod facts;
mod gpu_firmware;
mod hygiene;
mod imagefs;
pub mod initramfs;
mod manifest;
mod modinfo;
pub mod modprobe;
mod partition;
mod payload;
mod process;
mod verify;

pub use checksum::{Sha256, sha256_file, write_sha256sums};
pub use disk::{Disk, ImageFormat};
pub use driver::{DriverInfo, ModuleFile, ModuleFlavour};
pub use error::{Error, Result};
pub use export::{
    ExportEvent, ExportFormat, ExportOutput, ExportRequest, ExportedFile, Stage, export,
};
pub use facts::{GuestFacts, OsRelease, Package, parse_dpkg_status};
pub use gpu_firmware::{
    DRIVER_DEFAULT as GPU_FIRMWARE_DRIVER_DEFAULT, Resolution, Setting, SettingStatus, Via,
    describe as describe_gpu_firmware,
};
pub use hygiene::Finding;
pub use imagefs::{FsInfo, ImageFs, Layout};
pub use manifest::{BaseImage, ManifestInput, StepRecord, write_manifest};
pub use partition::{Partition, TableKind};
pub use payload::{GpuSpec, PayloadSpec, build_payload, write_payload};
pub use verify::{Check, Expectations, GpuFirmwareReport, Verdict, VerifyReport, inspect, verify};

/// Writes `bytes` to `path` through a temporary file in the same directory, then renames it,
/// so readers never see a half-written file.
pub(crate) fn write_atomically(path: &std::path::Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let err = |source| Error::Write {
        path: path.to_path_buf(),
        source,
    };
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{file_name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(err)
}
