//! `driver`: the installed NVIDIA driver. Fails when a branch is expected and none (or another)
//! is installed, or when the module's version differs from the packages'. Skipped when no
//! driver is installed and none is expected.

use super::{CheckId, Context};
use crate::Result;
use crate::driver::ModuleFlavour;
use crate::report::{Check, Verdict};

pub(crate) fn run(cx: &Context<'_>) -> Result<Check> {
    let d = &cx.image.driver;
    let expect = cx.expect;
    let Some(version) = &d.version else {
        let verdict = if expect.driver_branch.is_some() {
            Verdict::Fail
        } else {
            Verdict::Skip
        };
        let summary = match &expect.driver_branch {
            Some(b) => format!("no NVIDIA driver installed (expected branch {b})"),
            None => "no NVIDIA driver installed".to_string(),
        };
        return Ok(Check::new(CheckId::Driver, verdict, summary, Vec::new()));
    };
    let mut details = d.packages.clone();
    let mut verdict = Verdict::Pass;
    match &d.module {
        Some(m) => {
            details.push(format!(
                "module {} version {} license {}",
                m.path,
                m.version.as_deref().unwrap_or("?"),
                m.license.as_deref().unwrap_or("?")
            ));
            if let Some(why) = &m.unreadable {
                details.push(format!("cannot read its .modinfo: {why}"));
            }
        }
        None => details
            .push("no nvidia module found for the booted kernel (DKMS build missing?)".to_string()),
    }
    let module_version = d.module.as_ref().and_then(|m| m.version.as_ref());
    if let (Some(m), Some(p)) = (module_version, &d.package_version)
        && m != p
    {
        details.push(format!(
            "module version {m} differs from package version {p}"
        ));
        verdict = Verdict::Fail;
    }
    if let Some(want) = &expect.driver_branch
        && d.branch.as_deref() != Some(want.as_str())
    {
        details.push(format!("expected branch {want}"));
        verdict = Verdict::Fail;
    }
    let flavour = match d.flavour {
        ModuleFlavour::Open => "open modules",
        ModuleFlavour::Proprietary => "proprietary module",
        ModuleFlavour::Unknown => "module flavour unknown",
    };
    Ok(Check::new(
        CheckId::Driver,
        verdict,
        format!("NVIDIA {version} ({flavour})"),
        details,
    ))
}
