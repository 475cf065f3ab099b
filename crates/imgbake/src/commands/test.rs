//! `imgbake test IMAGE`: boot an exported image as a new machine and check it (the booting and
//! the checks are `pipeline::test_image`; this file parses arguments and renders).

use std::io::Write;
use std::path::PathBuf;

use clap::Args;

use crate::cli::{AccelArg, VarArgs};
use crate::output::Output;
use crate::render::{BakeRenderer, RenderMode};
use crate::report::{CliError, ExitStatus, exit_status_help, stdout_err};

pub const LONG_ABOUT: &str = "\
Boot IMAGE (RAW or qcow2) the way a cloud starts a new machine from it, and check that it \
behaves like one. The image is never written: it backs a throwaway qcow2 overlay in a private \
run directory, removed at the end. The cloud-init seed is fresh: a new instance id, a new \
hostname (imgbake-test-XXXXXX), a test user imgbake-test with a new key, and no SSH host key, \
so the guest must make its own.

Checks, one row each: sshd's host key was generated on this boot (none is baked into the \
image: compared with the image's /etc/ssh/ssh_host_*_key.pub, read offline); cloud-init ran as \
this new instance and finished `done`; /etc/machine-id was generated on this boot and differs \
from the image's; the hostname is the test's; the build user does not exist; no build \
leftovers (/var/lib/imgbake); with --recipe, `modprobe -c` in the running guest carries the \
recipe's verify.nvidia.enable_gpu_firmware, and each of the recipe's `test:` commands exits 0 \
(run as root).

The VM uses the recipe's vm settings (2 vCPUs, 2 GiB, BIOS without --recipe) and the same \
accelerator logic as builds.";

pub const AFTER_HELP: &str = concat!(
    "EXAMPLES:\n",
    "    imgbake test output/fixture-smoke/fixture-smoke.qcow2 --recipe fixtures/recipes/smoke.yaml\n",
    "    imgbake test output/ubuntu.raw --accel tcg --json | jq '.rows[] | select(.verdict == \"fail\")'\n",
    "\n",
    exit_status_help!(),
);

/// `imgbake test`.
#[derive(Debug, Args)]
pub struct TestArgs {
    /// The image to boot (RAW or qcow2); only read
    #[arg(value_name = "IMAGE")]
    pub image: PathBuf,
    /// The recipe it was built from: vm settings, the NVIDIA expectation, `test:` commands
    #[arg(long, value_name = "RECIPE")]
    pub recipe: Option<PathBuf>,
    #[command(flatten)]
    pub vars: VarArgs,
    /// Accelerator: auto uses KVM if /dev/kvm is writable (and restarts once under TCG if KVM
    /// fails); overrides the recipe's vm.accel
    #[arg(long, value_enum, value_name = "ACCEL")]
    pub accel: Option<AccelArg>,
    /// Print the report as one JSON document on stdout instead of a table
    #[arg(long)]
    pub json: bool,
}

/// Runs `imgbake test`.
pub fn run(args: &TestArgs, out: &Output) -> Result<ExitStatus, CliError> {
    let recipe = match &args.recipe {
        Some(path) => Some(recipe::Recipe::load(path, &args.vars.vars)?),
        None => None,
    };
    let mut request = pipeline::ImageTestRequest::new(args.image.clone());
    request.recipe = recipe;
    request.accel = args.accel.map(Into::into);
    let runtime = crate::commands::runtime()?;
    let report = runtime.block_on(async {
        let signals = crate::signals::Signals::listen(crate::signals::announce_build);
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        // Progress goes to stderr in both modes; stdout carries only the result.
        let renderer = BakeRenderer::new("test".into(), false, RenderMode::Human, *out);
        let render = tokio::spawn(renderer.run(rx));
        let result = pipeline::test_image(request, tx, signals.cancel()).await;
        let _ = render.await;
        result.map_err(|e| CliError::Bake(Box::new(e)))
    })?;
    let mut stdout = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut stdout, &report).map_err(CliError::Json)?;
        writeln!(stdout).map_err(stdout_err)?;
    } else {
        writeln!(stdout, "boot test of {}", report.image.display()).map_err(stdout_err)?;
        crate::render::write_test_table(&mut stdout, &report, out.stdout()).map_err(stdout_err)?;
    }
    drop(stdout);
    if report.passed {
        return Ok(ExitStatus::Success);
    }
    Err(CliError::TestFailed {
        failed: report.failed().into_iter().map(str::to_owned).collect(),
    })
}
