//! `api-payload.json` for the Nscale region API, in the original pipeline's shape.

use std::path::{Path, PathBuf};

use inspect::GuestFacts;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::{Error, Result};

/// The `spec.uri` written until an upload sets the real one.
pub const URI_PLACEHOLDER: &str = "PLACEHOLDER_SET_BY_UPLOAD";

/// GPU facts that cannot be read from the image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuSpec {
    /// `NVIDIA`.
    pub vendor: String,
    /// Models the image is meant for (`A100`, `H100`).
    pub models: Vec<String>,
}

/// What the recipe says about the payload; every other field is read from the image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PayloadSpec {
    /// `metadata.name` (the recipe or image name).
    pub name: String,
    /// `virtualized` or `baremetal`.
    pub virtualization: String,
    /// GPU vendor and models the recipe names. The payload has `gpu` only when the image has
    /// an NVIDIA driver, whatever this says.
    pub gpu: Option<GpuSpec>,
    /// The uploaded image's URI, once known.
    pub uri: Option<String>,
}

fn architecture(facts: &GuestFacts) -> &'static str {
    let arch = facts
        .package("base-files")
        .or_else(|| facts.package("dpkg"))
        .map(|p| p.architecture.as_str())
        .unwrap_or("amd64");
    match arch {
        "arm64" => "aarch64",
        _ => "x86_64",
    }
}

/// `version` as the API's semver, `vMAJOR.MINOR.PATCH`, or `None` when it has no such form.
/// Accepts what images record: `v1.30.0`, `1.30.0`, and Debian package versions with an
/// epoch and a revision (`1.30.0-1.1`, `1:1.30.0-1.1`); a pre-release or build suffix after
/// the patch (`1.30.0~rc.1`, `1.30.0+k3s1`) is dropped. `v1.30` (no patch) is `None`: the
/// API refuses it, and guessing `.0` would record a version that may not be installed.
pub fn semver(version: &str) -> Option<String> {
    let v = version.trim();
    let v = v.split_once(':').map_or(v, |(_, rest)| rest);
    let v = v.strip_prefix('v').unwrap_or(v);
    let mut parts = Vec::with_capacity(3);
    let mut rest = v;
    for i in 0..3 {
        let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        if digits == 0 {
            return None;
        }
        parts.push(&rest[..digits]);
        rest = &rest[digits..];
        if i < 2 {
            rest = rest.strip_prefix('.')?;
        }
    }
    // After the patch: nothing, a Debian revision, or a pre-release/build suffix — never
    // a fourth numeric component (`1.2.3.4` is not semver).
    if !(rest.is_empty() || rest.starts_with(['-', '~', '+'])) {
        return None;
    }
    Some(format!("v{}.{}.{}", parts[0], parts[1], parts[2]))
}

/// `softwareVersions`: Kubernetes from the installed kubelet package (the truth of what runs),
/// then every `<NAME>_VERSION` / `<NAME>_PACKAGE_VERSION` of `/etc/imgbake-versions` whose
/// value has a semver form, keyed `<name>` in lower case. The NVIDIA
/// driver's version is `gpu.driver`, not a software version; keys for software the image
/// lacks are absent.
fn software_versions(facts: &GuestFacts) -> Map<String, Value> {
    let mut out = Map::new();
    if let Some(v) = facts.kubernetes.as_deref().and_then(semver) {
        out.insert("kubernetes".into(), v.into());
    }
    for (key, value) in &facts.versions {
        let Some(name) = key.strip_suffix("_VERSION") else {
            continue;
        };
        // `CONTAINERD_PACKAGE_VERSION` (a dpkg version) names containerd.
        let name = name
            .strip_suffix("_PACKAGE")
            .unwrap_or(name)
            .to_ascii_lowercase();
        // The kube tools are `kubernetes`; the driver is `gpu.driver`.
        if name.is_empty()
            || matches!(name.as_str(), "kubelet" | "kubeadm" | "kubectl")
            || name.starts_with("nvidia_driver")
        {
            continue;
        }
        if out.contains_key(&name) {
            continue;
        }
        if let Some(v) = semver(value) {
            out.insert(name, v.into());
        }
    }
    out
}

/// The API's `os.family` for an os-release: `debian` or `redhat` when `ID` or `ID_LIKE`
/// names one of them, else the raw `ID` (which the schema refuses, so `register` says so).
fn os_family(os: &inspect::OsRelease) -> Option<String> {
    let ids: Vec<&str> = os
        .get("ID")
        .into_iter()
        .chain(
            os.get("ID_LIKE")
                .into_iter()
                .flat_map(str::split_whitespace),
        )
        .collect();
    if ids.iter().any(|id| matches!(*id, "debian" | "ubuntu")) {
        return Some("debian".into());
    }
    if ids
        .iter()
        .any(|id| matches!(*id, "rhel" | "fedora" | "centos" | "rocky"))
    {
        return Some("redhat".into());
    }
    os.get("ID").map(str::to_owned)
}

