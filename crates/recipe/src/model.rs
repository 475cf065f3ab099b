//! The resolved, typed recipe model.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde::Serialize;

use crate::units::ByteSize;
use digest::Sha256;

/// Where the base image (or its SHA256SUMS file) comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BaseLocation {
    /// An `http://` or `https://` URL.
    Http(url::Url),
    /// A local file: `file://` URLs and plain paths (relative ones resolved against the
    /// recipe's directory).
    File(PathBuf),
}

impl fmt::Display for BaseLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BaseLocation::Http(url) => write!(f, "{url}"),
            BaseLocation::File(path) => write!(f, "{}", path.display()),
        }
    }
}

/// How the base image is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Checksum {
    /// `sha256:<64 hex digits>` written in the recipe.
    Sha256(Sha256),
    /// `file:<location>`: a `SHA256SUMS` file listing the image's file name.
    SumsFile(BaseLocation),
}

impl fmt::Display for Checksum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Checksum::Sha256(digest) => write!(f, "sha256:{digest}"),
            Checksum::SumsFile(location) => write!(f, "file:{location}"),
        }
    }
}

/// The base image: where it is and how to check it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Base {
    /// Where the image is.
    pub location: BaseLocation,
    /// How to check it.
    pub checksum: Checksum,
}

macro_rules! keyword_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
        pub enum $name {
            $($(#[$vmeta])* #[serde(rename = $text)] $variant),+
        }

        impl $name {
            /// Every accepted spelling, in declaration order.
            pub const KEYWORDS: &'static [&'static str] = &[$($text),+];

            /// The recipe spelling of this value.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = ();
            /// Case-insensitive.
            fn from_str(s: &str) -> Result<Self, ()> {
                $(if s.eq_ignore_ascii_case($text) { return Ok($name::$variant); })+
                Err(())
            }
        }
    };
}

keyword_enum!(
    /// The guest's firmware.
    Firmware {
        /// SeaBIOS (legacy boot from the BIOS boot partition).
        Bios = "bios",
        /// OVMF (UEFI boot from the ESP).
        Uefi = "uefi",
    }
);

keyword_enum!(
    /// Which accelerator to ask QEMU for.
    AccelChoice {
        /// KVM when it is usable, else TCG.
        Auto = "auto",
        /// KVM only; fail if it is unusable.
        Kvm = "kvm",
        /// TCG (software emulation) only.
        Tcg = "tcg",
    }
);

keyword_enum!(
    /// An output format of the export stage.
    ExportFormat {
        /// Sparse RAW (always produced; it is what gets verified and uploaded).
        Raw = "raw",
        /// Compressed qcow2, in addition to RAW.
        Qcow2 = "qcow2",
    }
);

keyword_enum!(
    /// How the image may be run (Nscale region API `virtualization`).
    Virtualization {
        /// In a virtual machine.
        Virtualized = "virtualized",
        /// On bare metal.
        Baremetal = "baremetal",
        /// Either.
        Any = "any",
    }
);

keyword_enum!(
    /// GPU vendor (Nscale region API `gpu.vendor`).
    GpuVendor {
        /// NVIDIA.
        Nvidia = "NVIDIA",
        /// AMD.
        Amd = "AMD",
    }
);

/// The build VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmSpec {
    /// Virtual CPUs (default 2).
    pub cpus: u32,
    /// Guest memory (default 4G; a whole number of MiB).
    pub memory: ByteSize,
    /// Size the disk is grown to before boot, and the size of the exported RAW.
    pub disk_size: ByteSize,
    /// Firmware (default `bios`).
    pub firmware: Firmware,
    /// Accelerator (default `auto`).
    pub accel: AccelChoice,
    /// QEMU machine type (default [`VmSpec::DEFAULT_MACHINE`]).
    pub machine: String,
    /// How long to wait for SSH and cloud-init after each boot (default 10m: TCG is slow).
    pub boot_timeout: Duration,
}

