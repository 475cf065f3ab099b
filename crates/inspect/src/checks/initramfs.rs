//! `initramfs`: when the initrd carries nvidia modules, the driver loads from there with the
//! initrd's own modprobe.d copy, so its value must equal the root filesystem's (else
//! `update-initramfs -u` was forgotten). Fails on an unreadable initrd; skipped without a
//! kernel or an initrd.

use super::gpu_firmware::setting_lines;
use super::{CheckId, Context};
use crate::Result;
use crate::gpu_firmware::Resolution;
use crate::report::{Check, Verdict};
use crate::settings::Initrd;

pub(crate) fn run(cx: &Context<'_>) -> Result<Check> {
    let id = CheckId::Initramfs;
    let (path, contents, inner) = match &cx.settings.initrd {
        Initrd::NoKernel => {
            return Ok(Check::new(
                id,
                Verdict::Skip,
                "no kernel installed",
                Vec::new(),
            ));
        }
        Initrd::Missing { path } => {
            return Ok(Check::new(
                id,
                Verdict::Skip,
                format!("{path} not found"),
                Vec::new(),
            ));
        }
        Initrd::Unreadable { path, error } => {
            return Ok(Check::new(
                id,
                Verdict::Fail,
                format!("cannot read {path}: {error}"),
                Vec::new(),
            ));
        }
        Initrd::Read {
            path,
            contents,
            resolution,
        } => (path, contents, resolution),
    };
    let mut details = vec![format!(
        "{} archive(s): {}",
        contents.segments,
        contents.compressions.join(" + ")
    )];
    let Some(inner) = inner else {
        let summary =
            format!("{path} has no nvidia modules; the driver loads from the root filesystem");
        return Ok(Check::new(id, Verdict::Pass, summary, details));
    };
    details.extend(
        contents
            .nvidia_modules
            .iter()
            .map(|m| format!("contains {m}")),
    );
    details.extend(setting_lines(inner));
    let root = &cx.settings.root;
    let verdict = if inner.effective == root.effective {
        Verdict::Pass
    } else {
        Verdict::Fail
    };
    let fmt_value = |r: &Resolution| {
        r.effective
            .map_or("an invalid value".to_string(), |v| v.to_string())
    };
    let summary = if verdict == Verdict::Pass {
        format!(
            "initrd has nvidia modules and gives the same value ({})",
            fmt_value(inner)
        )
    } else {
        format!(
            "initrd gives {} but the root filesystem gives {} (run update-initramfs -u)",
            fmt_value(inner),
            fmt_value(root)
        )
    };
    Ok(Check::new(id, verdict, summary, details))
}
