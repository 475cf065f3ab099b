//! `driver/module`: every kernel the image can boot (`/boot/vmlinuz-*`) has an nvidia module
//! under `/lib/modules/<release>` (Debian's `nvidia-current.ko` or `nvidia.ko`, compressed or
//! not), built for that kernel (its `vermagic`). Fails naming the kernel otherwise: DKMS builds
//! only for kernels whose headers are installed, so a new kernel without
//! `linux-headers-<release>` boots without a GPU. Skipped when no driver is installed or expected.

use super::{CheckId, Context};
use crate::Result;
use crate::report::{Check, Verdict};

pub(crate) fn run(cx: &Context<'_>) -> Result<Check> {
    let id = CheckId::DriverModule;
    let d = &cx.image.driver;
    let wanted = !d.packages.is_empty()
        || cx.expect.driver_branch.is_some()
        || d.boot_kernels.iter().any(|k| k.module.is_some());
    if !wanted {
        return Ok(Check::new(
            id,
            Verdict::Skip,
            "no NVIDIA driver installed or expected",
            Vec::new(),
        ));
    }
    if d.boot_kernels.is_empty() {
        return Ok(Check::new(
            id,
            Verdict::Fail,
            "no kernel to boot: /boot has no vmlinuz-*",
            vec!["install a kernel (linux-image-…) and its headers, then rebuild the driver with DKMS".into()],
        ));
    }
    let mut details = Vec::new();
    let mut bad = Vec::new();
    for k in &d.boot_kernels {
        let which = if k.default { " (default)" } else { "" };
        let dir = format!("/lib/modules/{}", k.release);
        match &k.module {
            None => {
                bad.push(k.release.clone());
                details.push(format!(
                    "kernel {}{which}: no nvidia module under {dir} (nvidia-current.ko or nvidia.ko); \
                     fix: install linux-headers-{} and rebuild (dkms autoinstall -k {})",
                    k.release, k.release, k.release
                ));
            }
            Some(m) => {
                if let Some(why) = &m.unreadable {
                    bad.push(k.release.clone());
                    details.push(format!(
                        "kernel {}{which}: {} cannot be read ({why}); fix: rebuild it with DKMS",
                        k.release, m.path
                    ));
                    continue;
                }
                let built_for = m
                    .vermagic
                    .as_deref()
                    .and_then(|v| v.split_whitespace().next());
                match built_for {
                    Some(b) if b != k.release => {
                        bad.push(k.release.clone());
                        details.push(format!(
                            "kernel {}{which}: {} was built for kernel {b} (vermagic), the kernel refuses it; \
                             fix: install linux-headers-{} and rebuild (dkms autoinstall -k {})",
                            k.release, m.path, k.release, k.release
                        ));
                    }
                    _ => details.push(format!(
                        "kernel {}{which}: {} version {}",
                        k.release,
                        m.path,
                        m.version.as_deref().unwrap_or("?")
                    )),
                }
            }
        }
    }
    if let Some((file, name)) = &d.install_target {
        details.push(format!("{file}: `modprobe nvidia` loads {name}"));
    }
    Ok(if bad.is_empty() {
        Check::new(
            id,
            Verdict::Pass,
            format!(
                "nvidia module built for every boot kernel ({})",
                d.boot_kernels.len()
            ),
            details,
        )
    } else {
        Check::new(
            id,
            Verdict::Fail,
            format!("no usable nvidia module for kernel {}", bad.join(", ")),
            details,
        )
    })
}
