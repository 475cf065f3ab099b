//! `imgbake boot RECIPE`: boot the recipe's base image the way a build would (fresh overlay,
//! imgbake's own cloud-init seed, the recipe's VM settings), print the ssh command, and keep the
//! guest running until Ctrl-C. A developer's tool for trying out a step by hand.
//!
//! Nothing is written to the cache except the base image (fetched as `imgbake fetch` would);
//! the overlay, keys, seed and logs live in a private run directory that is removed at the end.
//!
//! The booting itself is `pipeline::boot_interactive`, the same code a build boots with; this
//! file parses the arguments and renders the events.

use std::io::Write;
use std::path::PathBuf;

use clap::Args;
use pipeline::BakeEvent;

use crate::cli::{AccelArg, VarArgs};
use crate::output::Output;
use crate::report::{CliError, ExitStatus, exit_status_help};

pub const LONG_ABOUT: &str = "\
Boot RECIPE's base image as a build would, without running any step: a fresh qcow2 overlay on \
the cached base (grown to the recipe's disk_size), imgbake's cloud-init seed with a new SSH \
user key and a pinned host key, and the recipe's vm settings. When SSH answers and cloud-init \
has finished, the exact ssh command is printed (its key file and a known_hosts file pinning \
the guest's host key are in the run directory). The guest runs until Ctrl-C, which powers it \
off (a second Ctrl-C kills QEMU); then the run directory is removed.

The base image is fetched into the cache first if needed (as `imgbake fetch` does).";

pub const AFTER_HELP: &str = concat!(
    "EXAMPLES:\n",
    "    imgbake boot fixtures/recipes/smoke.yaml --accel tcg\n",
    "    imgbake boot recipes/nvidia-fw1.yaml --var ubuntu_version=24.04\n",
    "\n",
    exit_status_help!(),
);

/// `imgbake boot`.
#[derive(Debug, Args)]
pub struct BootArgs {
    /// The recipe whose base image to boot
    #[arg(value_name = "RECIPE")]
    pub recipe: PathBuf,
    #[command(flatten)]
    pub vars: VarArgs,
    /// Accelerator: auto uses KVM if /dev/kvm is writable (and restarts once under TCG if KVM
    /// fails); overrides the recipe's vm.accel
    #[arg(long, value_enum, value_name = "ACCEL")]
    pub accel: Option<AccelArg>,
    /// The cache root (holding base/) [default: $XDG_CACHE_HOME/imgbake]
    #[arg(long, env = "IMGBAKE_CACHE_DIR", value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Use only a cached base image; never touch the network
    #[arg(long)]
    pub offline: bool,
}

/// Runs `imgbake boot`.
pub fn run(args: &BootArgs, _out: &Output) -> Result<ExitStatus, CliError> {
    let mut recipe = recipe::Recipe::load(&args.recipe, &args.vars.vars)?;
    if let Some(accel) = args.accel {
        recipe.vm.accel = accel.into();
    }
    let request = pipeline::InteractiveBoot {
        recipe,
        cache_dir: crate::commands::cache_dir(args.cache_dir.as_deref())?,
        runtime_dir: pipeline::default_runtime_dir(),
        offline: args.offline,
    };
    let runtime = crate::commands::runtime()?;
    runtime.block_on(async {
        let signals = crate::signals::Signals::listen(announce);
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let render = tokio::spawn(render(rx));
        let result = pipeline::boot_interactive(request, tx, signals.cancel()).await;
        let _ = render.await;
        result.map_err(|e| CliError::Bake(Box::new(e)))
    })?;
    Ok(ExitStatus::Success)
}

fn announce(stage: crate::signals::Stage) {
    if stage == crate::signals::Stage::Graceful {
        say("\npowering the guest off (Ctrl-C again to kill it)");
    } else {
        say("killing QEMU");
    }
}

fn say(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// The events of a boot as lines for a person; the ssh command alone goes to stdout.
async fn render(mut events: tokio::sync::mpsc::UnboundedReceiver<BakeEvent>) {
    let started = std::time::Instant::now();
    let mut last_fetch = std::time::Instant::now();
    while let Some(event) = events.recv().await {
        match event {
            BakeEvent::FetchProgress { done, total } if last_fetch.elapsed().as_secs() >= 5 => {
                last_fetch = std::time::Instant::now();
                let total = total.map_or("?".to_owned(), |t| indicatif::HumanBytes(t).to_string());
                say(&format!(
                    "fetching the base: {} of {total}",
                    indicatif::HumanBytes(done)
                ));
            }
            BakeEvent::RestartedUnderTcg { reason } => {
                say(&format!(
                    "warning: KVM failed ({reason}); restarted under TCG"
                ));
            }
            BakeEvent::VmStarted {
                reason, serial_log, ..
            } => say(&format!(
                "booting ({reason}); serial console: {}",
                serial_log.display()
            )),
            BakeEvent::SshReady { after_secs } => {
                say(&format!("ssh answered after {after_secs:.1}s"));
            }
            BakeEvent::CloudInitWarning { detail } => {
                say(&format!(
                    "warning: cloud-init finished with errors: {detail}"
                ));
            }
            BakeEvent::CloudInitDone { .. } => say(&format!(
                "cloud-init finished after {:.1}s",
                started.elapsed().as_secs_f64()
            )),
            BakeEvent::GuestReady {
                ssh_command,
                run_dir,
                user,
            } => {
                let _ = writeln!(std::io::stdout(), "{ssh_command}");
                say(&format!(
                    "the guest is up; run the command above to log in (user {user} has passwordless sudo).\n\
                     run directory: {} (removed at the end)\n\
                     Ctrl-C powers the guest off.",
                    run_dir.display()
                ));
            }
            BakeEvent::VmStopped { why } => say(&format!("the vm stopped: {why}")),
            BakeEvent::ShuttingDown => say("stopping the guest"),
            BakeEvent::Warning { message } => say(&format!("warning: {message}")),
            _ => {}
        }
    }
}
