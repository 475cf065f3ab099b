//! `gpu-firmware-conflicts`: settings of the option that disagree with each other (a later
//! file overriding an earlier one, a grub.cfg not regenerated after `/etc/default/grub`).
//! A warning, never a failure: the effective value is judged by `gpu-firmware`.

use super::{CheckId, Context};
use crate::Result;
use crate::report::{Check, Verdict};

pub(crate) fn run(cx: &Context<'_>) -> Result<Check> {
    let mut conflicts = cx.settings.root.conflicts.clone();
    conflicts.extend(cx.settings.grub_notes.iter().cloned());
    Ok(if conflicts.is_empty() {
        Check::new(
            CheckId::GpuFirmwareConflicts,
            Verdict::Pass,
            "all settings agree",
            Vec::new(),
        )
    } else {
        Check::new(
            CheckId::GpuFirmwareConflicts,
            Verdict::Warn,
            format!("{} disagreement(s)", conflicts.len()),
            conflicts,
        )
    })
}
