//! The checks of [`verify`](crate::verify()): one file per rule, each with its [`CheckId`].
//!
//! Every check is a function `run(&Context) -> Result<Check>` over what was read from the
//! image ([`Context`]); [`ALL`] lists them in the order the report shows them. To add a rule:
//! a variant of [`CheckId`] (its id string is part of the JSON report and of `imgbake verify`'s
//! output, so it never changes), a file here, and a line in [`ALL`].

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::Result;
use crate::image::Image;
use crate::report::{Check, Expectations};
use crate::settings::GpuFirmwareSettings;

mod clean_unmount;
mod container_runtime;
mod driver;
mod driver_flavour;
mod driver_module;
mod firmware_files;
mod gpu_firmware;
mod gpu_firmware_conflicts;
mod hygiene;
mod initramfs;

pub(crate) use gpu_firmware::decoded as decoded_gpu_firmware;

/// Which rule decided a [`Check`]. Serialised (and parsed) as its stable id, e.g.
/// `gpu-firmware` or `hygiene/machine-id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum CheckId {
    /// The effective `NVreg_EnableGpuFirmware` against the expected value.
    GpuFirmware,
    /// Settings of the option that disagree with each other.
    GpuFirmwareConflicts,
    /// The installed NVIDIA driver: module, packages, branch.
    Driver,
    /// An nvidia module built for every kernel the image can boot.
    DriverModule,
    /// The module flavour the GPU models need (Blackwell: open).
    DriverFlavour,
    /// The GSP firmware files for the driver's exact version.
    FirmwareFiles,
    /// The initrd's copy of the option agrees with the root filesystem's.
    Initramfs,
    /// containerd's default runtime is `nvidia` when the Container Toolkit is installed.
    ContainerRuntime,
    /// The root (and `/boot`) filesystem was cleanly unmounted.
    FilesystemsClean,
    /// No SSH host keys left in the image.
    HygieneSshHostKeys,
    /// No machine-id set.
    HygieneMachineId,
    /// No cloud-init instance state.
    HygieneCloudInitInstance,
    /// No build user left.
    HygieneBuildUser,
    /// No `authorized_keys` left.
    HygieneAuthorizedKeys,
    /// No cloud-init logs of the build.
    HygieneBuildLogs,
    /// Nothing under `/var/lib/imgbake`.
    HygieneBuildState,
    /// No build hostname in `/etc/hosts`.
    HygieneHosts,
    /// No module-signing private key.
    HygieneSigningKeys,
}

impl CheckId {
    /// Every id, in report order.
    pub const ALL: [CheckId; 18] = [
        CheckId::GpuFirmware,
        CheckId::GpuFirmwareConflicts,
        CheckId::Driver,
        CheckId::DriverModule,
        CheckId::DriverFlavour,
        CheckId::FirmwareFiles,
        CheckId::Initramfs,
        CheckId::ContainerRuntime,
        CheckId::FilesystemsClean,
        CheckId::HygieneSshHostKeys,
        CheckId::HygieneMachineId,
        CheckId::HygieneCloudInitInstance,
        CheckId::HygieneBuildUser,
        CheckId::HygieneAuthorizedKeys,
        CheckId::HygieneBuildLogs,
        CheckId::HygieneBuildState,
        CheckId::HygieneHosts,
        CheckId::HygieneSigningKeys,
    ];

    /// The stable id.
    pub const fn as_str(self) -> &'static str {
        match self {
            CheckId::GpuFirmware => "gpu-firmware",
            CheckId::GpuFirmwareConflicts => "gpu-firmware-conflicts",
            CheckId::Driver => "driver",
            CheckId::DriverModule => "driver/module",
            CheckId::DriverFlavour => "driver/flavour",
            CheckId::FirmwareFiles => "firmware-files",
            CheckId::Initramfs => "initramfs",
            CheckId::ContainerRuntime => "container-runtime",
            CheckId::FilesystemsClean => "filesystems-clean",
            CheckId::HygieneSshHostKeys => "hygiene/ssh-host-keys",
            CheckId::HygieneMachineId => "hygiene/machine-id",
            CheckId::HygieneCloudInitInstance => "hygiene/cloud-init-instance",
            CheckId::HygieneBuildUser => "hygiene/build-user",
            CheckId::HygieneAuthorizedKeys => "hygiene/authorized-keys",
            CheckId::HygieneBuildLogs => "hygiene/build-logs",
            CheckId::HygieneBuildState => "hygiene/build-state",
            CheckId::HygieneHosts => "hygiene/hosts",
            CheckId::HygieneSigningKeys => "hygiene/signing-keys",
        }
    }
}

