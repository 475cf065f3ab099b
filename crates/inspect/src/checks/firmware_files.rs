//! `firmware-files`: GSP firmware (`gsp_*.bin`) in `/lib/firmware/nvidia/<driver version>/`.
//! Fails when the driver's exact version has none; skipped without a driver.

use super::{CheckId, Context};
use crate::Result;
use crate::report::{Check, Verdict};

pub(crate) fn run(cx: &Context<'_>) -> Result<Check> {
    let d = &cx.image.driver;
    let Some(version) = &d.version else {
        return Ok(Check::new(
            CheckId::FirmwareFiles,
            Verdict::Skip,
            "no driver, no firmware needed",
            Vec::new(),
        ));
    };
    let dir = format!("/lib/firmware/nvidia/{version}");
    if !d.gsp_files.is_empty() {
        return Ok(Check::new(
            CheckId::FirmwareFiles,
            Verdict::Pass,
            format!("{dir}: {}", d.gsp_files.join(", ")),
            Vec::new(),
        ));
    }
    let others: Vec<&str> = d
        .firmware_dirs
        .iter()
        .filter(|v| *v != version)
        .map(String::as_str)
        .collect();
    let mut details = vec![format!("{dir}/gsp_*.bin not found")];
    if !others.is_empty() {
        details.push(format!(
            "firmware present for other versions: {}",
            others.join(", ")
        ));
    }
    details.push(
        "with GSP forced on (1) the GPU will not initialise; with fallback (17/18) it runs in CPU mode"
            .to_string(),
    );
    Ok(Check::new(
        CheckId::FirmwareFiles,
        Verdict::Fail,
        format!("no GSP firmware for {version}"),
        details,
    ))
}
