//! inspect: imgbake's offline reading of a disk image and the checks `imgbake verify` runs —
//! the partition table and ext4 read straight from the file, no mount, no root, no boot.
//!
//! Reading:
//! - [`Disk`] opens a RAW or qcow2 image (qcow2 through its backing chain, with `imago`) as
//!   one byte range; [`ImageFs`] finds the GPT/MBR partitions and opens the root and `/boot`
//!   ext4 filesystems (`ext4-view`), giving a [`Layout`];
//! - [`GuestFacts`] (os-release, kernels, dpkg packages, versions) and [`DriverInfo`] (the
//!   nvidia module's `.modinfo`, packages, GSP firmware) are read once into an [`Image`];
//! - [`GpuFirmwareSettings`] gathers `NVreg_EnableGpuFirmware` from modprobe.d ([`modprobe`]),
//!   the kernel command line and the initrd ([`initramfs`], cpio + zstd/gzip), resolved into a
//!   [`Resolution`] and explained by [`describe_gpu_firmware`].
//!
//! Live: [`verify_live`] reads a running driver's `/proc/driver/nvidia` (and `nvidia-smi -q`)
//! into a [`LiveReport`], one [`LiveGpu`] row per GPU with a [`LiveVerdict`].
//!
//! Checking: [`verify()`] runs every check against [`Expectations`] and returns a
//! [`VerifyReport`]; each [`Check`] carries the [`CheckId`] of the rule that decided it (one
//! file per rule under `src/checks/`). [`inspect()`] reads only the facts.
//!
//! An image that cannot be read at all is an [`Error`]; everything found inside a readable
//! image is a check. Crafted or truncated input gives an error or a failing check, never a
//! panic. The crate never prints: the report implements `Display` (the table `imgbake verify`
//! shows) and `Serialize` (`--json`).
//!
//! ```no_run
//! use inspect::{Expectations, verify};
//!
//! let expect = Expectations { enable_gpu_firmware: Some(1), ..Expectations::default() };
//! let report = verify(std::path::Path::new("out/image.raw"), &expect)?;
//! println!("{report}");
//! assert_eq!(report.gpu_firmware.decoded, "1 = GSP forced on, no fallback");
//! # Ok::<(), inspect::Error>(())
//! ```
#![warn(missing_docs)]

mod checks;
mod disk;
mod driver;
mod error;
mod facts;
mod gpu_firmware;
mod gpu_models;
mod image;
mod imagefs;
pub mod initramfs;
mod live;
mod modinfo;
pub mod modprobe;
mod partition;
mod report;
mod settings;

use std::path::Path;

pub use checks::{CheckId, UnknownCheck};
pub use disk::{Disk, ImageFormat};
pub use driver::{BootKernel, DriverInfo, FirmwareFile, ModuleFile, ModuleFlavour};
pub use error::{Error, Result};
pub use facts::{GuestFacts, OsRelease, Package, parse_dpkg_status};
pub use gpu_firmware::{
    DRIVER_DEFAULT as GPU_FIRMWARE_DRIVER_DEFAULT, DeviceSetting, Resolution, Setting,
    SettingStatus, Via, describe as describe_gpu_firmware,
};
pub use gpu_models::{GpuFamily, family as gpu_family};
pub use image::Image;
pub use imagefs::{Entry, FsInfo, ImageFs, Layout};
pub use live::{
    GspState, LiveCheck, LiveDriver, LiveGpu, LiveOptions, LiveReport, LiveVerdict, verify_live,
};
pub use partition::{Partition, TableKind};
pub use report::{Check, Expectations, GpuFirmwareReport, Verdict, VerifyReport};
pub use settings::{GpuFirmwareSettings, Initrd};

/// Reads the guest facts (os-release, kernel, packages, driver and Kubernetes versions) of an
/// image without running the checks. Blocking.
pub fn inspect(path: &Path) -> Result<GuestFacts> {
    Ok(Image::open(path)?.facts)
}

/// Verifies the image at `path` (RAW or qcow2) against `expect`, offline.
///
/// An image that cannot be read (no partition table, no root filesystem, truncated qcow2
/// chain, corrupt ext4) is an `Err`; everything found inside a readable image is a check in
/// the report. Blocking: from async code call it inside `tokio::task::spawn_blocking`.
///
/// A qcow2 whose backing chain leaves the image's own directory is refused
/// ([`Error::BackingOutside`]); [`verify_with`] can allow it.
pub fn verify(path: &Path, expect: &Expectations) -> Result<VerifyReport> {
    verify_with(path, expect, &OpenOptions::default())
}

/// How an image given by a user may be opened.
#[derive(Clone, Debug, Default)]
pub struct OpenOptions {
    /// Follow a qcow2's backing files even outside the image's own directory.
    pub allow_backing: bool,
}

/// [`verify`] with [`OpenOptions`].
pub fn verify_with(path: &Path, expect: &Expectations, opts: &OpenOptions) -> Result<VerifyReport> {
    if !opts.allow_backing {
        disk::check_backing_chain(path)?;
    }
    let image = Image::open(path)?;
    let settings = GpuFirmwareSettings::read(&image.fs, image.facts.kernel.as_deref())?;
    let checks = checks::run_all(&checks::Context {
        image: &image,
        settings: &settings,
        expect,
    })?;
    let passed = checks.iter().all(|c| c.verdict != Verdict::Fail);
    let Image {
        disk,
        fs,
        facts,
        driver,
    } = image;
    Ok(VerifyReport {
        image: path.to_path_buf(),
        format: disk.format(),
        virtual_size: disk.size(),
        layout: fs.layout().clone(),
        os: facts.os_release.get("PRETTY_NAME").map(str::to_string),
        kernel: facts.kernel.clone(),
        expectations: expect.clone(),
        gpu_firmware: GpuFirmwareReport {
            decoded: checks::decoded_gpu_firmware(&settings.root),
            initramfs: settings.initrd_resolution().cloned(),
            root: settings.root,
        },
        driver,
        checks,
        passed,
        facts,
    })
}
