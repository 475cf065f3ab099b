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
    /// QEMU's software emulation (`-accel tcg,thread=multi -cpu max`).
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

/// Decides the accelerator for `choice`, probing `kvm_device` (normally [`KVM_DEVICE`]) for
/// `auto`. Never fails: a device that does not open means TCG.
pub fn decide(choice: AccelChoice, kvm_device: &Path) -> AccelDecision {
    match choice {
        AccelChoice::Kvm => AccelDecision {
            accel: Accel::Kvm,
            reason: AccelReason::Requested,
        },
        AccelChoice::Tcg => AccelDecision {
            accel: Accel::Tcg,
            reason: AccelReason::Requested,
        },
        AccelChoice::Auto => match OpenOptions::new().read(true).write(true).open(kvm_device) {
            Ok(_) => AccelDecision {
                accel: Accel::Kvm,
                reason: AccelReason::KvmUsable,
            },
            Err(err) => AccelDecision {
                accel: Accel::Tcg,
                reason: AccelReason::KvmUnavailable(format!("{}: {err}", kvm_device.display())),
            },
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

    #[test]
    fn explicit_choices_are_requested() {
        let kvm = decide(AccelChoice::Kvm, Path::new("/nonexistent/kvm"));
        assert_eq!(kvm.accel, Accel::Kvm);
        assert_eq!(kvm.reason, AccelReason::Requested);
        let tcg = decide(AccelChoice::Tcg, Path::new("/nonexistent/kvm"));
        assert_eq!(tcg.accel, Accel::Tcg);
        assert_eq!(tcg.to_string(), "tcg (requested)");
    }

    #[test]
    fn auto_without_device_is_tcg_and_says_why() {
        let d = decide(AccelChoice::Auto, Path::new("/nonexistent/kvm"));
        assert_eq!(d.accel, Accel::Tcg);
        let text = d.to_string();
        assert!(text.contains("/nonexistent/kvm"), "{text}");
        assert!(text.contains("No such file"), "{text}");
    }

    #[test]
    fn auto_with_read_write_device_is_kvm() {
        // Any file that opens read-write stands in for the device.
        let file = tempfile::NamedTempFile::new().unwrap();
        let d = decide(AccelChoice::Auto, file.path());
        assert_eq!(d.accel, Accel::Kvm);
        assert_eq!(d.reason, AccelReason::KvmUsable);
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
