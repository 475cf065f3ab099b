//! `gpu-firmware`: the effective `NVreg_EnableGpuFirmware` against the expected value.
//!
//! Fails when the value is invalid (the module would not load), differs from the expectation,
//! or is 0 expected with the open modules (they ignore 0: GSP stays on). Skipped when nothing
//! is expected, no driver is installed and nothing sets the option.

use super::{CheckId, Context};
use crate::Result;
use crate::driver::ModuleFlavour;
use crate::gpu_firmware::{Resolution, SettingStatus, Via, describe};
use crate::report::{Check, Verdict};

/// The effective value explained, e.g. `unset → 18 = driver default: …`.
pub(crate) fn decoded(r: &Resolution) -> String {
    match r.effective {
        Some(v) if r.settings.is_empty() => format!("unset → {}", describe(v)),
        Some(v) => describe(v),
        None => "invalid value: the kernel refuses to load nvidia".to_string(),
    }
}

/// One line per setting: where, what, what it means, and what became of it.
pub(crate) fn setting_lines(r: &Resolution) -> Vec<String> {
    r.settings
        .iter()
        .map(|s| {
            let status = match &s.status {
                SettingStatus::Effective => "effective".to_string(),
                SettingStatus::Overridden(w)
                | SettingStatus::Shadowed(w)
                | SettingStatus::Ignored(w) => w.clone(),
            };
            let via = match s.via {
                Via::Parameter => "",
                Via::RegistryDwords => " (in NVreg_RegistryDwords)",
            };
            let value = s.value.map_or(
                "invalid: the kernel refuses to load the module".to_string(),
                describe,
            );
            format!("{}: {}{via} → {value} [{status}]", s.location, s.raw)
        })
        .collect()
}

pub(crate) fn run(cx: &Context<'_>) -> Result<Check> {
    let r = &cx.settings.root;
    let flavour = cx.image.driver.flavour;
    let driver_installed = cx.image.driver.version.is_some();
    let decoded = decoded(r);
    let mut details = setting_lines(r);
    details.push(format!("effective value from {}", r.source));
    let open_ignores_zero = flavour == ModuleFlavour::Open && r.effective == Some(0);
    if open_ignores_zero {
        details.push("the open kernel modules ignore 0: GSP stays on".to_string());
    }
    let summary = if open_ignores_zero {
        format!("{decoded} — but the open modules ignore 0")
    } else {
        decoded
    };
    let verdict = match (r.effective, cx.expect.enable_gpu_firmware) {
        (None, _) => Verdict::Fail,
        (Some(0), Some(0)) if flavour == ModuleFlavour::Open => Verdict::Fail,
        (Some(got), Some(want)) if got == want => Verdict::Pass,
        (Some(_), Some(want)) => {
            details.push(format!("expected {}", describe(want)));
            Verdict::Fail
        }
        (Some(_), None) if !driver_installed && r.settings.is_empty() => Verdict::Skip,
        (Some(_), None) => Verdict::Pass,
    };
    Ok(Check::new(CheckId::GpuFirmware, verdict, summary, details))
}
