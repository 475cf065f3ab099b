//! `imgbake verify --live`: the GSP state of a *running* NVIDIA driver, read from
//! `/proc/driver/nvidia` (or a directory laid out like `/proc`) and `nvidia-smi -q`, checked
//! against the expected `NVreg_EnableGpuFirmware` (decoded by [`crate::describe_gpu_firmware`]).
//!
//! The formats are the ones `kernel-open/nvidia/nv-procfs.c` prints: `version` starts with
//! `NVRM version: `, `params` has one `Name: value` line per parameter (strings quoted), and
//! each `gpus/<bdf>/information` has `Key: \t value` lines (`Model:`, `Bus Location:`,
//! `GPU Firmware:`).

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::driver::ModuleFlavour;
use crate::error::{Error, Result};
use crate::gpu_firmware::{self, Input};
use crate::modprobe::{self, ConfFile, ParamOccurrence};

/// What `verify --live` reads and expects.
#[derive(Debug, Clone)]
pub struct LiveOptions {
    /// A directory laid out like `/proc` (`/proc` on a GPU host).
    pub proc_dir: PathBuf,
    /// The root of the running system, for `/lib/firmware` and `/etc/modprobe.d` (`/`).
    pub root: PathBuf,
    /// The text of `nvidia-smi -q`, when available.
    pub nvidia_smi: Option<String>,
    /// The required `NVreg_EnableGpuFirmware`; `None` checks the GPUs against the requested value.
    pub expect_gpu_firmware: Option<u32>,
    /// The required driver branch (`565`): the loaded version must start with `565.`.
    pub expect_driver_branch: Option<String>,
}

/// One row's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LiveVerdict {
    /// As expected.
    Ok,
    /// The option is set but the driver does not use it (0 with the open module): not a failure.
    Ignored,
    /// Worth a look, not a failure.
    Warn,
    /// Not as expected.
    Fail,
}

impl fmt::Display for LiveVerdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `pad`, not `write_str`, so the table's `{:<9}` widths apply.
        f.pad(match self {
            LiveVerdict::Ok => "ok",
            LiveVerdict::Ignored => "ignored",
            LiveVerdict::Warn => "WARN",
            LiveVerdict::Fail => "FAIL",
        })
    }
}

/// GSP on or off on one GPU, as the driver reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum GspState {
    /// `GPU Firmware:` shows a version.
    On,
    /// `GPU Firmware: N/A` (firmware requested, GSP not running: the CPU fallback), or no
    /// `GPU Firmware:` line (nv-procfs.c prints it only when the driver returns a non-empty
    /// string, which it does only when it took the firmware path).
    Off,
}

impl fmt::Display for GspState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            GspState::On => "on",
            GspState::Off => "off",
        })
    }
}

/// The loaded module, from `<proc>/driver/nvidia/version`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LiveDriver {
    /// `565.57.01`.
    pub version: Option<String>,
    /// Open (`Open Kernel Module`) or proprietary.
    pub flavour: ModuleFlavour,
    /// The `NVRM version:` line as printed.
    pub nvrm: String,
}

/// One GPU, from `<proc>/driver/nvidia/gpus/<bdf>/information` and `nvidia-smi -q`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LiveGpu {
    /// `Bus Location:` (`0000:19:00.0`).
    pub bus: String,
    /// `Model:`.
    pub model: String,
    /// `GPU Firmware:` as printed (`565.57.01`, `N/A`), `None` without the line.
    pub firmware: Option<String>,
    /// `GSP Firmware Version` from `nvidia-smi -q` for this GPU.
    pub nvidia_smi_gsp: Option<String>,
    /// The value that applies to this GPU (global, or its `RegistryDwordsPerDevice` entry).
    pub requested: Option<u32>,
    /// GSP on or off.
    pub gsp: GspState,
    /// Against the expectation.
    pub verdict: LiveVerdict,
    /// Why.
    pub detail: String,
}

