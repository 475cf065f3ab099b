//! Choosing the accelerator: KVM when `/dev/kvm` is usable, TCG otherwise, and why.

use std::fmt;
use std::fs::OpenOptions;
use std::path::Path;

/// What the recipe or the command line asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AccelChoice {
    /// KVM if `/dev/kvm` opens read-write, else TCG.
    #[default]
    Auto,
    /// KVM, no matter what (fails if KVM does not work).
    Kvm,
    /// TCG software emulation.
    Tcg,
}

/// The accelerator QEMU actually runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// Hardware virtualisation through `/dev/kvm`.
    Kvm,
    /// QEMU's software emulation (`-accel tcg,thread=multi,tb-size=128 -cpu max`).
    Tcg,
}

impl fmt::Display for Accel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        })
    }
}

impl Accel {
    /// Whether QEMU's guest RAM may be transparent huge pages on the host. Under KVM yes: the
    /// guest's memory is then mapped in 2 MiB pages by the CPU too. Under TCG no: every guest
    /// access goes through TCG's own TLB either way (a cold build of the bench recipe took the
    /// same time with and without them), while the first touch of a huge page is slow on a
    /// host that is itself a VM with free page reporting (a VM-state load 2.2 s instead of
    /// 0.6 s; see `child::SpawnOptions`).
    pub fn transparent_huge_pages(self) -> bool {
        match self {
            Accel::Kvm => true,
            Accel::Tcg => false,
        }
    }
}

/// Why that accelerator was chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccelReason {
    /// The user asked for it explicitly.
    Requested,
    /// `auto`: `/dev/kvm` opens read-write.
    KvmUsable,
    /// `auto`: `/dev/kvm` cannot be opened read-write (the text says why).
    KvmUnavailable(String),
    /// `auto`: KVM was tried first and failed for this guest, so the VM was restarted under TCG.
    KvmFailed(String),
}

/// The accelerator in use and why; `Display` gives a sentence for the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccelDecision {
    /// The accelerator.
    pub accel: Accel,
    /// Why.
    pub reason: AccelReason,
}

impl fmt::Display for AccelDecision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let accel = self.accel;
        match &self.reason {
            AccelReason::Requested => write!(f, "{accel} (requested)"),
            AccelReason::KvmUsable => write!(f, "{accel} (auto: /dev/kvm opens read-write)"),
            AccelReason::KvmUnavailable(why) => {
                write!(
                    f,
                    "{accel} (auto: /dev/kvm is not usable: {why}; this is slow)"
                )
            }
            AccelReason::KvmFailed(why) => {
                write!(
                    f,
                    "{accel} (auto: restarted under TCG because KVM failed: {why})"
                )
            }
        }
    }
}

/// The KVM device.
pub const KVM_DEVICE: &str = "/dev/kvm";
/// Where loaded kernel modules are listed.
pub const SYS_MODULE: &str = "/sys/module";

/// Why KVM from `kvm_pvm` does not count as usable.
pub const PVM_REASON: &str = "/dev/kvm comes from kvm_pvm, which runs only guest kernels built \
     for PVM (standard kernels stop with a KVM internal error)";

/// What provides `/dev/kvm`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvmBackend {
    /// `kvm_intel` or `kvm_amd`: hardware virtualisation.
    Hardware,
    /// `kvm_pvm` alone (nested "pagetable-based" KVM, as on these CI machines): only guest
    /// kernels built for PVM run; Ubuntu's and Debian's stop with "KVM internal error".
    Pvm,
    /// Neither is listed.
    Unknown,
}

/// Looks at the loaded modules in `sys_module` (normally [`SYS_MODULE`]).
pub fn kvm_backend(sys_module: &Path) -> KvmBackend {
    let has = |module: &str| sys_module.join(module).exists();
    if has("kvm_intel") || has("kvm_amd") {
        KvmBackend::Hardware
    } else if has("kvm_pvm") {
        KvmBackend::Pvm
    } else {
        KvmBackend::Unknown
    }
}

/// Decides the accelerator for `choice` on this machine (see [`decide_with`]).
pub fn decide(choice: AccelChoice) -> AccelDecision {
    decide_with(choice, Path::new(KVM_DEVICE), Path::new(SYS_MODULE))
}

