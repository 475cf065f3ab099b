//! An image opened and read once: the disk, its filesystems, the guest facts and the driver.

use std::path::Path;

use crate::Result;
use crate::disk::Disk;
use crate::driver::{self, DriverInfo};
use crate::facts::{self, GuestFacts};
use crate::imagefs::ImageFs;

/// An image read for checking: what every check may look at.
#[derive(Debug)]
pub struct Image {
    /// The virtual disk (RAW or qcow2 through its chain).
    pub disk: Disk,
    /// Its root (and `/boot`) filesystem.
    pub fs: ImageFs,
    /// os-release, kernels, packages, versions; `nvidia_driver` filled from [`Image::driver`].
    pub facts: GuestFacts,
    /// The installed NVIDIA driver.
    pub driver: DriverInfo,
}

impl Image {
    /// Opens `path` and reads the facts and the driver. Blocking.
    pub fn open(path: &Path) -> Result<Image> {
        let disk = Disk::open(path)?;
        let fs = ImageFs::open(&disk)?;
        let mut facts = facts::read_facts(&fs)?;
        let driver = driver::inspect(&fs, &facts)?;
        facts.nvidia_driver = driver.version.clone();
        Ok(Image {
            disk,
            fs,
            facts,
            driver,
        })
    }
}