/// A host-wide check (firmware files, modprobe.d against params, the option itself).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LiveCheck {
    /// Short name.
    pub check: String,
    /// Outcome.
    pub verdict: LiveVerdict,
    /// What was found, and the fix on failure.
    pub detail: String,
}

/// The result of `verify --live`: `Display` is the table, `Serialize` the `--json` document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LiveReport {
    /// The directory read as `/proc`.
    pub proc_dir: PathBuf,
    /// The loaded module.
    pub driver: LiveDriver,
    /// `EnableGpuFirmware:` from params (the requested value).
    pub requested: Option<u32>,
    /// Its meaning.
    pub requested_decoded: Option<String>,
    /// `RegistryDwords:` from params.
    pub registry_dwords: String,
    /// `RegistryDwordsPerDevice:` from params.
    pub registry_dwords_per_device: String,
    /// The expectation checked.
    pub expected: Option<u32>,
    /// Host-wide checks.
    pub checks: Vec<LiveCheck>,
    /// One row per GPU.
    pub gpus: Vec<LiveGpu>,
    /// No row failed.
    pub passed: bool,
}

/// Reads the running driver's state and checks it. Blocking.
pub fn verify_live(opts: &LiveOptions) -> Result<LiveReport> {
    let nv = opts.proc_dir.join("driver/nvidia");
    let version_text = read(&nv.join("version"))?;
    let params_text = read(&nv.join("params"))?;
    let driver = parse_version(&version_text);
    let params = parse_params(&params_text);
    let requested = params
        .iter()
        .find(|(k, _)| k == "EnableGpuFirmware")
        .and_then(|(_, v)| modprobe::parse_uint(v));
    let string_param = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let registry_dwords = string_param("RegistryDwords");
    let per_device_text = string_param("RegistryDwordsPerDevice");
    // Reuse the offline resolver for the per-device string, so the `pci=` grammar is one code.
    let per_device = gpu_firmware::resolve(&[Input {
        occurrence: ParamOccurrence {
            location: "params:RegistryDwordsPerDevice".into(),
            param: gpu_firmware::PER_DEVICE_PARAM.into(),
            value: Some(per_device_text.clone()),
        },
        shadowed_by: None,
    }])
    .per_device;

    let smi = opts
        .nvidia_smi
        .as_deref()
        .map(parse_nvidia_smi)
        .unwrap_or_default();
    let open = driver.flavour == ModuleFlavour::Open;
    let mut gpus = Vec::new();
    for dir in gpu_dirs(&nv.join("gpus"))? {
        let info = parse_info(&read(&dir.join("information"))?);
        let field = |k: &str| info.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        let bus = field("Bus Location").unwrap_or_else(|| {
            dir.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        });
        let firmware = field("GPU Firmware");
        let gpu_requested = per_device
            .iter()
            .rev()
            .find(|d| same_device(&d.device, &bus))
            .map_or(requested, |d| d.value);
        let gsp = match firmware.as_deref() {
            Some("N/A") | None => GspState::Off,
            Some(_) => GspState::On,
        };
        let nvidia_smi_gsp = smi
            .iter()
            .find(|(b, _)| same_device(b, &bus))
            .map(|(_, v)| v.clone());
        let (verdict, detail) = judge_gpu(&GpuJudge {
            open,
            gsp,
            requested: gpu_requested,
            expected: opts.expect_gpu_firmware,
            smi: nvidia_smi_gsp.as_deref(),
            version: driver.version.as_deref(),
            firmware: firmware.as_deref(),
        });
        gpus.push(LiveGpu {
            bus,
            model: field("Model").unwrap_or_default(),
            firmware,
            nvidia_smi_gsp,
            requested: gpu_requested,
            gsp,
            verdict,
            detail,
        });
    }

    let mut checks = Vec::new();
    if let Some(want) = &opts.expect_driver_branch {
        let version = driver.version.as_deref().unwrap_or("?");
        let ok = version.split('.').next() == Some(want.as_str());
        checks.push(LiveCheck {
            check: "driver".into(),
            verdict: if ok {
                LiveVerdict::Ok
            } else {
                LiveVerdict::Fail
            },
            detail: format!("{version} loaded, branch {want} expected"),
        });
    }
    checks.push(option_check(open, requested, opts.expect_gpu_firmware));
    checks.push(firmware_check(&opts.root, &driver, requested, open)?);
    checks.push(modprobe_check(&opts.root, &opts.proc_dir, requested)?);
    if gpus.is_empty() {
        checks.push(LiveCheck {
            check: "gpus".into(),
            verdict: LiveVerdict::Fail,
            detail: "no GPU under driver/nvidia/gpus: the driver initialised none".into(),
        });
    }
    let passed = checks
        .iter()
        .map(|c| c.verdict)
        .chain(gpus.iter().map(|g| g.verdict))
        .all(|v| v != LiveVerdict::Fail);
    Ok(LiveReport {
        proc_dir: opts.proc_dir.clone(),
        driver,
        requested,
        requested_decoded: requested.map(gpu_firmware::describe),
        registry_dwords,
        registry_dwords_per_device: per_device_text,
        expected: opts.expect_gpu_firmware,
        checks,
        gpus,
        passed,
    })
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|source| Error::ReadLive {
        path: path.to_path_buf(),
        source,
    })
}

