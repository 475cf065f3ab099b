//! The installed NVIDIA driver: version from the kernel module and dpkg, module flavour,
//! and the GSP firmware files for that exact version.

use serde::Serialize;

use crate::Result;
use crate::facts::{GuestFacts, Package};
use crate::imagefs::ImageFs;
use crate::modinfo;

/// Proprietary or open kernel modules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ModuleFlavour {
    /// `nvidia.ko` with license `NVIDIA`.
    Proprietary,
    /// The open GPU kernel modules (license `Dual MIT/GPL`, packages named `…-open`).
    Open,
    /// Could not tell.
    Unknown,
}

/// A kernel module file found in the image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ModuleFile {
    /// Path in the guest.
    pub path: String,
    /// `version=` from `.modinfo`.
    pub version: Option<String>,
    /// `license=` from `.modinfo`.
    pub license: Option<String>,
    /// Why `.modinfo` could not be read, if it could not.
    pub unreadable: Option<String>,
}

/// What is installed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DriverInfo {
    /// The version the driver reports (module's `version=`, else the dpkg package's).
    pub version: Option<String>,
    /// The branch (`565`).
    pub branch: Option<String>,
    /// Installed NVIDIA packages (`name version`).
    pub packages: Vec<String>,
    /// The version according to dpkg.
    pub package_version: Option<String>,
    /// The `nvidia` module for the booted kernel.
    pub module: Option<ModuleFile>,
    /// Proprietary or open.
    pub flavour: ModuleFlavour,
    /// Directories under `/lib/firmware/nvidia`.
    pub firmware_dirs: Vec<String>,
    /// `gsp_*.bin` files in the directory for `version`.
    pub gsp_files: Vec<String>,
}

fn is_nvidia_package(name: &str) -> bool {
    name.starts_with("nvidia-")
        || name.starts_with("linux-modules-nvidia-")
        || name.starts_with("libnvidia-compute-")
}

/// The driver branch in a package name (`nvidia-driver-565-server-open` → `565`).
fn branch_of(name: &str) -> Option<&str> {
    name.split('-')
        .find(|part| part.len() >= 3 && part.chars().all(|c| c.is_ascii_digit()))
}

fn package_driver(packages: &[&Package]) -> Option<(String, String)> {
    const ORDER: [&str; 7] = [
        "nvidia-kernel-common-",
        "nvidia-dkms-",
        "nvidia-kernel-source-",
        "nvidia-driver-",
        "nvidia-headless-",
        "nvidia-utils-",
        "libnvidia-compute-",
    ];
    ORDER.iter().find_map(|prefix| {
        packages
            .iter()
            .find(|p| p.name.starts_with(prefix) && branch_of(&p.name).is_some())
            .map(|p| {
                (
                    p.upstream_version().to_string(),
                    branch_of(&p.name).unwrap_or_default().to_string(),
                )
            })
    })
}

fn find_module(fs: &ImageFs, kernel: &str) -> Result<Option<ModuleFile>> {
    let base = format!("/lib/modules/{kernel}");
    let mut dirs = vec![format!("{base}/updates/dkms"), format!("{base}/updates")];
    for entry in fs.list(&format!("{base}/kernel"))? {
        if entry.is_dir && entry.name.starts_with("nvidia") {
            dirs.push(format!("{base}/kernel/{}", entry.name));
        }
    }
    dirs.push(format!("{base}/kernel/drivers/video"));
    for dir in dirs {
        for name in ["nvidia.ko", "nvidia.ko.zst", "nvidia.ko.gz", "nvidia.ko.xz"] {
            let path = format!("{dir}/{name}");
            let Some(data) = fs.read(&path)? else {
                continue;
            };
            let parsed = modinfo::decompress(name, data).and_then(|elf| {
                modinfo::modinfo(&elf).ok_or_else(|| "not an ELF64 kernel module".to_string())
            });
            return Ok(Some(match parsed {
                Ok(info) => ModuleFile {
                    path,
                    version: info.get("version").cloned(),
                    license: info.get("license").cloned(),
                    unreadable: None,
                },
                Err(why) => ModuleFile {
                    path,
                    version: None,
                    license: None,
                    unreadable: Some(why),
                },
            }));
        }
    }
    Ok(None)
}

/// Reads what NVIDIA driver is installed for `facts.kernel`.
pub(crate) fn inspect(fs: &ImageFs, facts: &GuestFacts) -> Result<DriverInfo> {
    let packages: Vec<&Package> = facts
        .packages
        .iter()
        .filter(|p| is_nvidia_package(&p.name))
        .collect();
    let from_dpkg = package_driver(&packages);
    let module = match &facts.kernel {
        Some(kernel) => find_module(fs, kernel)?,
        None => None,
    };
    let version = module
        .as_ref()
        .and_then(|m| m.version.clone())
        .or_else(|| from_dpkg.as_ref().map(|(v, _)| v.clone()));
    let branch = version
        .as_deref()
        .and_then(|v| v.split('.').next())
        .map(str::to_string)
        .or_else(|| from_dpkg.as_ref().map(|(_, b)| b.clone()));
    let flavour = match module.as_ref().and_then(|m| m.license.as_deref()) {
        Some("NVIDIA") => ModuleFlavour::Proprietary,
        Some(l) if l.contains("MIT") => ModuleFlavour::Open,
        _ if packages
            .iter()
            .any(|p| p.name.ends_with("-open") || p.name.contains("-open-")) =>
        {
            ModuleFlavour::Open
        }
        _ if !packages.is_empty() => ModuleFlavour::Proprietary,
        _ => ModuleFlavour::Unknown,
    };
    let firmware_dirs: Vec<String> = fs
        .list("/lib/firmware/nvidia")?
        .into_iter()
        .filter(|e| e.is_dir)
        .map(|e| e.name)
        .collect();
    let gsp_files = match &version {
        Some(v) => fs
            .list(&format!("/lib/firmware/nvidia/{v}"))?
            .into_iter()
            .filter(|e| !e.is_dir && e.name.starts_with("gsp_") && e.name.contains(".bin"))
            .map(|e| e.name)
            .collect(),
        None => Vec::new(),
    };
    Ok(DriverInfo {
        version,
        branch,
        packages: packages
            .iter()
            .map(|p| format!("{} {}", p.name, p.version))
            .collect(),
        package_version: from_dpkg.map(|(v, _)| v),
        module,
        flavour,
        firmware_dirs,
        gsp_files,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn branch_from_names() {
        assert_eq!(branch_of("nvidia-driver-565-server-open"), Some("565"));
        assert_eq!(
            branch_of("nvidia-firmware-565-server-565.57.01"),
            Some("565")
        );
        assert_eq!(branch_of("nvidia-container-toolkit"), None);
    }
}
