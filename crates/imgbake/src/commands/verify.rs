//! `imgbake verify IMAGE`: offline checks of an exported image (RAW or qcow2);
//! `imgbake verify --live`: the GSP state of the running driver on a GPU host.

use std::io::Write;
use std::path::PathBuf;

use clap::Args;
use inspect::Expectations;

use crate::cli::VarArgs;
use crate::output::Output;
use crate::report::{CliError, ExitStatus, exit_status_help, stdout_err};

const LONG_ABOUT: &str = "\
Verify a disk image offline: read its partition table and ext4 filesystems straight from the \
file (RAW, or qcow2 through its backing chain), without mounting, root or booting.

Checks: the effective NVreg_EnableGpuFirmware from every place it can be set (modprobe.d in \
modprobe's order, NVreg_RegistryDwords, the kernel command line in grub.cfg and \
/etc/default/grub) with its meaning; conflicts between places; the installed NVIDIA driver \
(dpkg status and the module's .modinfo) and its /lib/firmware/nvidia/<version>/gsp_*.bin; the \
initramfs copy of the option when the initrd carries nvidia modules; an nvidia module built for \
every kernel the image boots (Ubuntu's nvidia.ko or Debian's nvidia-current.ko, compressed or \
not); the GSP firmware each --gpu-models model loads, and the open modules for Blackwell; \
containerd's default runtime when the NVIDIA Container Toolkit is installed; and hygiene (SSH \
host keys, machine-id, cloud-init state, build user, authorized_keys, cloud-init logs, \
/var/lib/imgbake, the build hostname in /etc/hosts, module-signing keys). Each line of the \
report names the rule that decided it.

Expectations come from --recipe's verify section, overridden by the --expect-* flags.