fn gpu_dirs(gpus: &Path) -> Result<Vec<PathBuf>> {
    let entries = match std::fs::read_dir(gpus) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(Error::ReadLive {
                path: gpus.to_path_buf(),
                source,
            });
        }
    };
    let mut dirs: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("information").is_file())
        .collect();
    dirs.sort();
    Ok(dirs)
}

/// Parses `NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  565.57.01  Release Build …`
/// or `NVRM version: NVIDIA UNIX x86_64 Kernel Module  565.57.01  Thu Oct 10 …`.
pub fn parse_version(text: &str) -> LiveDriver {
    let nvrm = text
        .lines()
        .find_map(|l| l.strip_prefix("NVRM version:"))
        .unwrap_or("")
        .trim()
        .to_string();
    let flavour = if nvrm.contains("Open Kernel Module") {
        ModuleFlavour::Open
    } else if nvrm.contains("Kernel Module") {
        ModuleFlavour::Proprietary
    } else {
        ModuleFlavour::Unknown
    };
    // The version is the first word after "Kernel Module[ for <arch>]" made of digits and dots.
    let version = nvrm
        .split_whitespace()
        .find(|w| w.contains('.') && w.chars().all(|c| c.is_ascii_digit() || c == '.'))
        .map(str::to_string);
    LiveDriver {
        version,
        flavour,
        nvrm,
    }
}

/// `Name: value` lines of `params`; quoted string values are unquoted.
fn parse_params(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| {
            let v = v.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(v);
            (k.trim().to_string(), v.to_string())
        })
        .collect()
}

