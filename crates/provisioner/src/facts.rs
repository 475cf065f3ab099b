//! Facts about the finished guest for the manifest: OS release, kernel, packages, NVIDIA
//! driver version.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::session::GuestSession;
use crate::{Error, Result};

/// What the manifest records about the guest.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct GuestFacts {
    /// `/etc/os-release` as key/value pairs (quotes removed).
    pub os_release: BTreeMap<String, String>,
    /// The running kernel (`uname -r`).
    pub kernel: String,
    /// Installed packages (`dpkg-query -W`, state `ii`) as (name, version), sorted.
    pub packages: Vec<(String, String)>,
    /// The NVIDIA kernel module's version if a driver is installed: `modinfo -F version nvidia`
    /// for the running or any installed kernel, else `/proc/driver/nvidia/version`, else the
    /// version of an installed `nvidia-driver-*` / `nvidia-headless-*` /
    /// `nvidia-kernel-common-*` package.
    pub nvidia_driver: Option<String>,
}

/// One script, one round trip (each one costs under TCG). Sections start with `@@name`.
const FACTS_SCRIPT: &str = r#"
echo @@os-release; cat /etc/os-release 2>/dev/null || cat /usr/lib/os-release 2>/dev/null
echo @@kernel; uname -r
echo @@packages; dpkg-query -W -f '${db:Status-Abbrev}\t${Package}\t${Version}\n' 2>/dev/null
echo @@modinfo
modinfo -F version nvidia 2>/dev/null
for k in /lib/modules/*; do [ -d "$k" ] && modinfo -k "${k##*/}" -F version nvidia 2>/dev/null; done
echo @@proc; cat /proc/driver/nvidia/version 2>/dev/null
true
"#;

impl GuestSession {
    /// Collects [`GuestFacts`] (run as root so `modinfo` is on the path).
    pub async fn facts(&self, cancel: &CancellationToken) -> Result<GuestFacts> {
        let out = self
            .exec_capture_root(FACTS_SCRIPT, Duration::from_secs(120), cancel)
            .await?
            .check("collect guest facts")?;
        parse_facts(&out.stdout)
    }
}

/// Parses the output of the facts script.
pub(crate) fn parse_facts(text: &str) -> Result<GuestFacts> {
    let mut sections: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    let mut current = "";
    for line in text.lines() {
        if let Some(name) = line.strip_prefix("@@") {
            current = name.trim();
            sections.entry(current).or_default();
        } else {
            sections.entry(current).or_default().push(line);
        }
    }
    let section = |name: &str| sections.get(name).cloned().unwrap_or_default();
    let kernel = section("kernel").first().map(|s| s.trim().to_string());
    let kernel = kernel
        .filter(|k| !k.is_empty())
        .ok_or_else(|| Error::Parse {
            what: "collect guest facts".into(),
            detail: "no kernel version from uname -r".into(),
        })?;
    let mut packages: Vec<(String, String)> = section("packages")
        .iter()
        .filter_map(|line| {
            let mut parts = line.split('\t');
            let state = parts.next()?;
            let (name, version) = (parts.next()?, parts.next()?);
            state
                .starts_with("ii")
                .then(|| (name.to_string(), version.to_string()))
        })
        .collect();
    packages.sort();
    let nvidia_driver = section("modinfo")
        .iter()
        .map(|l| l.trim())
        .find(|l| looks_like_version(l))
        .map(str::to_string)
        .or_else(|| section("proc").iter().find_map(|l| version_in(l)))
        .or_else(|| nvidia_from_packages(&packages));
    Ok(GuestFacts {
        os_release: parse_os_release(&section("os-release").join("\n")),
        kernel,
        packages,
        nvidia_driver,
    })
}

/// Parses os-release(5): `KEY=value`, value optionally in single or double quotes, with
/// backslash escapes inside double quotes; comments and blank lines skipped.
pub fn parse_os_release(text: &str) -> BTreeMap<String, String> {
    let mut map = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((key, raw)) = line.split_once('=') else {
            continue;
        };
        let value = if let Some(inner) = raw.strip_prefix('"').and_then(|r| r.strip_suffix('"')) {
            let mut out = String::new();
            let mut chars = inner.chars();
            while let Some(c) = chars.next() {
                if c == '\\' {
                    if let Some(next) = chars.next() {
                        out.push(next);
                    }
                } else {
                    out.push(c);
                }
            }
            out
        } else if let Some(inner) = raw.strip_prefix('\'').and_then(|r| r.strip_suffix('\'')) {
            inner.to_string()
        } else {
            raw.to_string()
        };
        map.insert(key.trim().to_string(), value);
    }
    map
}