/// Builds the payload from the recipe's `spec` and the image's `facts`; no value is ever
/// `null` (a fact the image lacks leaves its key out).
///
/// - `os`: `family` mapped to the API's enum; `distro` is the image's own `ID`. The API takes
///   only `ubuntu` and `rocky`: for any other distribution (Debian) the payload still says
///   what the image is, so `register` refuses it with the reason instead of registering a
///   mislabelled image.
/// - `softwareVersions`: see [`semver`]; absent when nothing is known.
/// - `gpu`: only when an NVIDIA driver is in the image, with `driver` its exact version;
///   vendor and models from the recipe when it names them.
pub fn build_payload(spec: &PayloadSpec, facts: &GuestFacts) -> Value {
    let os = &facts.os_release;
    let mut os_json = Map::new();
    os_json.insert("kernel".into(), "linux".into());
    let fields = [
        ("family", os_family(os)),
        ("distro", os.get("ID").map(str::to_owned)),
        (
            "variant",
            Some(os.get("VARIANT_ID").unwrap_or("server").to_owned()),
        ),
        (
            "codename",
            os.get("VERSION_CODENAME")
                .or_else(|| os.get("UBUNTU_CODENAME"))
                .map(str::to_owned),
        ),
        ("version", os.get("VERSION_ID").map(str::to_owned)),
    ];
    for (key, value) in fields {
        if let Some(value) = value {
            os_json.insert(key.into(), value.into());
        }
    }
    let mut spec_json = json!({
        "uri": spec.uri.as_deref().unwrap_or(URI_PLACEHOLDER),
        "architecture": architecture(facts),
        "virtualization": spec.virtualization,
        "os": os_json,
    });
    let versions = software_versions(facts);
    if !versions.is_empty() {
        spec_json["softwareVersions"] = Value::Object(versions);
    }
    if let Some(driver) = &facts.nvidia_driver {
        let mut gpu = json!({
            "vendor": spec.gpu.as_ref().map_or("NVIDIA", |g| g.vendor.as_str()),
            "driver": driver,
        });
        if let Some(g) = spec.gpu.as_ref().filter(|g| !g.models.is_empty()) {
            gpu["models"] = json!(g.models);
        }
        spec_json["gpu"] = gpu;
    }
    json!({
        "metadata": { "name": spec.name },
        "spec": spec_json,
    })
}

