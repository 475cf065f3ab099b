//! `firmware-files`: GSP firmware in `/lib/firmware/nvidia/<the module's exact version>/`.
//!
//! With GPU models given ([`Expectations::gpu_models`](crate::Expectations::gpu_models)) each
//! model's file must exist and be non-empty (`gsp_tu10x.bin` for Turing and A100,
//! `gsp_ga10x.bin` for other Ampere, Ada, Hopper, Blackwell); without models at least one
//! non-empty `gsp_*.bin` must be there. An empty `gsp_*.bin` always fails: the driver reads it
//! as a corrupt image and the GPU does not initialise. A model not known here fails too: its
//! firmware cannot be vouched for. Skipped without a driver.

use super::{CheckId, Context};
use crate::Result;
use crate::gpu_models;
use crate::report::{Check, Verdict};

pub(crate) fn run(cx: &Context<'_>) -> Result<Check> {
    let id = CheckId::FirmwareFiles;
    let d = &cx.image.driver;
    let Some(version) = &d.version else {
        return Ok(Check::new(
            id,
            Verdict::Skip,
            "no driver, no firmware needed",
            Vec::new(),
        ));
    };
    let dir = format!("/lib/firmware/nvidia/{version}");
    let fix = format!(
        "fix: install the GSP firmware package of exactly {version} (Debian firmware-nvidia-gsp, Ubuntu nvidia-firmware-<branch>-{version})"
    );
    let mut problems = Vec::new();
    let mut details = Vec::new();
    for f in &d.firmware {
        if f.size == 0 {
            problems.push(format!(
                "{} is empty: the GPU does not initialise with GSP",
                f.path
            ));
        } else {
            details.push(format!("{} ({} bytes)", f.path, f.size));
        }
    }
    let mut unknown = Vec::new();
    for model in &cx.expect.gpu_models {
        let Some(family) = gpu_models::family(model) else {
            unknown.push(model.clone());
            continue;
        };
        let file = family.gsp_file();
        if !d.firmware.iter().any(|f| f.name == file) {
            problems.push(format!(
                "{dir}/{file} not found, which {model} ({}) loads",
                family.name()
            ));
        }
    }
    if !unknown.is_empty() {
        problems.push(format!(
            "unknown GPU model(s) {}: known are {}",
            unknown.join(", "),
            gpu_models::known()
        ));
    }
    if cx.expect.gpu_models.is_empty() && !d.firmware.iter().any(|f| f.size > 0) {
        problems.push(format!("{dir}/gsp_*.bin not found"));
    }
    if problems.is_empty() {
        let names: Vec<&str> = d.firmware.iter().map(|f| f.name.as_str()).collect();
        return Ok(Check::new(
            id,
            Verdict::Pass,
            format!("{dir}: {}", names.join(", ")),
            details,
        ));
    }
    let summary = if d.firmware.is_empty() && cx.expect.gpu_models.is_empty() {
        format!("no GSP firmware for {version}")
    } else {
        problems[0].clone()
    };
    let others: Vec<&str> = d
        .firmware_dirs
        .iter()
        .filter(|v| *v != version)
        .map(String::as_str)
        .collect();
    let mut out = problems;
    out.extend(details);
    if !others.is_empty() {
        out.push(format!(
            "firmware present for other versions: {}",
            others.join(", ")
        ));
        out.push(format!(
            "the directory must be named after the module's exact version {version}"
        ));
    }
    out.push(
        "with GSP forced on (1) the GPU will not initialise; with fallback (17/18) it runs in CPU mode"
            .to_string(),
    );
    out.push(fix);
    Ok(Check::new(id, Verdict::Fail, summary, out))
}
