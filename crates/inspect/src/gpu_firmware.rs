//! `NVreg_EnableGpuFirmware`: decoding (DESIGN.md §5) and resolving the effective value from
//! every place it can be set.

use serde::Serialize;

use crate::modprobe::{self, ParamOccurrence};

/// The driver's value when the option is not set: default policy + CPU fallback.
pub const DRIVER_DEFAULT: u32 = 18;
/// The module parameter's name.
pub const PARAM: &str = "NVreg_EnableGpuFirmware";
/// The string parameter that can carry `EnableGpuFirmware=…` among other registry keys.
pub const REGISTRY_PARAM: &str = "NVreg_RegistryDwords";
/// The key inside `NVreg_RegistryDwords`.
pub const REGISTRY_KEY: &str = "EnableGpuFirmware";

/// Explains a value: bits 0–3 are the mode, bit 4 the CPU fallback, bits 5–7 reserved policy.
///
/// ```
/// assert_eq!(inspect::describe_gpu_firmware(1), "1 = GSP forced on, no fallback");
/// assert_eq!(
///     inspect::describe_gpu_firmware(18),
///     "18 = driver default: default policy + CPU fallback"
/// );
/// ```
pub fn describe(value: u32) -> String {
    let mode = value & 0xf;
    let fallback = value & 0x10 != 0;
    let meaning = match (mode, fallback) {
        (0, false) => "GSP off, driver runs on the CPU (proprietary nvidia.ko only; ignored by the open modules; impossible on Blackwell)".to_string(),
        (0, true) => "GSP off (fallback bit set, nothing to fall back from)".to_string(),
        (1, false) => "GSP forced on, no fallback".to_string(),
        (1, true) => "GSP forced on, CPU fallback if the firmware is missing".to_string(),
        (2, false) => "driver default policy, no fallback".to_string(),
        (2, true) if value == DRIVER_DEFAULT => "driver default: default policy + CPU fallback".to_string(),
        (2, true) => "default policy + CPU fallback".to_string(),
        (m, false) => format!("mode {m} acts like 2: driver default policy, no fallback"),
        (m, true) => format!("mode {m} acts like 2: default policy + CPU fallback"),
    };
    let extra = value & !0x1f;
    if extra != 0 {
        format!("{value} = {meaning}; unknown bits {extra:#x} ignored")
    } else {
        format!("{value} = {meaning}")
    }
}

/// How the option reached the driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Via {
    /// `NVreg_EnableGpuFirmware=…` itself.
    Parameter,
    /// An `EnableGpuFirmware=…` entry inside `NVreg_RegistryDwords`.
    RegistryDwords,
}

/// What became of one setting.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "status", content = "reason")]
pub enum SettingStatus {
    /// This is the value the driver uses.
    Effective,
    /// A later setting replaces it.
    Overridden(String),
    /// Its file is never read (a same-named file in a higher-priority directory wins).
    Shadowed(String),
    /// The driver does not use it.
    Ignored(String),
}

/// One place that sets the option.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Setting {
    /// `file:line`, or which command line.
    pub location: String,
    /// Parameter itself or RegistryDwords entry.
    pub via: Via,
    /// The value as written (`0x11`).
    pub raw: String,
    /// The value as the kernel parses it; `None` when it would reject it.
    pub value: Option<u32>,
    /// What became of it.
    #[serde(flatten)]
    pub status: SettingStatus,
}

/// The resolved option.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Resolution {
    /// Every setting found, in the order the driver sees them.
    pub settings: Vec<Setting>,
    /// The value the driver gets: the last parameter, else the default (18).
    /// `None` when the last setting is not a number (the module then fails to load).
    pub effective: Option<u32>,
    /// Where the effective value comes from (`driver default (not set)` when unset).
    pub source: String,
    /// Settings that disagree, as sentences.
    pub conflicts: Vec<String>,
}

/// One ordered input: a parameter occurrence and whether its file is shadowed.
#[derive(Debug, Clone)]
pub(crate) struct Input {
    pub occurrence: ParamOccurrence,
    pub shadowed_by: Option<String>,
}