/// Writes `dir/api-payload.json` atomically and returns its path.
pub fn write_payload(dir: &Path, spec: &PayloadSpec, facts: &GuestFacts) -> Result<PathBuf> {
    let mut text = serde_json::to_string_pretty(&build_payload(spec, facts)).map_err(|source| {
        Error::Json {
            what: "api payload",
            source,
        }
    })?;
    text.push('\n');
    let path = dir.join("api-payload.json");
    crate::write_atomically(&path, text.as_bytes())?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use inspect::{OsRelease, Package};

    #[test]
    fn payload_reads_facts() {
        let facts = GuestFacts {
            os_release: OsRelease::parse(
                "ID=ubuntu\nID_LIKE=debian\nVERSION_ID=\"22.04\"\nVERSION_CODENAME=jammy\n",
            ),
            kernel: Some("5.15.0-126-generic".into()),
            kernels: vec![],
            packages: vec![Package {
                name: "base-files".into(),
                version: "12ubuntu4".into(),
                architecture: "amd64".into(),
            }],
            nvidia_driver: Some("565.57.01".into()),
            kubernetes: Some("v1.30.5".into()),
            versions: Default::default(),
        };
        let spec = PayloadSpec {
            name: "ubuntu-2204-nvidia-565".into(),
            virtualization: "virtualized".into(),
            gpu: Some(GpuSpec {
                vendor: "NVIDIA".into(),
                models: vec!["H100".into()],
            }),
            uri: None,
        };
        let v = build_payload(&spec, &facts);
        assert_eq!(
            v,
            json!({
                "metadata": {"name": "ubuntu-2204-nvidia-565"},
                "spec": {
                    "uri": URI_PLACEHOLDER,
                    "architecture": "x86_64",
                    "virtualization": "virtualized",
                    "os": {"kernel": "linux", "family": "debian", "distro": "ubuntu", "variant": "server", "codename": "jammy", "version": "22.04"},
                    "softwareVersions": {"kubernetes": "v1.30.5"},
                    "gpu": {"vendor": "NVIDIA", "driver": "565.57.01", "models": ["H100"]}
                }
            })
        );
    }

    fn ubuntu(driver: Option<&str>, kubernetes: Option<&str>, versions: &str) -> GuestFacts {
        GuestFacts {
            os_release: OsRelease::parse(
                "ID=ubuntu\nID_LIKE=debian\nVERSION_ID=\"22.04\"\nVERSION_CODENAME=jammy\n",
            ),
            nvidia_driver: driver.map(str::to_owned),
            kubernetes: kubernetes.map(str::to_owned),
            versions: OsRelease::parse(versions).fields,
            ..GuestFacts::default()
        }
    }

    fn gpu_spec() -> PayloadSpec {
        PayloadSpec {
            name: "gpu-ready".into(),
            virtualization: "virtualized".into(),
            gpu: Some(GpuSpec {
                vendor: "NVIDIA".into(),
                models: vec!["H100".into()],
            }),
            uri: None,
        }
    }

    /// Every value in `v`, recursively, is not `null`.
    fn assert_no_nulls(v: &Value, at: &str) {
        match v {
            Value::Null => panic!("null at {at}"),
            Value::Object(m) => m
                .iter()
                .for_each(|(k, v)| assert_no_nulls(v, &format!("{at}/{k}"))),
            Value::Array(a) => a
                .iter()
                .enumerate()
                .for_each(|(i, v)| assert_no_nulls(v, &format!("{at}/{i}"))),
            _ => {}
        }
    }

    #[test]
    fn no_driver_no_gpu_even_when_the_recipe_names_models() {
        let v = build_payload(&gpu_spec(), &ubuntu(None, Some("v1.30.0"), ""));
        assert!(v["spec"].get("gpu").is_none(), "{v:#}");
        assert_no_nulls(&v, "");
    }

    #[test]
    fn driver_present_gives_gpu_with_the_exact_version() {
        let v = build_payload(&gpu_spec(), &ubuntu(Some("580.95.05"), None, ""));
        assert_eq!(
            v["spec"]["gpu"],
            json!({"vendor": "NVIDIA", "driver": "580.95.05", "models": ["H100"]})
        );
        // A driver without a recipe `gpu` section: vendor NVIDIA, no models key.
        let spec = PayloadSpec {
            gpu: None,
            ..gpu_spec()
        };
        let v = build_payload(&spec, &ubuntu(Some("580.95.05"), None, ""));
        assert_eq!(
            v["spec"]["gpu"],
            json!({"vendor": "NVIDIA", "driver": "580.95.05"})
        );
    }

    #[test]
    fn kubelet_package_versions_become_semver() {
        for (given, want) in [
            ("v1.30.0", Some("v1.30.0")),
            ("1.30.0", Some("v1.30.0")),
            ("1.30.0-1.1", Some("v1.30.0")),
            ("1:1.30.0-1.1", Some("v1.30.0")),
            ("1.30.14-00", Some("v1.30.14")),
            ("1.31.0~rc.1-1.1", Some("v1.31.0")),
            ("v1.30", None),
            ("1.30", None),
            ("1.2.3.4", None),
            ("", None),
            ("latest", None),
        ] {
            assert_eq!(semver(given).as_deref(), want, "{given}");
        }
    }

    #[test]
    fn software_versions_from_package_and_imgbake_versions() {
        let versions = "KUBERNETES_VERSION=v1.30.9\nNVIDIA_DRIVER_VERSION=580.95.05\nNVIDIA_DRIVER_BRANCH=580\nKUBELET_PACKAGE_VERSION=1.30.0-1.1\nCONTAINERD_PACKAGE_VERSION=1.7.12-0ubuntu2~22.04.1\nCRI_TOOLS_VERSION=1.30.1-1.1\nHELM_VERSION=v3\n";
        let v = build_payload(
            &gpu_spec(),
            &ubuntu(Some("580.95.05"), Some("v1.30.0"), versions),
        );
        // The installed package wins over the record; the driver is gpu.driver; keys whose
        // value is no semver are left out.
        assert_eq!(
            v["spec"]["softwareVersions"],
            json!({"kubernetes": "v1.30.0", "cri_tools": "v1.30.1", "containerd": "v1.7.12"})
        );
        let v = build_payload(
            &gpu_spec(),
            &ubuntu(None, None, "KUBERNETES_VERSION=v1.30.0\n"),
        );
        assert_eq!(
            v["spec"]["softwareVersions"],
            json!({"kubernetes": "v1.30.0"})
        );
    }

    #[test]
    fn absent_software_leaves_no_key_and_no_null() {
        let facts = GuestFacts {
            os_release: OsRelease::parse("ID=debian\nVERSION_ID=\"12\"\n"),
            ..GuestFacts::default()
        };
        let v = build_payload(&gpu_spec(), &facts);
        assert!(v["spec"].get("softwareVersions").is_none(), "{v:#}");
        assert!(v["spec"].get("gpu").is_none(), "{v:#}");
        assert!(v["spec"]["os"].get("codename").is_none(), "{v:#}");
        assert_eq!(v["spec"]["os"]["family"], "debian");
        // Debian stays Debian: the API refuses it at register, nothing mislabels it.
        assert_eq!(v["spec"]["os"]["distro"], "debian");
        assert_no_nulls(&v, "");
        // No os-release at all: still no nulls.
        assert_no_nulls(&build_payload(&gpu_spec(), &GuestFacts::default()), "");
    }

    #[test]
    fn os_family_maps_to_the_api_enum() {
        let rocky = GuestFacts {
            os_release: OsRelease::parse(
                "ID=\"rocky\"\nID_LIKE=\"rhel centos fedora\"\nVERSION_ID=\"9.4\"\n",
            ),
            ..GuestFacts::default()
        };
        let v = build_payload(&gpu_spec(), &rocky);
        assert_eq!(v["spec"]["os"]["family"], "redhat");
        assert_eq!(v["spec"]["os"]["distro"], "rocky");
    }
}
