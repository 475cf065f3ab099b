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
    /// `license=` from `.modinfo` (`NVIDIA` proprietary, `Dual MIT/GPL` open).
    pub license: Option<String>,
    /// `vermagic=`: the kernel release it was built for, then flags.
    pub vermagic: Option<String>,
    /// `firmware=` entries: the firmware files the module asks for (`nvidia/<v>/gsp_ga10x.bin`).
    pub firmware: Vec<String>,
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
    /// The same files with their sizes.
    pub firmware: Vec<FirmwareFile>,
    /// Every kernel the image can boot, with its nvidia module.
    pub boot_kernels: Vec<BootKernel>,
    /// `(file, module)` of an `install nvidia … modprobe -i MODULE` line (Debian).
    pub install_target: Option<(String, String)>,
}

/// A firmware file in `/lib/firmware/nvidia/<version>/`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FirmwareFile {
    /// Path in the guest.
    pub path: String,
    /// File name (`gsp_ga10x.bin`).
    pub name: String,
    /// Size in bytes.
    pub size: u64,
}

/// A kernel the image can boot (`/boot/vmlinuz-<release>`) and its nvidia module.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BootKernel {
    /// Kernel release.
    pub release: String,
    /// The default one (`/boot/vmlinuz` points at it).
    pub default: bool,
    /// The nvidia module under `/lib/modules/<release>`, if any.
    pub module: Option<ModuleFile>,
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
    // Debian's names carry no branch: the version does (`535.261.03-1`).
    const DEBIAN: [&str; 5] = [
        "nvidia-kernel-dkms",
        "nvidia-open-kernel-dkms",
        "nvidia-kernel-support",
        "nvidia-driver",
        "firmware-nvidia-gsp",
    ];
    ORDER
        .iter()
        .find_map(|prefix| {
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
        .or_else(|| {
            DEBIAN.iter().find_map(|name| {
                let p = packages.iter().find(|p| p.name == *name)?;
                let version = p.upstream_version().to_string();
                let branch = version.split('.').next()?.to_string();
                Some((version, branch))
            })
        })
}

/// Module names DKMS installs the nvidia module under: Debian renames it (`nvidia-current`,
/// loaded through an `install nvidia modprobe -i nvidia-current …` line), Ubuntu does not.
const MODULE_NAMES: [&str; 2] = ["nvidia-current", "nvidia"];
/// Suffixes a module file may have (kmod reads all of them).
const MODULE_SUFFIXES: [&str; 4] = [".ko", ".ko.xz", ".ko.zst", ".ko.gz"];

/// The module `modprobe nvidia` really loads: the `-i NAME` of an `install nvidia …` line in
/// modprobe.d (Debian's `/etc/nvidia/current/nvidia-modprobe.conf`, linked by alternatives),
/// as `(file, name)`.
fn install_target(fs: &ImageFs) -> Result<Option<(String, String)>> {
    for dir in crate::modprobe::CONFIG_DIRS {
        for entry in fs.list(dir)? {
            if entry.is_dir || !crate::modprobe::is_config_name(&entry.name) {
                continue;
            }
            let location = format!("{dir}/{}", entry.name);
            let Some(text) = fs.read_text(&location)? else {
                continue;
            };
            for line in text.lines() {
                let words: Vec<&str> = line.split_whitespace().collect();
                if words.len() < 3 || words[0] != "install" || words[1] != "nvidia" {
                    continue;
                }
                if let Some(i) = words.iter().position(|w| *w == "-i")
                    && let Some(name) = words.get(i + 1)
                {
                    return Ok(Some((location, (*name).to_string())));
                }
            }
        }
    }
    Ok(None)
}

/// Reads one module file: `.modinfo` fields, or why they could not be read.
pub(crate) fn read_module(path: String, data: Vec<u8>) -> ModuleFile {
    let parsed = modinfo::decompress(&path, data).and_then(|elf| {
        modinfo::modinfo(&elf).ok_or_else(|| "not an ELF64 kernel module".to_string())
    });
    match parsed {
        Ok(info) => ModuleFile {
            path,
            version: info.get("version").cloned(),
            license: info.get("license").cloned(),
            vermagic: info.get("vermagic").map(|v| v.trim().to_string()),
            firmware: info
                .get("firmware")
                .map(|f| f.split(", ").map(str::to_string).collect())
                .unwrap_or_default(),
            unreadable: None,
        },
        Err(why) => ModuleFile {
            path,
            version: None,
            license: None,
            vermagic: None,
            firmware: Vec::new(),
            unreadable: Some(why),
        },
    }
}

fn find_module(fs: &ImageFs, kernel: &str, names: &[String]) -> Result<Option<ModuleFile>> {
    let base = format!("/lib/modules/{kernel}");
    let mut dirs = vec![format!("{base}/updates/dkms"), format!("{base}/updates")];
    for entry in fs.list(&format!("{base}/kernel"))? {
        if entry.is_dir && entry.name.starts_with("nvidia") {
            dirs.push(format!("{base}/kernel/{}", entry.name));
        }
    }
    dirs.push(format!("{base}/kernel/drivers/video"));
    dirs.push(format!("{base}/extra"));
    for dir in dirs {
        for name in names {
            for suffix in MODULE_SUFFIXES {
                let path = format!("{dir}/{name}{suffix}");
                let Some(data) = fs.read(&path)? else {
                    continue;
                };
                return Ok(Some(read_module(path, data)));
            }
        }
    }
    Ok(None)
}

/// The kernels the image can boot: every `/boot/vmlinuz-<release>`, the default one (the
/// target of `/boot/vmlinuz` or `/vmlinuz`, else `booted`) marked.
fn boot_kernels(fs: &ImageFs, booted: Option<&str>) -> Result<Vec<(String, bool)>> {
    let mut default = None;
    for link in ["/boot/vmlinuz", "/vmlinuz"] {
        if let Some(target) = fs.read_link(link)? {
            let file = target.rsplit('/').next().unwrap_or(&target);
            if let Some(release) = file.strip_prefix("vmlinuz-") {
                default = Some(release.to_string());
                break;
            }
        }
    }
    let default = default.or_else(|| booted.map(str::to_string));
    let mut out: Vec<(String, bool)> = fs
        .list("/boot")?
        .into_iter()
        .filter(|e| !e.is_dir)
        .filter_map(|e| e.name.strip_prefix("vmlinuz-").map(str::to_string))
        .map(|release| {
            let is_default = default.as_deref() == Some(release.as_str());
            (release, is_default)
        })
        .collect();
    out.sort_by(|a, b| crate::facts::version_cmp(&a.0, &b.0));
    Ok(out)
}

/// Reads what NVIDIA driver is installed for `facts.kernel`.
pub(crate) fn inspect(fs: &ImageFs, facts: &GuestFacts) -> Result<DriverInfo> {
    let packages: Vec<&Package> = facts
        .packages
        .iter()
        .filter(|p| is_nvidia_package(&p.name))
        .collect();
    let from_dpkg = package_driver(&packages);
    let install_target = install_target(fs)?;
    let mut names: Vec<String> = install_target.iter().map(|(_, n)| n.clone()).collect();
    for n in MODULE_NAMES {
        if !names.iter().any(|m| m == n) {
            names.push(n.to_string());
        }
    }
    let module = match &facts.kernel {
        Some(kernel) => find_module(fs, kernel, &names)?,
        None => None,
    };
    let mut kernels = Vec::new();
    for (release, default) in boot_kernels(fs, facts.kernel.as_deref())? {
        let module = if Some(&release) == facts.kernel.as_ref() {
            module.clone()
        } else {
            find_module(fs, &release, &names)?
        };
        kernels.push(BootKernel {
            release,
            default,
            module,
        });
    }
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
    let mut firmware = Vec::new();
    if let Some(v) = &version {
        let dir = format!("/lib/firmware/nvidia/{v}");
        for e in fs.list(&dir)? {
            if e.is_dir || !e.name.starts_with("gsp_") || !e.name.contains(".bin") {
                continue;
            }
            let path = format!("{dir}/{}", e.name);
            // A dangling symlink counts as an empty file: the driver cannot load it.
            let size = fs.file_size(&path)?.unwrap_or(0);
            firmware.push(FirmwareFile {
                path,
                name: e.name,
                size,
            });
        }
    }
    let gsp_files = firmware.iter().map(|f| f.name.clone()).collect();
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
        firmware,
        boot_kernels: kernels,
        install_target,
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