/// Resolves the effective value from occurrences in the order the driver receives them
/// (modprobe.d files in kmod order, then the kernel command line).
///
/// A `NVreg_RegistryDwords` entry never decides the value: the driver parses RegistryDwords
/// first and then writes every `NVreg_*` parameter, `NVreg_EnableGpuFirmware` included
/// (default 18), over it (`os_registry_init` in NVIDIA's `os-registry.c`).
pub(crate) fn resolve(inputs: &[Input]) -> Resolution {
    let mut settings = Vec::new();
    let mut last_param: Option<usize> = None;
    let mut last_registry: Option<usize> = None;
    for input in inputs {
        let occ = &input.occurrence;
        let name = modprobe::norm(&occ.param);
        let value_raw = occ.value.clone().unwrap_or_default();
        let status = match &input.shadowed_by {
            Some(by) => SettingStatus::Shadowed(format!("{by} has the same name and wins")),
            None => SettingStatus::Effective,
        };
        if name == modprobe::norm(PARAM) {
            if input.shadowed_by.is_none() {
                last_param = Some(settings.len());
            }
            settings.push(Setting {
                location: occ.location.clone(),
                via: Via::Parameter,
                value: modprobe::parse_uint(&value_raw),
                raw: value_raw,
                status,
            });
        } else if name == modprobe::norm(REGISTRY_PARAM) {
            // The whole string is one parameter: a later RegistryDwords replaces an earlier one.
            for entry in value_raw.split(';') {
                let Some((k, v)) = entry.split_once('=') else {
                    continue;
                };
                if k.trim() != REGISTRY_KEY {
                    continue;
                }
                if input.shadowed_by.is_none() {
                    last_registry = Some(settings.len());
                }
                settings.push(Setting {
                    location: occ.location.clone(),
                    via: Via::RegistryDwords,
                    value: modprobe::parse_uint(v),
                    raw: v.trim().to_string(),
                    status: status.clone(),
                });
            }
        }
    }
    let (effective, source) = match last_param {
        Some(i) => (settings[i].value, settings[i].location.clone()),
        None => (Some(DRIVER_DEFAULT), "driver default (not set)".to_string()),
    };
    for (i, s) in settings.iter_mut().enumerate() {
        if s.status != SettingStatus::Effective {
            continue;
        }
        s.status = match s.via {
            Via::Parameter if Some(i) == last_param => SettingStatus::Effective,
            Via::Parameter => {
                SettingStatus::Overridden(format!("a later setting at {source} wins"))
            }
            Via::RegistryDwords if Some(i) != last_registry => SettingStatus::Overridden(
                "a later NVreg_RegistryDwords replaces this whole string".into(),
            ),
            Via::RegistryDwords => SettingStatus::Ignored(format!(
                "the driver writes {PARAM} ({}) over RegistryDwords entries",
                if last_param.is_some() {
                    "as set"
                } else {
                    "default 18"
                }
            )),
        };
    }
    let mut conflicts = Vec::new();
    let live: Vec<&Setting> = settings
        .iter()
        .filter(|s| !matches!(s.status, SettingStatus::Shadowed(_)))
        .collect();
    for s in &live {
        if s.status != SettingStatus::Effective && s.value != effective {
            conflicts.push(format!(
                "{} sets {} but {} gives {}",
                s.location,
                s.raw,
                source,
                effective.map_or("an invalid value".to_string(), |v| v.to_string())
            ));
        }
    }
    Resolution {
        settings,
        effective,
        source,
        conflicts,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn occ(location: &str, param: &str, value: &str) -> Input {
        Input {
            occurrence: ParamOccurrence {
                location: location.into(),
                param: param.into(),
                value: Some(value.into()),
            },
            shadowed_by: None,
        }
    }

    #[test]
    fn decode_table() {
        let cases = [
            (
                0,
                "0 = GSP off, driver runs on the CPU (proprietary nvidia.ko only; ignored by the open modules; impossible on Blackwell)",
            ),
            (1, "1 = GSP forced on, no fallback"),
            (2, "2 = driver default policy, no fallback"),
            (
                17,
                "17 = GSP forced on, CPU fallback if the firmware is missing",
            ),
            (18, "18 = driver default: default policy + CPU fallback"),
            (
                5,
                "5 = mode 5 acts like 2: driver default policy, no fallback",
            ),
            (
                16,
                "16 = GSP off (fallback bit set, nothing to fall back from)",
            ),
            (
                0x41,
                "65 = GSP forced on, no fallback; unknown bits 0x40 ignored",
            ),
        ];
        for (v, text) in cases {
            assert_eq!(describe(v), text, "value {v}");
        }
    }

    #[test]
    fn unset_is_driver_default() {
        let r = resolve(&[]);
        assert_eq!(r.effective, Some(18));
        assert_eq!(r.source, "driver default (not set)");
        assert!(r.conflicts.is_empty());
    }

    #[test]
    fn last_parameter_wins_and_conflict_is_reported() {
        let r = resolve(&[
            occ("/etc/modprobe.d/a.conf:1", PARAM, "1"),
            occ("/etc/modprobe.d/b.conf:1", PARAM, "0"),
        ]);
        assert_eq!(r.effective, Some(0));
        assert_eq!(r.source, "/etc/modprobe.d/b.conf:1");
        assert_eq!(
            r.conflicts,
            ["/etc/modprobe.d/a.conf:1 sets 1 but /etc/modprobe.d/b.conf:1 gives 0"]
        );
    }

    #[test]
    fn registry_dwords_is_overwritten_by_the_parameter() {
        let r = resolve(&[occ(
            "/etc/modprobe.d/a.conf:1",
            REGISTRY_PARAM,
            "RmFoo=1;EnableGpuFirmware=0x1",
        )]);
        assert_eq!(r.effective, Some(18));
        assert_eq!(r.settings[0].value, Some(1));
        assert!(matches!(r.settings[0].status, SettingStatus::Ignored(_)));
        assert_eq!(r.conflicts.len(), 1);
    }

    #[test]
    fn invalid_value_has_no_effective_value() {
        let r = resolve(&[occ("x:1", PARAM, "on")]);
        assert_eq!(r.effective, None);
    }
}
