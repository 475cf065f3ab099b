//! What [`verify`](crate::verify()) is asked ([`Expectations`]) and what it answers
//! ([`VerifyReport`], a list of [`Check`]s, each decided by one rule named by its [`CheckId`]).

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::checks::CheckId;
use crate::disk::ImageFormat;
use crate::driver::DriverInfo;
use crate::facts::GuestFacts;
use crate::gpu_firmware::Resolution;
use crate::imagefs::Layout;
use crate::partition::TableKind;

/// What the image must satisfy (from the recipe's `verify` section or command-line flags).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Expectations {
    /// Required effective `NVreg_EnableGpuFirmware` (17 and `0x11` are the same).
    pub enable_gpu_firmware: Option<u32>,
    /// Required driver branch (`565`).
    pub driver_branch: Option<String>,
    /// When true a dirty image fails; when false hygiene findings are warnings.
    pub hygiene: bool,
    /// The user the build logged in as, which must not be left behind.
    pub build_user: String,
}

impl Default for Expectations {
    fn default() -> Self {
        Expectations {
            enable_gpu_firmware: None,
            driver_branch: None,
            hygiene: true,
            build_user: "imgbake".to_string(),
        }
    }
}

/// A check's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// As expected.
    Pass,
    /// Suspicious but not failing (conflicting settings, hygiene when not required).
    Warn,
    /// An expectation or a hard requirement is not met.
    Fail,
    /// Not applicable (no driver installed, no initrd).
    Skip,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Verdict::Pass => "PASS",
            Verdict::Warn => "WARN",
            Verdict::Fail => "FAIL",
            Verdict::Skip => "SKIP",
        })
    }
}

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    /// The rule that decided (serialised as its stable id: `gpu-firmware`,
    /// `hygiene/ssh-host-keys`).
    pub id: CheckId,
    /// The outcome.
    pub verdict: Verdict,
    /// One line for people.
    pub summary: String,
    /// Supporting facts.
    pub details: Vec<String>,
}

impl Check {
    pub(crate) fn new(
        id: CheckId,
        verdict: Verdict,
        summary: impl Into<String>,
        details: Vec<String>,
    ) -> Check {
        Check {
            id,
            verdict,
            summary: summary.into(),
            details,
        }
    }
}

/// `NVreg_EnableGpuFirmware` as found in the image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GpuFirmwareReport {
    /// Settings on the root filesystem and kernel command line, and the value they give.
    pub root: Resolution,
    /// The effective value explained, e.g. `18 = driver default: default policy + CPU fallback`.
    pub decoded: String,
    /// The same resolution inside the initrd, when it contains nvidia modules.
    pub initramfs: Option<Resolution>,
}

/// The result of [`verify`]: facts, every check and the overall verdict.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    /// The image verified.
    pub image: PathBuf,
    /// Its format.
    pub format: ImageFormat,
    /// Virtual disk size in bytes.
    pub virtual_size: u64,
    /// Partitions and filesystems.
    pub layout: Layout,
    /// `PRETTY_NAME` from os-release.
    pub os: Option<String>,
    /// The kernel the image boots.
    pub kernel: Option<String>,
    /// What was expected.
    pub expectations: Expectations,
    /// `NVreg_EnableGpuFirmware` details.
    pub gpu_firmware: GpuFirmwareReport,
    /// NVIDIA driver details.
    pub driver: DriverInfo,
    /// Every check, in a fixed order.
    pub checks: Vec<Check>,
    /// True when no check failed.
    pub passed: bool,
    /// Everything read from the guest (for the manifest and API payload).
    #[serde(skip)]
    pub facts: GuestFacts,
}

impl VerifyReport {
    /// A check by id: a [`CheckId`] or its string form (`"hygiene/machine-id"`).
    pub fn check<I: PartialEq<CheckId>>(&self, id: I) -> Option<&Check> {
        self.checks.iter().find(|c| id == c.id)
    }
}

fn human_size(bytes: u64) -> String {
    const GIB: f64 = (1u64 << 30) as f64;
    const MIB: f64 = (1u64 << 20) as f64;
    if bytes as f64 >= GIB {
        format!("{:.1} GiB", bytes as f64 / GIB)
    } else {
        format!("{:.0} MiB", bytes as f64 / MIB)
    }
}

impl fmt::Display for VerifyReport {
    /// The readable table `imgbake verify` prints.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let l = &self.layout;
        let boot = l
            .boot
            .as_ref()
            .map(|b| format!(", /boot p{} {}", b.partition, b.label))
            .unwrap_or_default();
        let table = match l.table {
            TableKind::Gpt => "GPT",
            TableKind::Mbr => "MBR",
            TableKind::None => "no partition table",
        };
        writeln!(
            f,
            "image   {} ({}, {}, {table}; root p{} {}{boot})",
            self.image.display(),
            self.format,
            human_size(self.virtual_size),
            l.root.partition,
            l.root.label
        )?;
        writeln!(
            f,
            "os      {}, kernel {}",
            self.os.as_deref().unwrap_or("unknown"),
            self.kernel.as_deref().unwrap_or("none")
        )?;
        writeln!(f)?;
        let width = self
            .checks
            .iter()
            .map(|c| c.id.as_str().len())
            .max()
            .unwrap_or(5)
            .max(5);
        writeln!(f, "{:width$}  VERDICT  RESULT", "CHECK")?;
        for c in &self.checks {
            writeln!(
                f,
                "{:width$}  {:7}  {}",
                c.id,
                c.verdict.to_string(),
                c.summary
            )?;
            for d in &c.details {
                writeln!(f, "{:width$}           - {d}", "")?;
            }
        }
        writeln!(f)?;
        write!(f, "overall {}", if self.passed { "PASS" } else { "FAIL" })
    }
}
