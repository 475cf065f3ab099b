//! `driver/flavour`: the GPU models' needs against the module's flavour. Blackwell (B100, B200,
//! GB200, RTX PRO 6000) runs only with the open kernel modules (license `Dual MIT/GPL`): the
//! proprietary `nvidia.ko` fails. Skipped without models or without a driver.

use super::{CheckId, Context};
use crate::Result;
use crate::driver::ModuleFlavour;
use crate::gpu_models;
use crate::report::{Check, Verdict};

pub(crate) fn run(cx: &Context<'_>) -> Result<Check> {
    let id = CheckId::DriverFlavour;
    let d = &cx.image.driver;
    if cx.expect.gpu_models.is_empty() || d.version.is_none() {
        return Ok(Check::new(
            id,
            Verdict::Skip,
            "no GPU models given or no driver installed",
            Vec::new(),
        ));
    }
    let needs_open: Vec<&str> = cx
        .expect
        .gpu_models
        .iter()
        .filter(|m| gpu_models::family(m).is_some_and(|f| f.needs_open_module()))
        .map(String::as_str)
        .collect();
    let module = d
        .module
        .as_ref()
        .map(|m| {
            format!(
                "{} (license {})",
                m.path,
                m.license.as_deref().unwrap_or("?")
            )
        })
        .unwrap_or_else(|| "the driver packages".to_string());
    if needs_open.is_empty() {
        return Ok(Check::new(
            id,
            Verdict::Pass,
            "no model needs the open modules",
            vec![module],
        ));
    }
    Ok(match d.flavour {
        ModuleFlavour::Open => Check::new(
            id,
            Verdict::Pass,
            format!("open modules, as {} need", needs_open.join(", ")),
            vec![module],
        ),
        _ => Check::new(
            id,
            Verdict::Fail,
            format!(
                "{} (Blackwell) need the open kernel modules, found the proprietary module",
                needs_open.join(", ")
            ),
            vec![
                module,
                "fix: install the open flavour (nvidia-open-kernel-dkms on Debian, nvidia-driver-<branch>-open on Ubuntu)".into(),
            ],
        ),
    })
}
