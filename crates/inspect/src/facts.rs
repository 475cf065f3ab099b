//! Facts read from the guest's files: os-release, dpkg status, installed kernels.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::Result;
use crate::imagefs::ImageFs;

/// Parsed `/etc/os-release` (shell-style `KEY=value` lines).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OsRelease {
    /// Every key as written, quotes removed.
    pub fields: BTreeMap<String, String>,
}

impl OsRelease {
    /// Parses os-release text; lines that are not `KEY=value` are skipped.
    pub fn parse(text: &str) -> OsRelease {
        let fields = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.trim().to_string(), unquote(v.trim())))
            .collect();
        OsRelease { fields }
    }

    /// A field's value.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.fields.get(key).map(String::as_str)
    }
}

fn unquote(v: &str) -> String {
    let stripped = v
        .strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .or_else(|| v.strip_prefix('\'').and_then(|s| s.strip_suffix('\'')))
        .unwrap_or(v);
    stripped.replace("\\\"", "\"").replace("\\\\", "\\")
}

/// One package from `/var/lib/dpkg/status` that is installed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Package {
    /// Package name.
    pub name: String,
    /// Full Debian version (`565.57.01-0ubuntu0.22.04.4`).
    pub version: String,
    /// Architecture (`amd64`, `all`).
    pub architecture: String,
}

impl Package {
    /// The upstream part of the version: epoch and Debian revision removed
    /// (`1:565.57.01-0ubuntu1` → `565.57.01`).
    pub fn upstream_version(&self) -> &str {
        let v = self
            .version
            .split_once(':')
            .map_or(self.version.as_str(), |(_, v)| v);
        v.rsplit_once('-').map_or(v, |(up, _)| up)
    }
}

/// Parses dpkg's status file, keeping packages whose status is `install ok installed`
/// (or `hold ok installed`), sorted by name.
pub fn parse_dpkg_status(text: &str) -> Vec<Package> {
    let mut packages = Vec::new();
    for stanza in text.split("\n\n") {
        let mut name = None;
        let mut version = None;
        let mut arch = String::new();
        let mut installed = false;
        for line in stanza.lines() {
            if line.starts_with([' ', '\t']) {
                continue;
            }
            let Some((key, value)) = line.split_once(':') else {
                continue;
            };
            let value = value.trim();
            match key {
                "Package" => name = Some(value.to_string()),
                "Version" => version = Some(value.to_string()),
                "Architecture" => arch = value.to_string(),
                "Status" => installed = value.ends_with(" ok installed"),
                _ => {}
            }
        }
        if let (Some(name), Some(version), true) = (name, version, installed) {
            packages.push(Package {
                name,
                version,
                architecture: arch,
            });
        }
    }
    packages.sort_by(|a, b| a.name.cmp(&b.name));
    packages
}

/// Everything the verifier and the payload builder learn about the guest.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestFacts {
    /// `/etc/os-release`.
    pub os_release: OsRelease,
    /// The kernel the image boots (release string, `6.8.0-48-generic`).
    pub kernel: Option<String>,
    /// Every kernel with a `/lib/modules/<release>` directory, sorted.
    pub kernels: Vec<String>,
    /// Installed packages from dpkg's status.
    pub packages: Vec<Package>,
    /// The NVIDIA driver version (`565.57.01`), from the kernel module or dpkg.
    pub nvidia_driver: Option<String>,
    /// The Kubernetes version (`v1.30.5`), from the kubelet/kubeadm/kubectl package.
    pub kubernetes: Option<String>,
    /// `/etc/imgbake-versions` (`KUBERNETES_VERSION=v1.30.0`, …), written by the recipes;
    /// empty when the file is absent.
    #[serde(default)]
    pub versions: BTreeMap<String, String>,
}

impl GuestFacts {
    /// A package by exact name.
    pub fn package(&self, name: &str) -> Option<&Package> {
        self.packages.iter().find(|p| p.name == name)
    }
}

/// Compares kernel release strings the way people expect (`6.8.0-48` < `6.8.0-100`).
pub(crate) fn version_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    fn parts(s: &str) -> Vec<Result<u64, String>> {
        s.split(['.', '-', '+', '~'])
            .map(|p| p.parse::<u64>().map_err(|_| p.to_string()))
            .collect()
    }
    parts(a).cmp(&parts(b))
}