/// Decides the accelerator for `choice`. `auto` uses KVM when `kvm_device` opens read-write
/// and is not provided by `kvm_pvm` alone (see [`KvmBackend::Pvm`]). Never fails: an unusable
/// KVM means TCG, with the reason.
pub fn decide_with(choice: AccelChoice, kvm_device: &Path, sys_module: &Path) -> AccelDecision {
    let decision = |accel, reason| AccelDecision { accel, reason };
    match choice {
        AccelChoice::Kvm => decision(Accel::Kvm, AccelReason::Requested),
        AccelChoice::Tcg => decision(Accel::Tcg, AccelReason::Requested),
        AccelChoice::Auto => match OpenOptions::new().read(true).write(true).open(kvm_device) {
            Err(err) => decision(
                Accel::Tcg,
                AccelReason::KvmUnavailable(format!("{}: {err}", kvm_device.display())),
            ),
            Ok(_) if kvm_backend(sys_module) == KvmBackend::Pvm => {
                decision(Accel::Tcg, AccelReason::KvmUnavailable(PVM_REASON.into()))
            }
            Ok(_) => decision(Accel::Kvm, AccelReason::KvmUsable),
        },
    }
}

/// True when QEMU's stderr shows a KVM failure (e.g. "failed to set MSR 0x10a", "KVM internal
/// error", "kvm_init_vcpu failed"), used to classify an early QEMU exit under KVM.
pub fn stderr_shows_kvm_failure(stderr: &str) -> bool {
    let lower = stderr.to_ascii_lowercase();
    lower.contains("kvm") || lower.contains("failed to set msr")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_modules() -> &'static Path {
        Path::new("/nonexistent/sys/module")
    }

    #[test]
    fn explicit_choices_are_requested() {
        let kvm = decide_with(
            AccelChoice::Kvm,
            Path::new("/nonexistent/kvm"),
            no_modules(),
        );
        assert_eq!(kvm.accel, Accel::Kvm);
        assert_eq!(kvm.reason, AccelReason::Requested);
        let tcg = decide_with(
            AccelChoice::Tcg,
            Path::new("/nonexistent/kvm"),
            no_modules(),
        );
        assert_eq!(tcg.accel, Accel::Tcg);
        assert_eq!(tcg.to_string(), "tcg (requested)");
    }

    #[test]
    fn auto_without_device_is_tcg_and_says_why() {
        let d = decide_with(
            AccelChoice::Auto,
            Path::new("/nonexistent/kvm"),
            no_modules(),
        );
        assert_eq!(d.accel, Accel::Tcg);
        let text = d.to_string();
        assert!(text.contains("/nonexistent/kvm"), "{text}");
        assert!(text.contains("No such file"), "{text}");
    }

    #[test]
    fn auto_with_read_write_device_is_kvm() {
        // Any file that opens read-write stands in for the device.
        let file = tempfile::NamedTempFile::new().unwrap();
        let modules = tempfile::tempdir().unwrap();
        std::fs::create_dir(modules.path().join("kvm_intel")).unwrap();
        let d = decide_with(AccelChoice::Auto, file.path(), modules.path());
        assert_eq!(d.accel, Accel::Kvm);
        assert_eq!(d.reason, AccelReason::KvmUsable);
        // Unknown backend (e.g. built-in module without parameters): trust the device.
        let d = decide_with(AccelChoice::Auto, file.path(), no_modules());
        assert_eq!(d.accel, Accel::Kvm);
    }

    #[test]
    fn auto_with_kvm_pvm_alone_is_tcg_and_says_why() {
        let file = tempfile::NamedTempFile::new().unwrap();
        let modules = tempfile::tempdir().unwrap();
        std::fs::create_dir(modules.path().join("kvm")).unwrap();
        std::fs::create_dir(modules.path().join("kvm_pvm")).unwrap();
        assert_eq!(kvm_backend(modules.path()), KvmBackend::Pvm);
        let d = decide_with(AccelChoice::Auto, file.path(), modules.path());
        assert_eq!(d.accel, Accel::Tcg);
        assert!(d.to_string().contains("kvm_pvm"), "{d}");
        // kvm_pvm next to a hardware module: the hardware one serves /dev/kvm.
        std::fs::create_dir(modules.path().join("kvm_amd")).unwrap();
        assert_eq!(kvm_backend(modules.path()), KvmBackend::Hardware);
    }

    #[test]
    fn kvm_failure_in_stderr() {
        assert!(stderr_shows_kvm_failure(
            "qemu-system-x86_64: error: failed to set MSR 0x10a to 0x2000c2b"
        ));
        assert!(stderr_shows_kvm_failure("KVM internal error. Suberror: 1"));
        assert!(!stderr_shows_kvm_failure(
            "Could not set up host forwarding rule"
        ));
    }
}
