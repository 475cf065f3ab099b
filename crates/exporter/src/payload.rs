//! `api-payload.json` for the Nscale region API, in the original pipeline's shape.

use std::path::{Path, PathBuf};

use inspect::GuestFacts;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

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
    /// GPU vendor and models; `None` for an image without a GPU stack.
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

/// Builds the payload. `os`, `softwareVersions.kubernetes` and `gpu.driver` come from `facts`
/// (os-release and dpkg status of the image); missing facts are `null`.
pub fn build_payload(spec: &PayloadSpec, facts: &GuestFacts) -> Value {
    let os = &facts.os_release;
    let family = os
        .get("ID_LIKE")
        .and_then(|l| l.split_whitespace().next())
        .or_else(|| os.get("ID"));
    let variant = os.get("VARIANT_ID").unwrap_or("server");
    let mut spec_json = json!({
        "uri": spec.uri.as_deref().unwrap_or(URI_PLACEHOLDER),
        "architecture": architecture(facts),
        "virtualization": spec.virtualization,
        "os": {
            "kernel": "linux",
            "family": family,
            "distro": os.get("ID"),
            "variant": variant,
            "codename": os.get("VERSION_CODENAME").or_else(|| os.get("UBUNTU_CODENAME")),
            "version": os.get("VERSION_ID"),
        },
        "softwareVersions": {
            "kubernetes": facts.kubernetes,
        },
    });
    if let Some(gpu) = &spec.gpu {
        spec_json["gpu"] = json!({
            "vendor": gpu.vendor,
            "driver": facts.nvidia_driver,
            "models": gpu.models,
        });
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
}