/// The kernel the image boots: the target of `/boot/vmlinuz` when it names an installed
/// kernel, else the newest `/lib/modules/<release>`.
pub(crate) fn booted_kernel(fs: &ImageFs, kernels: &[String]) -> Result<Option<String>> {
    for link in ["/boot/vmlinuz", "/vmlinuz"] {
        if let Some(target) = fs.read_link(link)? {
            let file = target.rsplit('/').next().unwrap_or(&target);
            if let Some(release) = file.strip_prefix("vmlinuz-")
                && kernels.iter().any(|k| k == release)
            {
                return Ok(Some(release.to_string()));
            }
        }
    }
    Ok(kernels.last().cloned())
}

/// Reads os-release, dpkg status, the installed kernels, the Kubernetes version and
/// `/etc/imgbake-versions`.
/// The NVIDIA driver version is filled in by the driver check.
pub(crate) fn read_facts(fs: &ImageFs) -> Result<GuestFacts> {
    let os_release = match fs.read_text("/etc/os-release")? {
        Some(text) => OsRelease::parse(&text),
        None => fs
            .read_text("/usr/lib/os-release")?
            .map(|t| OsRelease::parse(&t))
            .unwrap_or_default(),
    };
    let packages = fs
        .read_text("/var/lib/dpkg/status")?
        .map(|t| parse_dpkg_status(&t))
        .unwrap_or_default();
    let mut kernels: Vec<String> = fs
        .list("/lib/modules")?
        .into_iter()
        .filter(|e| e.is_dir)
        .map(|e| e.name)
        .collect();
    kernels.sort_by(|a, b| version_cmp(a, b));
    let kernel = booted_kernel(fs, &kernels)?;
    let kubernetes = ["kubelet", "kubeadm", "kubectl"]
        .iter()
        .find_map(|name| packages.iter().find(|p| p.name == *name))
        .map(|p| format!("v{}", p.upstream_version()));
    // Same syntax as os-release: the recipes write it with `echo KEY=VALUE`.
    let versions = fs
        .read_text("/etc/imgbake-versions")?
        .map(|t| OsRelease::parse(&t).fields)
        .unwrap_or_default();
    Ok(GuestFacts {
        os_release,
        kernel,
        kernels,
        packages,
        nvidia_driver: None,
        kubernetes,
        versions,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_release_unquotes() {
        let os = OsRelease::parse(
            "PRETTY_NAME=\"Ubuntu 22.04.5 LTS\"\nID=ubuntu\nVERSION_ID='22.04'\n# c\nbad\n",
        );
        assert_eq!(os.get("PRETTY_NAME"), Some("Ubuntu 22.04.5 LTS"));
        assert_eq!(os.get("ID"), Some("ubuntu"));
        assert_eq!(os.get("VERSION_ID"), Some("22.04"));
        assert_eq!(os.fields.len(), 3);
    }

    #[test]
    fn dpkg_keeps_only_installed() {
        let text = "Package: kubelet\nStatus: hold ok installed\nArchitecture: amd64\nVersion: 1.30.5-1.1\nDescription: x\n multi\n\nPackage: gone\nStatus: deinstall ok config-files\nVersion: 1\n\nPackage: nvidia-kernel-common-565-server\nStatus: install ok installed\nVersion: 1:565.57.01-0ubuntu0.22.04.4\n";
        let pkgs = parse_dpkg_status(text);
        let names: Vec<_> = pkgs.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["kubelet", "nvidia-kernel-common-565-server"]);
        assert_eq!(pkgs[0].upstream_version(), "1.30.5");
        assert_eq!(pkgs[1].upstream_version(), "565.57.01");
    }

    #[test]
    fn kernel_versions_sort_numerically() {
        let mut v = vec!["6.8.0-100-generic", "6.8.0-48-generic", "5.15.0-1-generic"];
        v.sort_by(|a, b| version_cmp(a, b));
        assert_eq!(
            v,
            ["5.15.0-1-generic", "6.8.0-48-generic", "6.8.0-100-generic"]
        );
    }
}
