//! `container-runtime`: with the NVIDIA Container Toolkit installed (dpkg has
//! `nvidia-container-toolkit`), containerd's default runtime must be `nvidia`, else Kubernetes'
//! device plugin sees no GPUs unless a RuntimeClass is set up.
//!
//! Read from `/etc/containerd/config.toml` and the files it `imports` (globs such as
//! `/etc/containerd/conf.d/*.toml`, later files overriding earlier ones), in both layouts:
//! config version 2 `[plugins."io.containerd.grpc.v1.cri".containerd] default_runtime_name`
//! and version 3 `[plugins."io.containerd.cri.v1.runtime".containerd] default_runtime_name`.
//! containerd's own default is `runc`. Skipped without the toolkit.

use super::{CheckId, Context};
use crate::Result;
use crate::imagefs::ImageFs;
use crate::report::{Check, Verdict};

const CONFIG: &str = "/etc/containerd/config.toml";
const V2_PLUGIN: &str = "io.containerd.grpc.v1.cri";
const V3_PLUGIN: &str = "io.containerd.cri.v1.runtime";
const FIX: &str = "fix: nvidia-ctk runtime configure --runtime=containerd --set-as-default";

/// The `default_runtime_name` one file sets, if it sets one.
fn default_runtime(doc: &toml::Table) -> Option<String> {
    let plugins = doc.get("plugins")?.as_table()?;
    [V3_PLUGIN, V2_PLUGIN].iter().find_map(|p| {
        plugins
            .get(*p)?
            .as_table()?
            .get("containerd")?
            .as_table()?
            .get("default_runtime_name")?
            .as_str()
            .map(str::to_string)
    })
}

/// The files an `imports` entry names: a path, or a glob whose last component has `*`.
fn expand_import(fs: &ImageFs, pattern: &str) -> Result<Vec<String>> {
    let Some((dir, name)) = pattern.rsplit_once('/') else {
        return Ok(Vec::new());
    };
    if !name.contains('*') {
        return Ok(vec![pattern.to_string()]);
    }
    let (prefix, suffix) = name.split_once('*').unwrap_or((name, ""));
    Ok(fs
        .list(dir)?
        .into_iter()
        .filter(|e| !e.is_dir && e.name.starts_with(prefix) && e.name.ends_with(suffix))
        .map(|e| format!("{dir}/{}", e.name))
        .collect())
}

pub(crate) fn run(cx: &Context<'_>) -> Result<Check> {
    let id = CheckId::ContainerRuntime;
    let fs = &cx.image.fs;
    let Some(toolkit) = cx.image.facts.package("nvidia-container-toolkit") else {
        return Ok(Check::new(
            id,
            Verdict::Skip,
            "NVIDIA Container Toolkit not installed",
            Vec::new(),
        ));
    };
    let mut details = vec![format!("nvidia-container-toolkit {}", toolkit.version)];
    let Some(text) = fs.read_text(CONFIG)? else {
        details.push(format!("{CONFIG} not found: containerd defaults to runc"));
        details.push(FIX.to_string());
        return Ok(Check::new(
            id,
            Verdict::Fail,
            format!(
                "{CONFIG} missing: containerd's default runtime is runc, not nvidia; Kubernetes' device plugin then sees no GPUs unless a RuntimeClass is set up"
            ),
            details,
        ));
    };
    let mut runtime: Option<(String, String)> = None;
    let mut files = vec![(CONFIG.to_string(), text)];
    let mut seen = 0;
    while seen < files.len() && seen < 64 {
        let (path, text) = files[seen].clone();
        seen += 1;
        let doc: toml::Table = match toml::from_str(&text) {
            Ok(d) => d,
            Err(e) => {
                details.push(format!("{path} is not valid TOML: {}", e.message()));
                details.push(FIX.to_string());
                return Ok(Check::new(
                    id,
                    Verdict::Fail,
                    format!("{path} cannot be parsed: containerd will not start with it"),
                    details,
                ));
            }
        };
        if let Some(r) = default_runtime(&doc) {
            runtime = Some((path.clone(), r));
        }
        let imports: Vec<String> = doc
            .get("imports")
            .and_then(|v| v.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        for pattern in imports {
            for file in expand_import(fs, &pattern)? {
                if let Some(t) = fs.read_text(&file)? {
                    files.push((file, t));
                }
            }
        }
    }
    let (source, name) =
        runtime.unwrap_or_else(|| (format!("{CONFIG} (not set)"), "runc".to_string()));
    details.push(format!("{source}: default_runtime_name = \"{name}\""));
    if name == "nvidia" {
        return Ok(Check::new(
            id,
            Verdict::Pass,
            "containerd's default runtime is nvidia",
            details,
        ));
    }
    details.push(FIX.to_string());
    Ok(Check::new(
        id,
        Verdict::Fail,
        format!(
            "containerd's default runtime is {name}, not nvidia ({source}): Kubernetes' device plugin then sees no GPUs unless a RuntimeClass is set up"
        ),
        details,
    ))
}
