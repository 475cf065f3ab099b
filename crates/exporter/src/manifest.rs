//! `manifest.json`: what was built, from what, how, and what the image contains.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use digest::Sha256;
use inspect::GuestFacts;
use serde::{Deserialize, Serialize};

use crate::export::ExportedFile;
use crate::{Error, Result};

/// The base image a build started from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BaseImage {
    /// Where it was downloaded from.
    pub url: String,
    /// Its SHA-256.
    pub sha256: Sha256,
}

/// One step that ran.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepRecord {
    /// Step id (`04`).
    pub id: String,
    /// Script path as the recipe names it.
    pub script: String,
    /// The step's checkpoint key / content digest.
    pub digest: String,
    /// Wall time in milliseconds (0 when restored from a checkpoint).
    pub duration_ms: u64,
    /// Exit code; `None` when restored from a checkpoint instead of run.
    pub exit_code: Option<i32>,
    /// True when the step was not run but its checkpoint reused.
    #[serde(default)]
    pub cached: bool,
}

/// Everything the binary knows about a build; the exporter adds the outputs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestInput {
    /// Recipe name.
    pub recipe: String,
    /// Resolved recipe variables.
    pub vars: BTreeMap<String, String>,
    /// The base image.
    pub base: BaseImage,
    /// Steps in order.
    pub steps: Vec<StepRecord>,
    /// imgbake's version (`env!("CARGO_PKG_VERSION")` of the binary).
    pub imgbake_version: String,
    /// When the build finished (RFC 3339), as the binary formats it.
    pub built_at: String,
}

#[derive(Serialize)]
struct Manifest<'a> {
    schema: u32,
    #[serde(flatten)]
    input: &'a ManifestInput,
    outputs: Vec<Output<'a>>,
    guest: Guest<'a>,
}

#[derive(Serialize)]
struct Output<'a> {
    file: String,
    format: crate::ExportFormat,
    size: u64,
    allocated: u64,
    sha256: Sha256,
    #[serde(skip)]
    _p: std::marker::PhantomData<&'a ()>,
}

#[derive(Serialize)]
struct Guest<'a> {
    os_release: &'a BTreeMap<String, String>,
    kernel: Option<&'a str>,
    nvidia_driver: Option<&'a str>,
    kubernetes: Option<&'a str>,
    packages: BTreeMap<&'a str, &'a str>,
}

/// Renders the manifest as pretty JSON.
pub fn render_manifest(
    input: &ManifestInput,
    files: &[ExportedFile],
    facts: &GuestFacts,
) -> Result<String> {
    let manifest = Manifest {
        schema: 1,
        input,
        outputs: files
            .iter()
            .map(|f| Output {
                file: f
                    .path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                format: f.format,
                size: f.size,
                allocated: f.allocated,
                sha256: f.sha256,
                _p: std::marker::PhantomData,
            })
            .collect(),
        guest: Guest {
            os_release: &facts.os_release.fields,
            kernel: facts.kernel.as_deref(),
            nvidia_driver: facts.nvidia_driver.as_deref(),
            kubernetes: facts.kubernetes.as_deref(),
            packages: facts
                .packages
                .iter()
                .map(|p| (p.name.as_str(), p.version.as_str()))
                .collect(),
        },
    };
    serde_json::to_string_pretty(&manifest)
        .map(|mut s| {
            s.push('\n');
            s
        })
        .map_err(|source| Error::Json {
            what: "manifest",
            source,
        })
}

/// Writes `dir/manifest.json` atomically and returns its path.
pub fn write_manifest(
    dir: &Path,
    input: &ManifestInput,
    files: &[ExportedFile],
    facts: &GuestFacts,
) -> Result<PathBuf> {
    let text = render_manifest(input, files, facts)?;
    let path = dir.join("manifest.json");
    crate::write_atomically(&path, text.as_bytes())?;
    Ok(path)
}
