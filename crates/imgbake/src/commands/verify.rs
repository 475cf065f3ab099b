//! `imgbake verify IMAGE`: offline checks of an exported image (RAW or qcow2).

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
initramfs copy of the option when the initrd carries nvidia modules; and hygiene (SSH host \
keys, machine-id, cloud-init state, build user, authorized_keys, cloud-init logs).

Expectations come from --recipe's verify section, overridden by the --expect-* flags.";

const AFTER_HELP: &str = concat!(
    "EXAMPLES:\n",
    "    imgbake verify out/ubuntu-2204-nvidia-565.raw --expect-gpu-firmware 1 --expect-driver-branch 565\n",
    "    imgbake verify out/image.qcow2 --recipe recipes/nvidia-fw1.yaml\n",
    "    imgbake verify --json out/image.raw | jq '.checks[] | select(.verdict == \"fail\")'\n",
    "\n",
    exit_status_help!(),
    "\n",
    "A readable image that fails a check exits with 1, as does an unreadable image.\n",
);

/// `imgbake verify`.
#[derive(Debug, Args)]
#[command(long_about = LONG_ABOUT, after_long_help = AFTER_HELP)]
pub struct VerifyArgs {
    /// The image (RAW or qcow2)
    #[arg(value_name = "IMAGE")]
    pub image: PathBuf,
    /// Required effective NVreg_EnableGpuFirmware (decimal or 0x hex)
    #[arg(long, value_name = "N", value_parser = parse_firmware)]
    pub expect_gpu_firmware: Option<u32>,
    /// Required NVIDIA driver branch, e.g. 565
    #[arg(long, value_name = "BRANCH")]
    pub expect_driver_branch: Option<String>,
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
    if args.no_hygiene {
        expect.hygiene = false;
    }
    let verified = inspect::verify(&args.image, &expect).map_err(CliError::Verify)?;
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