With --live (no IMAGE), it checks the running driver instead, on a GPU host or inside a GPU VM: \
/proc/driver/nvidia/version (open or proprietary module, version), params (the requested \
EnableGpuFirmware, decoded), each gpus/*/information (`GPU Firmware:` per GPU) and `nvidia-smi \
-q` (GSP Firmware Version) when present, with a verdict per GPU against --expect-gpu-firmware. \
It flags 0 with the open module (ignored: GSP runs anyway, not a failure), no gsp_*.bin under \
/lib/firmware/nvidia/<loaded version>, modprobe.d giving another value than the driver was \
loaded with (a stale initramfs: run update-initramfs -u and reboot), and GSP expected but N/A.";

const AFTER_HELP: &str = concat!(
    "EXAMPLES:\n",
    "    imgbake verify out/ubuntu-2204-nvidia-565.raw --expect-gpu-firmware 1 --expect-driver-branch 565\n",
    "    imgbake verify out/image.qcow2 --recipe recipes/nvidia-fw1.yaml\n",
    "    imgbake verify out/image.raw --expect-gpu-firmware 1 --gpu-models A100,H100\n",
    "    imgbake verify --json out/image.raw | jq '.checks[] | select(.verdict == \"fail\")'\n",
    "    imgbake verify --live --expect-gpu-firmware 1\n",
    "    imgbake verify --live --proc fixtures/nvidia-proc/565-open-option0-1xh100/proc --root fixtures/nvidia-proc/565-open-option0-1xh100/root\n",
    "\n",
    exit_status_help!(),
    "\n",
    "A readable image that fails a check exits with 1, as does an unreadable image.\n",
);

/// `imgbake verify`.
#[derive(Debug, Args)]
#[command(long_about = LONG_ABOUT, after_long_help = AFTER_HELP)]
pub struct VerifyArgs {
    /// The image (RAW or qcow2); omitted with --live
    #[arg(
        value_name = "IMAGE",
        required_unless_present = "live",
        conflicts_with = "live"
    )]
    pub image: Option<PathBuf>,
    /// Check the running driver (/proc/driver/nvidia) instead of an image
    #[arg(long)]
    pub live: bool,
    /// With --live: a directory laid out like /proc
    #[arg(
        long = "proc",
        value_name = "DIR",
        default_value = "/proc",
        requires = "live"
    )]
    pub proc_dir: PathBuf,
    /// With --live: the root holding /lib/firmware and /etc/modprobe.d
    #[arg(long, value_name = "DIR", default_value = "/", requires = "live")]
    pub root: PathBuf,
    /// With --live: read this `nvidia-smi -q` output instead of running nvidia-smi
    #[arg(long, value_name = "FILE", requires = "live")]
    pub nvidia_smi: Option<PathBuf>,
    /// Required effective NVreg_EnableGpuFirmware (decimal or 0x hex)
    #[arg(long, value_name = "N", value_parser = parse_firmware)]
    pub expect_gpu_firmware: Option<u32>,
    /// Required NVIDIA driver branch, e.g. 565
    #[arg(long, value_name = "BRANCH")]
    pub expect_driver_branch: Option<String>,
    /// GPU models the image is for, e.g. A100,H100: selects the GSP firmware files that must
    /// be present (and the open modules for Blackwell)
    #[arg(long, value_name = "MODELS", value_delimiter = ',')]
    pub gpu_models: Vec<String>,
    /// Take expectations from this recipe's `verify` section
    #[arg(long, value_name = "RECIPE")]
    pub recipe: Option<PathBuf>,
    #[command(flatten)]
    pub vars: VarArgs,
    /// Report hygiene problems as warnings instead of failures
    #[arg(long)]
    pub no_hygiene: bool,
    /// Print the report as one JSON document instead of a table
    #[arg(long)]
    pub json: bool,
    /// Follow a qcow2's backing files outside the image's own directory
    #[arg(long)]
    pub allow_backing: bool,
}

fn parse_firmware(s: &str) -> Result<u32, String> {
    inspect::modprobe::parse_uint(s)
        .ok_or_else(|| format!("`{s}` is not a number (use e.g. 1, 18 or 0x11)"))
}

/// Runs `imgbake verify`.
pub fn run(args: &VerifyArgs, _out: &Output) -> Result<ExitStatus, CliError> {
    let mut expect = match &args.recipe {
        Some(path) => pipeline::expectations(&recipe::Recipe::load(path, &args.vars.vars)?),
        None => Expectations::default(),
    };
    if args.expect_gpu_firmware.is_some() {
        expect.enable_gpu_firmware = args.expect_gpu_firmware;
    }
    if args.expect_driver_branch.is_some() {
        expect.driver_branch = args.expect_driver_branch.clone();
    }
    if !args.gpu_models.is_empty() {
        expect.gpu_models = args.gpu_models.clone();
    }
    if args.no_hygiene {
        expect.hygiene = false;
    }
    let Some(image) = &args.image else {
        return run_live(args, &expect);
    };
    let opts = inspect::OpenOptions {
        allow_backing: args.allow_backing,
    };
    let verified = inspect::verify_with(image, &expect, &opts).map_err(CliError::Verify)?;
    let mut stdout = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut stdout, &verified).map_err(CliError::Json)?;
        writeln!(stdout).map_err(stdout_err)?;
    } else {
        writeln!(stdout, "{verified}").map_err(stdout_err)?;
    }
    Ok(if verified.passed {
        ExitStatus::Success
    } else {
        ExitStatus::VerifyFailed
    })
}

/// `imgbake verify --live`.
fn run_live(args: &VerifyArgs, expect: &Expectations) -> Result<ExitStatus, CliError> {
    let nvidia_smi = match &args.nvidia_smi {
        Some(path) => Some(std::fs::read_to_string(path).map_err(|source| {
            CliError::Verify(inspect::Error::ReadLive {
                path: path.clone(),
                source,
            })
        })?),
        // Absent or failing nvidia-smi is not an error: /proc alone decides.
        None => std::process::Command::new("nvidia-smi")
            .arg("-q")
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned()),
    };
    let report = inspect::verify_live(&inspect::LiveOptions {
        proc_dir: args.proc_dir.clone(),
        root: args.root.clone(),
        nvidia_smi,
        expect_gpu_firmware: expect.enable_gpu_firmware,
        expect_driver_branch: expect.driver_branch.clone(),
    })
    .map_err(CliError::Verify)?;
    let mut stdout = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut stdout, &report).map_err(CliError::Json)?;
        writeln!(stdout).map_err(stdout_err)?;
    } else {
        writeln!(stdout, "{report}").map_err(stdout_err)?;
    }
    Ok(if report.passed {
        ExitStatus::Success
    } else {
        ExitStatus::VerifyFailed
    })
}