/// `Key: \t value` lines of a GPU's `information`.
fn parse_info(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

/// `(bus id, GSP Firmware Version)` per `GPU 00000000:19:00.0` section of `nvidia-smi -q`.
fn parse_nvidia_smi(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut bus: Option<String> = None;
    for line in text.lines() {
        if let Some(b) = line.strip_prefix("GPU ") {
            bus = Some(b.trim().to_string());
        } else if let Some((k, v)) = line.split_once(':')
            && k.trim() == "GSP Firmware Version"
            && let Some(b) = &bus
        {
            out.push((b.clone(), v.trim().to_string()));
        }
    }
    out
}

/// Whether two PCI addresses name the same device: `0000:19:00.0`, `00000000:19:00.0`,
/// `19:00` (bus:slot, as `pci=` allows) and `0000:19:00` compare equal.
fn same_device(a: &str, b: &str) -> bool {
    fn parts(s: &str) -> Option<(u32, u32, u32, Option<u32>)> {
        let (rest, func) = match s.rsplit_once('.') {
            Some((r, f)) => (r, Some(u32::from_str_radix(f, 16).ok()?)),
            None => (s, None),
        };
        let p: Vec<&str> = rest.split(':').collect();
        let hex = |x: &str| u32::from_str_radix(x, 16).ok();
        match p.as_slice() {
            [bus, slot] => Some((0, hex(bus)?, hex(slot)?, func)),
            [dom, bus, slot] => Some((hex(dom)?, hex(bus)?, hex(slot)?, func)),
            _ => None,
        }
    }
    match (parts(a.trim()), parts(b.trim())) {
        (Some((d1, b1, s1, f1)), Some((d2, b2, s2, f2))) => {
            d1 == d2 && b1 == b2 && s1 == s2 && (f1.is_none() || f2.is_none() || f1 == f2)
        }
        _ => false,
    }
}

struct GpuJudge<'a> {
    open: bool,
    gsp: GspState,
    requested: Option<u32>,
    expected: Option<u32>,
    smi: Option<&'a str>,
    version: Option<&'a str>,
    firmware: Option<&'a str>,
}

/// Whether GSP should run for `value`: `Some(false)` for mode 0 on the proprietary module,
/// `Some(true)` for mode 1 (and always with the open module), `None` when the driver's policy
/// decides (mode 2 and up; on 565 that is GSP for every Turing-and-newer GPU).
fn wants_gsp(open: bool, value: u32, version: Option<&str>) -> Option<bool> {
    if open {
        return Some(true);
    }
    match value & 0xf {
        0 => Some(false),
        1 => Some(true),
        // 565 turns GSP on by default for Turing and newer (docs/gpu-firmware.md).
        _ if version.is_some_and(|v| branch(v) >= 565) => Some(true),
        _ => None,
    }
}

fn branch(version: &str) -> u32 {
    version
        .split('.')
        .next()
        .and_then(|b| b.parse().ok())
        .unwrap_or(0)
}

fn judge_gpu(j: &GpuJudge<'_>) -> (LiveVerdict, String) {
    let value = j.expected.or(j.requested);
    let against = if j.expected.is_some() {
        "expected"
    } else {
        "requested"
    };
    if let Some(smi) = j.smi {
        let smi_on = smi != "N/A";
        if smi_on != (j.gsp == GspState::On) {
            return (
                LiveVerdict::Warn,
                format!("nvidia-smi says GSP Firmware Version {smi}, /proc says otherwise"),
            );
        }
    }
    let Some(value) = value else {
        return (
            LiveVerdict::Warn,
            "no EnableGpuFirmware value to check against".into(),
        );
    };
    let want = wants_gsp(j.open, value, j.version);
    match (j.gsp, want) {
        (GspState::On, Some(true)) if j.open && value & 0xf == 0 => (
            LiveVerdict::Ignored,
            format!("option {value} ignored by the open module: GSP runs anyway"),
        ),
        (GspState::On, Some(true) | None) => {
            (LiveVerdict::Ok, format!("GSP on ({against} {value})"))
        }
        (GspState::Off, Some(false) | None) => {
            (LiveVerdict::Ok, format!("GSP off ({against} {value})"))
        }
        (GspState::Off, Some(true)) => (
            LiveVerdict::Fail,
            format!(
                "GSP expected ({against} {value}) but GPU Firmware: {}: the driver runs on \
                 the CPU (firmware missing or not the loaded version's, or not requested)",
                j.firmware.unwrap_or("(no line)")
            ),
        ),
        (GspState::On, Some(false)) => (
            LiveVerdict::Fail,
            format!("GSP runs but {against} {value} means GSP off"),
        ),
    }
}