fn looks_like_version(s: &str) -> bool {
    s.contains('.')
        && s.split('.')
            .all(|part| !part.is_empty() && part.chars().all(|c| c.is_ascii_digit()))
}

/// First whitespace-separated token that looks like `565.57.01`.
fn version_in(line: &str) -> Option<String> {
    line.split_whitespace()
        .find(|t| looks_like_version(t))
        .map(str::to_string)
}

fn nvidia_from_packages(packages: &[(String, String)]) -> Option<String> {
    const PREFIXES: [&str; 4] = [
        "nvidia-driver-",
        "nvidia-headless-",
        "nvidia-kernel-common-",
        "nvidia-dkms-",
    ];
    packages
        .iter()
        .filter(|(name, _)| PREFIXES.iter().any(|p| name.starts_with(p)))
        .find_map(|(_, version)| {
            // Debian versions: [epoch:]upstream[-revision]; the driver version is upstream.
            let no_epoch = version.split_once(':').map_or(version.as_str(), |(_, v)| v);
            let upstream = no_epoch.split('-').next()?;
            looks_like_version(upstream).then(|| upstream.to_string())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const UBUNTU_OS_RELEASE: &str = r#"PRETTY_NAME="Ubuntu 22.04.5 LTS"
NAME="Ubuntu"
VERSION_ID="22.04"
VERSION="22.04.5 LTS (Jammy Jellyfish)"
VERSION_CODENAME=jammy
ID=ubuntu
ID_LIKE=debian
HOME_URL="https://www.ubuntu.com/"
UBUNTU_CODENAME=jammy
"#;

    #[test]
    fn os_release_quotes_and_escapes() {
        let map = parse_os_release(UBUNTU_OS_RELEASE);
        assert_eq!(map["VERSION_ID"], "22.04");
        assert_eq!(map["PRETTY_NAME"], "Ubuntu 22.04.5 LTS");
        assert_eq!(map["ID"], "ubuntu");
        let map = parse_os_release("# c\nA='x y'\nB=\"q\\\"uote\\$\"\n\nbroken\n");
        assert_eq!(map["A"], "x y");
        assert_eq!(map["B"], "q\"uote$");
        assert_eq!(map.len(), 2);
    }

    #[test]
    fn facts_from_script_output() {
        let text = format!(
            "@@os-release\n{UBUNTU_OS_RELEASE}@@kernel\n5.15.0-126-generic\n@@packages\n\
             ii \tzlib1g\t1:1.2.11.dfsg-2ubuntu9.2\nrc \told-pkg\t1.0\n\
             ii \tnvidia-driver-565-server\t565.57.01-0ubuntu0.22.04.4\n@@modinfo\n\
             565.57.01\n@@proc\n"
        );
        let facts = parse_facts(&text).unwrap();
        assert_eq!(facts.kernel, "5.15.0-126-generic");
        assert_eq!(facts.os_release["VERSION_CODENAME"], "jammy");
        assert_eq!(
            facts.packages,
            vec![
                (
                    "nvidia-driver-565-server".to_string(),
                    "565.57.01-0ubuntu0.22.04.4".to_string()
                ),
                ("zlib1g".to_string(), "1:1.2.11.dfsg-2ubuntu9.2".to_string()),
            ]
        );
        assert_eq!(facts.nvidia_driver.as_deref(), Some("565.57.01"));
    }

    #[test]
    fn nvidia_falls_back_to_proc_then_packages_then_none() {
        let proc = "@@kernel\n6.1.0-27-cloud-amd64\n@@modinfo\n@@proc\n\
            NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  570.86.15  Release Build  (dvs-builder@U16-I3-B03-4-3)  Thu Jan 23 2025\n\
            GCC version:  gcc version 12.3.0 (Ubuntu 12.3.0-1ubuntu1~22.04)\n";
        assert_eq!(
            parse_facts(proc).unwrap().nvidia_driver.as_deref(),
            Some("570.86.15")
        );
        let pkgs = "@@kernel\nk\n@@packages\nii \tnvidia-headless-565-server\t565.57.01-0ubuntu1\n";
        assert_eq!(
            parse_facts(pkgs).unwrap().nvidia_driver.as_deref(),
            Some("565.57.01")
        );
        let none = "@@kernel\nk\n@@packages\nii \tbash\t5.2.15-2+b7\n@@modinfo\n@@proc\n";
        assert_eq!(parse_facts(none).unwrap().nvidia_driver, None);
        assert!(parse_facts("@@kernel\n\n").is_err());
    }
}