impl fmt::Display for CheckId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `pad` so the report's column widths apply.
        f.pad(self.as_str())
    }
}

/// A string that names no check.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown check `{0}`")]
pub struct UnknownCheck(pub String);

impl FromStr for CheckId {
    type Err = UnknownCheck;
    fn from_str(s: &str) -> std::result::Result<CheckId, UnknownCheck> {
        CheckId::ALL
            .into_iter()
            .find(|id| id.as_str() == s)
            .ok_or_else(|| UnknownCheck(s.to_string()))
    }
}

impl PartialEq<CheckId> for str {
    fn eq(&self, other: &CheckId) -> bool {
        self == other.as_str()
    }
}

impl PartialEq<CheckId> for &str {
    fn eq(&self, other: &CheckId) -> bool {
        *self == other.as_str()
    }
}

impl Serialize for CheckId {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for CheckId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<CheckId, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// What a check looks at: the image read once, the option's settings, the expectations.
pub(crate) struct Context<'a> {
    pub image: &'a Image,
    pub settings: &'a GpuFirmwareSettings,
    pub expect: &'a Expectations,
}

type CheckFn = fn(&Context<'_>) -> Result<Check>;

/// Every check, in report order (the same order as [`CheckId::ALL`]).
const ALL: [(CheckId, CheckFn); 18] = [
    (CheckId::GpuFirmware, gpu_firmware::run),
    (CheckId::GpuFirmwareConflicts, gpu_firmware_conflicts::run),
    (CheckId::Driver, driver::run),
    (CheckId::DriverModule, driver_module::run),
    (CheckId::DriverFlavour, driver_flavour::run),
    (CheckId::FirmwareFiles, firmware_files::run),
    (CheckId::Initramfs, initramfs::run),
    (CheckId::ContainerRuntime, container_runtime::run),
    (CheckId::FilesystemsClean, clean_unmount::run),
    (CheckId::HygieneSshHostKeys, hygiene::ssh_host_keys::run),
    (CheckId::HygieneMachineId, hygiene::machine_id::run),
    (
        CheckId::HygieneCloudInitInstance,
        hygiene::cloud_init_instance::run,
    ),
    (CheckId::HygieneBuildUser, hygiene::build_user::run),
    (
        CheckId::HygieneAuthorizedKeys,
        hygiene::authorized_keys::run,
    ),
    (CheckId::HygieneBuildLogs, hygiene::build_logs::run),
    (CheckId::HygieneBuildState, hygiene::build_state::run),
    (CheckId::HygieneHosts, hygiene::hosts::run),
    (CheckId::HygieneSigningKeys, hygiene::signing_keys::run),
];

/// Runs every check.
pub(crate) fn run_all(cx: &Context<'_>) -> Result<Vec<Check>> {
    ALL.iter()
        .map(|(id, run)| {
            let check = run(cx)?;
            debug_assert_eq!(check.id, *id, "a check reports under its own id");
            Ok(check)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_follow_report_order() {
        for (i, id) in CheckId::ALL.into_iter().enumerate() {
            assert_eq!(id.as_str().parse::<CheckId>().unwrap(), id);
            assert_eq!(ALL[i].0, id);
            assert_eq!(
                serde_json::to_value(id).unwrap(),
                serde_json::json!(id.as_str())
            );
        }
        assert!("hygiene".parse::<CheckId>().is_err());
        assert!("gpu-firmware" == CheckId::GpuFirmware);
        assert_eq!(format!("{:8}|", CheckId::Driver), "driver  |");
    }
}