fn option_check(open: bool, requested: Option<u32>, expected: Option<u32>) -> LiveCheck {
    let check = "EnableGpuFirmware".to_string();
    let Some(req) = requested else {
        return LiveCheck {
            check,
            verdict: LiveVerdict::Fail,
            detail: "params has no numeric `EnableGpuFirmware:` line".into(),
        };
    };
    let decoded = gpu_firmware::describe(req);
    match expected {
        Some(exp) if exp != req && !(open && exp & 0xf == 0 && req & 0xf == 0) => LiveCheck {
            check,
            verdict: LiveVerdict::Fail,
            detail: format!(
                "the driver was loaded with {decoded}, expected {}",
                gpu_firmware::describe(exp)
            ),
        },
        _ if open && req & 0xf == 0 => LiveCheck {
            check,
            verdict: LiveVerdict::Ignored,
            detail: format!("{req}: ignored by the open module (it always runs GSP)"),
        },
        _ => LiveCheck {
            check,
            verdict: LiveVerdict::Ok,
            detail: decoded,
        },
    }
}

fn firmware_check(
    root: &Path,
    driver: &LiveDriver,
    requested: Option<u32>,
    open: bool,
) -> Result<LiveCheck> {
    let check = "gsp firmware".to_string();
    let Some(version) = &driver.version else {
        return Ok(LiveCheck {
            check,
            verdict: LiveVerdict::Warn,
            detail: "no driver version in driver/nvidia/version".into(),
        });
    };
    let dir = root.join("lib/firmware/nvidia").join(version);
    let mut found: Vec<String> = match std::fs::read_dir(&dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("gsp_") && n.ends_with(".bin"))
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(source) => return Err(Error::ReadLive { path: dir, source }),
    };
    found.sort();
    let shown = format!("/lib/firmware/nvidia/{version}");
    let needed = open || requested.is_none_or(|r| r & 0xf != 0);
    Ok(match (found.is_empty(), needed) {
        (false, _) => LiveCheck {
            check,
            verdict: LiveVerdict::Ok,
            detail: format!("{shown}: {}", found.join(", ")),
        },
        (true, true) => LiveCheck {
            check,
            verdict: LiveVerdict::Fail,
            detail: format!(
                "no gsp_*.bin in {shown} for the loaded driver {version}: install the matching \
                 nvidia-firmware package"
            ),
        },
        (true, false) => LiveCheck {
            check,
            verdict: LiveVerdict::Ok,
            detail: format!("no gsp_*.bin in {shown}; not needed with GSP off"),
        },
    })
}

/// Compares the value modprobe.d (and the kernel command line) would give with the one the
/// driver was loaded with: a difference means the file changed after the module was loaded
/// from an initramfs built earlier.
fn modprobe_check(root: &Path, proc_dir: &Path, requested: Option<u32>) -> Result<LiveCheck> {
    let check = "modprobe.d".to_string();
    let mut files = Vec::new();
    for (i, dir) in modprobe::CONFIG_DIRS.iter().enumerate() {
        let path = root.join(dir.trim_start_matches('/'));
        let Ok(entries) = std::fs::read_dir(&path) else {
            continue;
        };
        for entry in entries.filter_map(|e| e.ok()) {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Ok(text) = std::fs::read_to_string(entry.path()) else {
                continue;
            };
            files.push(ConfFile {
                dir: i,
                location: format!("{dir}/{name}"),
                name,
                text,
            });
        }
    }
    let (read_files, _shadowed) = modprobe::order_files(files);
    let mut inputs: Vec<Input> = read_files
        .iter()
        .flat_map(|f| modprobe::module_options(&f.location, &f.text, "nvidia"))
        .map(|occurrence| Input {
            occurrence,
            shadowed_by: None,
        })
        .collect();
    if let Ok(cmdline) = std::fs::read_to_string(proc_dir.join("cmdline")) {
        inputs.extend(
            modprobe::cmdline_options("/proc/cmdline", &cmdline, "nvidia")
                .into_iter()
                .map(|occurrence| Input {
                    occurrence,
                    shadowed_by: None,
                }),
        );
    }
    let resolution = gpu_firmware::resolve(&inputs);
    let configured = resolution.effective;
    Ok(if configured == requested {
        LiveCheck {
            check,
            verdict: LiveVerdict::Ok,
            detail: format!(
                "{} gives {}, as loaded",
                resolution.source,
                configured.map_or("?".into(), |v| v.to_string())
            ),
        }
    } else {
        LiveCheck {
            check,
            verdict: LiveVerdict::Fail,
            detail: format!(
                "{} gives {} but the driver was loaded with {}: not in effect (stale \
                 initramfs); run `update-initramfs -u` and reboot",
                resolution.source,
                configured.map_or("an invalid value".into(), |v| v.to_string()),
                requested.map_or("?".into(), |v| v.to_string())
            ),
        }
    })
}

