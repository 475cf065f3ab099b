//! `NVreg_EnableGpuFirmware` as the image sets it: every modprobe.d file of the root
//! filesystem, the kernel command line the image boots with, and the copy inside the initrd.
//! Reading only; the checks under [`crate::checks`] judge what is found here.

use crate::Result;
use crate::gpu_firmware::{self, Input, Resolution};
use crate::imagefs::ImageFs;
use crate::initramfs::{self, InitramfsContents};
use crate::modprobe::{self, CONFIG_DIRS, ConfFile, ParamOccurrence};

/// What became of the initrd of the booted kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Initrd {
    /// No kernel is installed, so there is no initrd to look at.
    NoKernel,
    /// `/boot/initrd.img-<kernel>` does not exist.
    Missing {
        /// Path in the guest.
        path: String,
    },
    /// The file exists but is not a readable initramfs.
    Unreadable {
        /// Path in the guest.
        path: String,
        /// Why.
        error: String,
    },
    /// The initrd was read.
    Read {
        /// Path in the guest.
        path: String,
        /// What it holds.
        contents: InitramfsContents,
        /// The option as resolved from the initrd's own modprobe.d files and the command line;
        /// `None` when the initrd has no nvidia modules (the driver then loads from the root
        /// filesystem and the initrd's copy does not matter).
        resolution: Option<Resolution>,
    },
}

/// The option as found in the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuFirmwareSettings {
    /// The nvidia options on the kernel command line the image boots with.
    pub cmdline: Vec<ParamOccurrence>,
    /// Notes about a grub.cfg that disagrees with `/etc/default/grub`.
    pub grub_notes: Vec<String>,
    /// The option resolved from the root filesystem and the command line.
    pub root: Resolution,
    /// The initrd of the booted kernel.
    pub initrd: Initrd,
}

impl GpuFirmwareSettings {
    /// Reads every place of `fs` that sets the option; `kernel` is the booted kernel.
    pub fn read(fs: &ImageFs, kernel: Option<&str>) -> Result<GpuFirmwareSettings> {
        let (cmdline, grub_notes) = kernel_cmdline(fs)?;
        let root = gpu_firmware::resolve(&inputs_from(modprobe_files(fs)?, &cmdline));
        let initrd = read_initrd(fs, kernel, &cmdline)?;
        Ok(GpuFirmwareSettings {
            cmdline,
            grub_notes,
            root,
            initrd,
        })
    }

    /// The initrd's resolution, when the initrd holds nvidia modules.
    pub fn initrd_resolution(&self) -> Option<&Resolution> {
        match &self.initrd {
            Initrd::Read { resolution, .. } => resolution.as_ref(),
            _ => None,
        }
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

/// Reads `/boot/initrd.img-<kernel>` and, when it carries nvidia modules, resolves the option
/// from the modprobe.d files inside it.
fn read_initrd(fs: &ImageFs, kernel: Option<&str>, cmdline: &[ParamOccurrence]) -> Result<Initrd> {
    let Some(kernel) = kernel else {
        return Ok(Initrd::NoKernel);
    };
    let path = format!("/boot/initrd.img-{kernel}");
    let Some(file) = fs.open_file(&path)? else {
        return Ok(Initrd::Missing { path });
    };
    let contents = match initramfs::read_initramfs(file) {
        Ok(c) => c,
        Err(e) => {
            return Ok(Initrd::Unreadable {
                path,
                error: e.to_string(),
            });
        }
    };
    if contents.nvidia_modules.is_empty() {
        return Ok(Initrd::Read {
            path,
            contents,
            resolution: None,
        });
    }
    let files = contents
        .modprobe_files
        .iter()
        .map(|(p, text)| {
            // Indices into CONFIG_DIRS, so the initrd's files shadow each other as on disk.
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
    let resolution = Some(gpu_firmware::resolve(&inputs_from(files, cmdline)));
    Ok(Initrd::Read {
        path,
        contents,
        resolution,
    })
}