impl VmSpec {
    /// The machine type used when the recipe names none.
    pub const DEFAULT_MACHINE: &'static str = "q35";
    /// Default vCPUs.
    pub const DEFAULT_CPUS: u32 = 2;
    /// Default memory.
    pub const DEFAULT_MEMORY: ByteSize = ByteSize::gib(4);
    /// Default boot timeout.
    pub const DEFAULT_BOOT_TIMEOUT: Duration = Duration::from_secs(10 * 60);
}

/// A step id: the two-digit prefix of the script's file name (`04` in `04-nvidia-driver.sh`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StepId(u8);

impl StepId {
    /// The id as a number (0–99).
    pub fn get(self) -> u8 {
        self.0
    }

    /// Reads the id from a script file name: two ASCII digits then `-`.
    pub fn from_file_name(name: &str) -> Option<StepId> {
        let bytes = name.as_bytes();
        match bytes {
            [a, b, b'-', ..] if a.is_ascii_digit() && b.is_ascii_digit() => {
                Some(StepId((a - b'0') * 10 + (b - b'0')))
            }
            _ => None,
        }
    }
}

impl fmt::Display for StepId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02}", self.0)
    }
}

impl FromStr for StepId {
    type Err = crate::Error;
    /// Accepts `4` or `04` (as typed after `--resume-from`), 0–99.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || crate::Error::BadStepId {
            input: s.to_owned(),
        };
        if s.is_empty() || s.len() > 2 || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        s.parse::<u8>().map(StepId).map_err(|_| bad())
    }
}

impl Serialize for StepId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// One ordered shell step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// The id from the file-name prefix.
    pub id: StepId,
    /// The file stem, e.g. `04-nvidia-driver`.
    pub name: String,
    /// The script, resolved relative to the recipe file.
    pub script: PathBuf,
    /// The script's bytes, read at load time (what runs and what the checkpoint key covers).
    pub contents: Vec<u8>,
    /// Reboot the guest after the step succeeds (and wait for it to come back).
    pub reboot: bool,
    /// Give up on the step after this long (default 30m).
    pub timeout: Duration,
    /// Extra environment for this step only (after `{{var}}` substitution).
    pub env: BTreeMap<String, String>,
    /// How many times to re-run the step after a failure (default 0).
    pub retries: u32,
}

impl Step {
    /// Default step timeout.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30 * 60);
    /// Most retries a step may ask for.
    pub const MAX_RETRIES: u32 = 10;

    /// SHA-256 of the script's bytes.
    pub fn digest(&self) -> Sha256 {
        Sha256::of(&self.contents)
    }
}

/// What to export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportSpec {
    /// Output formats, in recipe order (always contains [`ExportFormat::Raw`]).
    pub formats: Vec<ExportFormat>,
}

impl Default for ExportSpec {
    fn default() -> Self {
        ExportSpec {
            formats: vec![ExportFormat::Raw],
        }
    }
}

/// What the exported image must show when verified offline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifySpec {
    /// NVIDIA expectations; `None` means the image is not checked for a driver.
    pub nvidia: Option<NvidiaExpect>,
    /// Check image hygiene (no host keys, machine-id, cloud-init state, build user…). Default true.
    pub hygiene: bool,
}

impl Default for VerifySpec {
    fn default() -> Self {
        VerifySpec {
            nvidia: None,
            hygiene: true,
        }
    }
}

/// NVIDIA expectations for `imgbake verify`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NvidiaExpect {
    /// Expected effective `NVreg_EnableGpuFirmware` value (decimal or `0x` hex in the recipe).
    pub enable_gpu_firmware: Option<u32>,
    /// Expected driver branch, e.g. `565` (the installed version must start with `565.`).
    pub driver_branch: Option<String>,
}

/// Facts for the Nscale region API payload that cannot be read from the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PayloadSpec {
    /// `metadata.name` (default: the recipe's name).
    pub name: String,
    /// `spec.virtualization` (default `virtualized`).
    pub virtualization: Virtualization,
    /// `spec.gpu` vendor and models; `None` for images without GPU support.
    pub gpu: Option<GpuSpec>,
}

/// The GPUs an image is meant for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuSpec {
    /// Vendor.
    pub vendor: GpuVendor,
    /// Model names, e.g. `H100` (never empty).
    pub models: Vec<String>,
}