impl fmt::Display for LiveReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let flavour = match self.driver.flavour {
            ModuleFlavour::Open => "open module",
            ModuleFlavour::Proprietary => "proprietary module",
            ModuleFlavour::Unknown => "unknown module",
        };
        writeln!(
            f,
            "driver     {}, {flavour} ({}/driver/nvidia/version)",
            self.driver.version.as_deref().unwrap_or("?"),
            self.proc_dir.display()
        )?;
        writeln!(
            f,
            "requested  EnableGpuFirmware: {}",
            self.requested_decoded.as_deref().unwrap_or("?")
        )?;
        writeln!(f)?;
        writeln!(f, "{:<18} {:<9} DETAIL", "CHECK", "VERDICT")?;
        for c in &self.checks {
            writeln!(f, "{:<18} {:<9} {}", c.check, c.verdict, c.detail)?;
        }
        writeln!(f)?;
        let model_w = self
            .gpus
            .iter()
            .map(|g| g.model.len())
            .max()
            .unwrap_or(5)
            .max(5);
        writeln!(
            f,
            "{:<14} {:<model_w$} {:<14} {:<4} {:<9} DETAIL",
            "GPU", "MODEL", "GPU FIRMWARE", "GSP", "VERDICT"
        )?;
        for g in &self.gpus {
            writeln!(
                f,
                "{:<14} {:<model_w$} {:<14} {:<4} {:<9} {}",
                g.bus,
                g.model,
                g.firmware.as_deref().unwrap_or("-"),
                g.gsp,
                g.verdict,
                g.detail
            )?;
        }
        writeln!(f)?;
        let on = self.gpus.iter().filter(|g| g.gsp == GspState::On).count();
        let failed = self
            .checks
            .iter()
            .map(|c| c.verdict)
            .chain(self.gpus.iter().map(|g| g.verdict))
            .filter(|v| *v == LiveVerdict::Fail)
            .count();
        if self.passed {
            write!(f, "PASS: GSP on for {on} of {} GPUs", self.gpus.len())
        } else {
            write!(
                f,
                "FAIL: {failed} row(s) failed; GSP on for {on} of {} GPUs",
                self.gpus.len()
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pci_addresses_compare() {
        assert!(same_device("00000000:19:00.0", "0000:19:00.0"));
        assert!(same_device("19:00", "0000:19:00.0"));
        assert!(!same_device("0000:1a:00.0", "0000:19:00.0"));
    }

    #[test]
    fn version_lines() {
        let open = parse_version(
            "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  565.57.01  Release Build  (dvs-builder@U16-I3-B03-4-3)  Thu Oct 10 12:29:05 UTC 2024\n",
        );
        assert_eq!(open.flavour, ModuleFlavour::Open);
        assert_eq!(open.version.as_deref(), Some("565.57.01"));
        let prop = parse_version(
            "NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.183.01  Sun May 12 19:39:15 UTC 2024\n",
        );
        assert_eq!(prop.flavour, ModuleFlavour::Proprietary);
        assert_eq!(prop.version.as_deref(), Some("535.183.01"));
    }
}
