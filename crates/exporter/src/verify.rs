//! Offline verification of an exported image: the checks and the [`VerifyReport`].

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::disk::{Disk, ImageFormat};
use crate::driver::{self, DriverInfo, ModuleFlavour};
use crate::facts::{self, GuestFacts};
use crate::gpu_firmware::{self, Input, Resolution, describe};
use crate::imagefs::{ImageFs, Layout};
use crate::initramfs;
use crate::modprobe::{self, CONFIG_DIRS, ConfFile, ParamOccurrence};
use crate::{Result, hygiene};

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
    /// Stable id (`gpu-firmware`, `hygiene/ssh-host-keys`).
    pub id: String,
    /// The outcome.
    pub verdict: Verdict,
    /// One line for people.
    pub summary: String,
    /// Supporting facts.
    pub details: Vec<String>,
}

impl Check {
    fn new(id: &str, verdict: Verdict, summary: impl Into<String>, details: Vec<String>) -> Check {
        Check {
            id: id.to_string(),
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
    /// A check by id.
    pub fn check(&self, id: &str) -> Option<&Check> {
        self.checks.iter().find(|c| c.id == id)
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
            crate::TableKind::Gpt => "GPT",
            crate::TableKind::Mbr => "MBR",
            crate::TableKind::None => "no partition table",
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
            .map(|c| c.id.len())
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

/// Reads every modprobe.d file of the root filesystem as [`ConfFile`]s.
fn modprobe_files(fs: &ImageFs) -> Result<Vec<ConfFile>> {
    // With merged /usr, /lib is a symlink to usr/lib: the same files, listed once.
    let lib_is_link = fs.read_link("/lib")?.is_some();
    let mut files = Vec::new();
    for (dir_idx, dir) in CONFIG_DIRS.iter().enumerate() {
        if lib_is_link && *dir == "/lib/modprobe.d" {
            continue;
        }
        for entry in fs.list(dir)? {
            if entry.is_dir || !modprobe::is_config_name(&entry.name) {
                continue;
            }
            let location = format!("{dir}/{}", entry.name);
            // A symlink to /dev/null masks a file: it reads as empty.
            let text = fs.read_text(&location)?.unwrap_or_default();
            files.push(ConfFile {
                dir: dir_idx,
                name: entry.name,
                location,
                text,
            });
        }
    }
    Ok(files)
}

fn inputs_from(files: Vec<ConfFile>, cmdline: &[ParamOccurrence]) -> Vec<Input> {
    let (read, shadowed) = modprobe::order_files(files);
    let mut inputs = Vec::new();
    for (file, by) in shadowed {
        for occurrence in modprobe::module_options(&file.location, &file.text, "nvidia") {
            inputs.push(Input {
                occurrence,
                shadowed_by: Some(by.clone()),
            });
        }
    }
    for file in read {
        for occurrence in modprobe::module_options(&file.location, &file.text, "nvidia") {
            inputs.push(Input {
                occurrence,
                shadowed_by: None,
            });
        }
    }
    inputs.extend(cmdline.iter().cloned().map(|occurrence| Input {
        occurrence,
        shadowed_by: None,
    }));
    inputs
}

/// The kernel command line the image boots with: the default entry of grub.cfg, else
/// (grub.cfg absent) what `/etc/default/grub` would generate. Also returns notes about a
/// grub.cfg that disagrees with `/etc/default/grub`.
fn kernel_cmdline(fs: &ImageFs) -> Result<(Vec<ParamOccurrence>, Vec<String>)> {
    let mut default_files = Vec::new();
    if let Some(text) = fs.read_text("/etc/default/grub")? {
        default_files.push(("/etc/default/grub".to_string(), text));
    }
    for e in fs.list("/etc/default/grub.d")? {
        if !e.is_dir && e.name.ends_with(".cfg") {
            let path = format!("/etc/default/grub.d/{}", e.name);
            if let Some(text) = fs.read_text(&path)? {
                default_files.push((path, text));
            }
        }
    }
    let mut from_defaults = Vec::new();
    for (var, value, location) in modprobe::grub_default_cmdlines(&default_files) {
        from_defaults.extend(modprobe::cmdline_options(
            &format!("{location} ({var})"),
            &value,
            "nvidia",
        ));
    }
    let Some(cfg) = fs.read_text("/boot/grub/grub.cfg")? else {
        return Ok((from_defaults, Vec::new()));
    };
    let lines = modprobe::grub_cfg_linux_lines(&cfg);
    let Some((line_no, args)) = lines.first() else {
        return Ok((from_defaults, Vec::new()));
    };
    let from_cfg = modprobe::cmdline_options(
        &format!("/boot/grub/grub.cfg:{line_no} (kernel command line)"),
        args,
        "nvidia",
    );
    let firmware_values = |occ: &[ParamOccurrence]| -> Vec<Option<String>> {
        occ.iter()
            .filter(|o| {
                let n = modprobe::norm(&o.param);
                n == modprobe::norm(gpu_firmware::PARAM)
                    || n == modprobe::norm(gpu_firmware::REGISTRY_PARAM)
            })
            .map(|o| o.value.clone())
            .collect()
    };
    let mut notes = Vec::new();
    if !default_files.is_empty() && firmware_values(&from_cfg) != firmware_values(&from_defaults) {
        notes.push(
            "/boot/grub/grub.cfg and /etc/default/grub disagree about the nvidia options (run update-grub)"
                .to_string(),
        );
    }
    Ok((from_cfg, notes))
}

fn setting_lines(r: &Resolution) -> Vec<String> {
    r.settings
        .iter()
        .map(|s| {
            let status = match &s.status {
                gpu_firmware::SettingStatus::Effective => "effective".to_string(),
                gpu_firmware::SettingStatus::Overridden(w)
                | gpu_firmware::SettingStatus::Shadowed(w)
                | gpu_firmware::SettingStatus::Ignored(w) => w.clone(),
            };
            let via = match s.via {
                gpu_firmware::Via::Parameter => "",
                gpu_firmware::Via::RegistryDwords => " (in NVreg_RegistryDwords)",
            };
            let value = s.value.map_or(
                "invalid: the kernel refuses to load the module".to_string(),
                describe,
            );
            format!("{}: {}{via} → {value} [{status}]", s.location, s.raw)
        })
        .collect()
}

fn gpu_firmware_check(
    r: &Resolution,
    flavour: ModuleFlavour,
    driver_installed: bool,
    expect: &Expectations,
) -> (Check, String) {
    let decoded = match r.effective {
        Some(v) if r.settings.is_empty() => format!("unset → {}", describe(v)),
        Some(v) => describe(v),
        None => "invalid value: the kernel refuses to load nvidia".to_string(),
    };
    let mut details = setting_lines(r);
    details.push(format!("effective value from {}", r.source));
    let open_ignores_zero = flavour == ModuleFlavour::Open && r.effective == Some(0);
    if open_ignores_zero {
        details.push("the open kernel modules ignore 0: GSP stays on".to_string());
    }
    let summary = if open_ignores_zero {
        format!("{decoded} — but the open modules ignore 0")
    } else {
        decoded.clone()
    };
    let verdict = match (r.effective, expect.enable_gpu_firmware) {
        (None, _) => Verdict::Fail,
        (Some(0), Some(0)) if flavour == ModuleFlavour::Open => Verdict::Fail,
        (Some(got), Some(want)) if got == want => Verdict::Pass,
        (Some(_), Some(want)) => {
            details.push(format!("expected {}", describe(want)));
            Verdict::Fail
        }
        (Some(_), None) if !driver_installed && r.settings.is_empty() => Verdict::Skip,
        (Some(_), None) => Verdict::Pass,
    };
    (
        Check::new("gpu-firmware", verdict, summary, details),
        decoded,
    )
}

fn driver_checks(d: &DriverInfo, expect: &Expectations) -> Vec<Check> {
    let mut checks = Vec::new();
    let Some(version) = &d.version else {
        let verdict = if expect.driver_branch.is_some() {
            Verdict::Fail
        } else {
            Verdict::Skip
        };
        let summary = match &expect.driver_branch {
            Some(b) => format!("no NVIDIA driver installed (expected branch {b})"),
            None => "no NVIDIA driver installed".to_string(),
        };
        checks.push(Check::new("driver", verdict, summary, Vec::new()));
        checks.push(Check::new(
            "firmware-files",
            Verdict::Skip,
            "no driver, no firmware needed",
            Vec::new(),
        ));
        return checks;
    };
    let mut details = d.packages.clone();
    let mut verdict = Verdict::Pass;
    match &d.module {
        Some(m) => {
            details.push(format!(
                "module {} version {} license {}",
                m.path,
                m.version.as_deref().unwrap_or("?"),
                m.license.as_deref().unwrap_or("?")
            ));
            if let Some(why) = &m.unreadable {
                details.push(format!("cannot read its .modinfo: {why}"));
            }
        }
        None => details
            .push("no nvidia module found for the booted kernel (DKMS build missing?)".to_string()),
    }
    let module_version = d.module.as_ref().and_then(|m| m.version.as_ref());
    if let (Some(m), Some(p)) = (module_version, &d.package_version)
        && m != p
    {
        details.push(format!(
            "module version {m} differs from package version {p}"
        ));
        verdict = Verdict::Fail;
    }
    if let Some(want) = &expect.driver_branch
        && d.branch.as_deref() != Some(want.as_str())
    {
        details.push(format!("expected branch {want}"));
        verdict = Verdict::Fail;
    }
    let flavour = match d.flavour {
        ModuleFlavour::Open => "open modules",
        ModuleFlavour::Proprietary => "proprietary module",
        ModuleFlavour::Unknown => "module flavour unknown",
    };
    checks.push(Check::new(
        "driver",
        verdict,
        format!("NVIDIA {version} ({flavour})"),
        details,
    ));

    let dir = format!("/lib/firmware/nvidia/{version}");
    let (verdict, summary, mut details) = if d.gsp_files.is_empty() {
        let others: Vec<&String> = d.firmware_dirs.iter().filter(|v| *v != version).collect();
        let mut details = vec![format!("{dir}/gsp_*.bin not found")];
        if !others.is_empty() {
            details.push(format!(
                "firmware present for other versions: {}",
                others
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        (
            Verdict::Fail,
            format!("no GSP firmware for {version}"),
            details,
        )
    } else {
        (
            Verdict::Pass,
            format!("{dir}: {}", d.gsp_files.join(", ")),
            Vec::new(),
        )
    };
    if verdict == Verdict::Fail {
        details.push("with GSP forced on (1) the GPU will not initialise; with fallback (17/18) it runs in CPU mode".to_string());
    }
    checks.push(Check::new("firmware-files", verdict, summary, details));
    checks
}

fn initramfs_check(
    fs: &ImageFs,
    kernel: Option<&str>,
    cmdline: &[ParamOccurrence],
    root: &Resolution,
) -> Result<(Check, Option<Resolution>)> {
    let Some(kernel) = kernel else {
        return Ok((
            Check::new(
                "initramfs",
                Verdict::Skip,
                "no kernel installed",
                Vec::new(),
            ),
            None,
        ));
    };
    let path = format!("/boot/initrd.img-{kernel}");
    let Some(file) = fs.open_file(&path)? else {
        return Ok((
            Check::new(
                "initramfs",
                Verdict::Skip,
                format!("{path} not found"),
                Vec::new(),
            ),
            None,
        ));
    };
    let contents = match initramfs::read_initramfs(file) {
        Ok(c) => c,
        Err(e) => {
            return Ok((
                Check::new(
                    "initramfs",
                    Verdict::Fail,
                    format!("cannot read {path}: {e}"),
                    Vec::new(),
                ),
                None,
            ));
        }
    };
    let mut details = vec![format!(
        "{} archive(s): {}",
        contents.segments,
        contents.compressions.join(" + ")
    )];
    if contents.nvidia_modules.is_empty() {
        let summary =
            format!("{path} has no nvidia modules; the driver loads from the root filesystem");
        return Ok((
            Check::new("initramfs", Verdict::Pass, summary, details),
            None,
        ));
    }
    details.extend(
        contents
            .nvidia_modules
            .iter()
            .map(|m| format!("contains {m}")),
    );
    let files = contents
        .modprobe_files
        .iter()
        .map(|(p, text)| {
            let dir = if p.starts_with("etc/") {
                0
            } else if p.starts_with("run/") {
                1
            } else if p.starts_with("usr/") {
                3
            } else {
                4
            };
            ConfFile {
                dir,
                name: p.rsplit('/').next().unwrap_or(p).to_string(),
                location: format!("{path}:/{p}"),
                text: text.clone(),
            }
        })
        .collect();
    let inner = gpu_firmware::resolve(&inputs_from(files, cmdline));
    details.extend(setting_lines(&inner));
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
            fmt_value(&inner)
        )
    } else {
        format!(
            "initrd gives {} but the root filesystem gives {} (run update-initramfs -u)",
            fmt_value(&inner),
            fmt_value(root)
        )
    };
    Ok((
        Check::new("initramfs", verdict, summary, details),
        Some(inner),
    ))
}

/// Reads the guest facts (os-release, kernel, packages, driver and Kubernetes versions) of an
/// image without running the checks.
pub fn inspect(path: &Path) -> Result<GuestFacts> {
    let disk = Disk::open(path)?;
    let fs = ImageFs::open(&disk)?;
    let mut facts = facts::read_facts(&fs)?;
    facts.nvidia_driver = driver::inspect(&fs, &facts)?.version;
    Ok(facts)
}

/// Verifies the image at `path` (RAW or qcow2) against `expect`, offline.
///
/// An image that cannot be read (no partition table, no root filesystem, truncated qcow2
/// chain, corrupt ext4) is an `Err`; everything found inside a readable image is a check in
/// the report. Blocking: from async code call it inside `tokio::task::spawn_blocking`.
pub fn verify(path: &Path, expect: &Expectations) -> Result<VerifyReport> {
    let disk = Disk::open(path)?;
    let fs = ImageFs::open(&disk)?;
    let mut facts = facts::read_facts(&fs)?;
    let driver = driver::inspect(&fs, &facts)?;
    facts.nvidia_driver = driver.version.clone();

    let (cmdline, grub_notes) = kernel_cmdline(&fs)?;
    let root = gpu_firmware::resolve(&inputs_from(modprobe_files(&fs)?, &cmdline));
    let (fw_check, decoded) =
        gpu_firmware_check(&root, driver.flavour, driver.version.is_some(), expect);
    let mut checks = vec![fw_check];
    let mut conflicts = root.conflicts.clone();
    conflicts.extend(grub_notes);
    checks.push(if conflicts.is_empty() {
        Check::new(
            "gpu-firmware-conflicts",
            Verdict::Pass,
            "all settings agree",
            Vec::new(),
        )
    } else {
        Check::new(
            "gpu-firmware-conflicts",
            Verdict::Warn,
            format!("{} disagreement(s)", conflicts.len()),
            conflicts,
        )
    });
    checks.extend(driver_checks(&driver, expect));
    let (initramfs, initramfs_resolution) =
        initramfs_check(&fs, facts.kernel.as_deref(), &cmdline, &root)?;
    checks.push(initramfs);
    for f in hygiene::check(&fs, &expect.build_user)? {
        let verdict = match (f.clean, expect.hygiene) {
            (true, _) => Verdict::Pass,
            (false, true) => Verdict::Fail,
            (false, false) => Verdict::Warn,
        };
        checks.push(Check::new(
            &format!("hygiene/{}", f.id),
            verdict,
            f.summary,
            f.details,
        ));
    }
    let passed = checks.iter().all(|c| c.verdict != Verdict::Fail);
    Ok(VerifyReport {
        image: path.to_path_buf(),
        format: disk.format(),
        virtual_size: disk.size(),
        layout: fs.layout().clone(),
        os: facts.os_release.get("PRETTY_NAME").map(str::to_string),
        kernel: facts.kernel.clone(),
        expectations: expect.clone(),
        gpu_firmware: GpuFirmwareReport {
            root,
            decoded,
            initramfs: initramfs_resolution,
        },
        driver,
        checks,
        passed,
        facts,
    })
}
