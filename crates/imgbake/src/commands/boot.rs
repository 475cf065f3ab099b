//! `imgbake boot RECIPE`: boot the recipe's base image the way a build would (fresh overlay,
//! imgbake's own cloud-init seed, the recipe's VM settings), print the ssh command, and keep the
//! guest running until Ctrl-C. A developer's tool for trying out a step by hand.
//!
//! Nothing is written to the cache except the base image (fetched as `imgbake fetch` would);
//! the overlay, keys, seed and logs live in a private run directory that is removed at the end.
//!
//! The VM settings and seed come from `pipeline::setup`, so this boots the guest exactly as a
//! build does.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use provisioner::{BuildKeys, CloudInitOutcome, GuestSession, SshTarget};
use qemu_driver::{AccelReason, Vm};
use tokio_util::sync::CancellationToken;

use crate::cli::{AccelArg, VarArgs};
use crate::output::Output;
use crate::report::{self, CliError, ExitStatus, exit_status_help};

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
    "    imgbake boot recipes/nvidia-fw1.yaml --var ubuntu_codename=noble --var ubuntu_version=24.04\n",
    "\n",
    exit_status_help!(),
);

/// How long the guest gets to power off after Ctrl-C before QEMU is told to quit.
const POWERDOWN_DEADLINE: Duration = Duration::from_secs(60);

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

/// Why `boot` failed.
#[derive(Debug, thiserror::Error)]
enum BootError {
    #[error("cannot get the base image of {recipe}")]
    Fetch {
        recipe: String,
        #[source]
        source: fetch::Error,
    },
    #[error("cannot {action} {}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot write the ssh keys to {}", path.display())]
    Keys {
        path: PathBuf,
        #[source]
        source: Box<provisioner::Error>,
    },
    #[error("cannot write the cloud-init seed")]
    Seed(#[source] seed::SeedError),
    #[error("the vm failed")]
    Vm(#[source] qemu_driver::Error),
    #[error("the guest did not become reachable over ssh")]
    Guest(#[source] Box<provisioner::Error>),
    #[error("cloud-init never ran in the guest: {detail}")]
    CloudInitNeverRan { detail: String },
    #[error("interrupted before the guest was up")]
    Interrupted,
}

impl BootError {
    fn exit_status(&self) -> ExitStatus {
        match self {
            BootError::Vm(_) | BootError::Guest(_) | BootError::CloudInitNeverRan { .. } => {
                ExitStatus::VmFailed
            }
            BootError::Interrupted => ExitStatus::Interrupted,
            _ => ExitStatus::Failure,
        }
    }

    fn hint(&self) -> Option<String> {
        match self {
            BootError::Vm(e) if e.is_kvm_failure() => {
                Some("KVM cannot run this guest here; use --accel tcg".into())
            }
            BootError::Vm(_) | BootError::Guest(_) | BootError::CloudInitNeverRan { .. } => {
                Some("read the serial log named above; -v shows more; --accel tcg if KVM misbehaves".into())
            }
            BootError::Fetch { .. } => Some(
                "check the recipe's base url and checksum (`imgbake fetch RECIPE` shows progress), or use --offline with a cached image"
                    .into(),
            ),
            _ => None,
        }
    }
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> BootError {
    let path = path.to_path_buf();
    move |source| BootError::Io {
        action,
        path,
        source,
    }
}

/// Runs `imgbake boot`.
pub fn run(args: &BootArgs, out: &Output) -> Result<ExitStatus, CliError> {
    let mut recipe = recipe::Recipe::load(&args.recipe, &args.vars.vars)?;
    if let Some(accel) = args.accel {
        recipe.vm.accel = accel.into();
    }
    let cache_dir = match &args.cache_dir {
        Some(dir) => dir.clone(),
        None => crate::commands::default_cache_dir()?,
    };
    let runtime = crate::commands::runtime()?;
    let result = runtime.block_on(async {
        let ctrl_c = CtrlC::start();
        boot(&recipe, &cache_dir, args.offline, &ctrl_c).await
    });
    match result {
        Ok(()) => Ok(ExitStatus::Success),
        Err(err) => {
            let _ = report::write_error(&mut io::stderr().lock(), &err, err.hint(), out.stderr());
            Ok(err.exit_status())
        }
    }
}

/// Ctrl-C (or SIGTERM) as two tokens: the first signal cancels `first`, the second `second`.
struct CtrlC {
    first: CancellationToken,
    second: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl CtrlC {
    fn start() -> CtrlC {
        let (first, second) = (CancellationToken::new(), CancellationToken::new());
        let (f, s) = (first.clone(), second.clone());
        let task = tokio::spawn(async move {
            use tokio::signal::unix::{SignalKind, signal};
            let (Ok(mut int), Ok(mut term)) = (
                signal(SignalKind::interrupt()),
                signal(SignalKind::terminate()),
            ) else {
                return;
            };
            for token in [f, s] {
                tokio::select! {
                    _ = int.recv() => {}
                    _ = term.recv() => {}
                }
                token.cancel();
            }
        });
        CtrlC {
            first,
            second,
            task,
        }
    }
}

impl Drop for CtrlC {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn say(line: &str) {
    let _ = writeln!(io::stderr(), "{line}");
}

async fn boot(
    recipe: &recipe::Recipe,
    cache_dir: &Path,
    offline: bool,
    ctrl_c: &CtrlC,
) -> Result<(), BootError> {
    let cancel = &ctrl_c.first;
    let base = fetch_base(recipe, cache_dir, offline, cancel).await?;

    let runtime_dir = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|d| d.is_dir())
        .unwrap_or_else(std::env::temp_dir);
    // Short path (the QMP socket lives in it), mode 0700, removed when dropped.
    let run_dir = tempfile::Builder::new()
        .prefix("imgbake-boot-")
        .tempdir_in(&runtime_dir)
        .map_err(io_err("create a run directory in", &runtime_dir))?;
    let dir = run_dir.path();

    let keys = BuildKeys::generate();
    let keys_dir = dir.join("keys");
    keys.save(&keys_dir).map_err(|source| BootError::Keys {
        path: keys_dir.clone(),
        source: Box::new(source),
    })?;
    let seed = dir.join("seed.iso");
    // A fresh instance id per boot, so cloud-init runs in full.
    let instance_id = format!("imgbake-boot-{}", std::process::id());
    seed::write_iso(
        &pipeline::setup::seed_config(recipe, &instance_id, &keys),
        &seed,
    )
    .map_err(BootError::Seed)?;
    let disk = dir.join("disk.qcow2");
    let base_path = std::path::absolute(&base).map_err(io_err("resolve", &base))?;
    qemu_driver::overlay::create(&base_path, &disk, Some(recipe.vm.disk_size.as_u64()))
        .await
        .map_err(BootError::Vm)?;

    let config = pipeline::setup::vm_config(recipe, &disk, &dir.join("vm"), seed.clone());
    let keys = Arc::new(keys);
    let started = Instant::now();
    let boot_timeout = recipe.vm.boot_timeout;
    let ready = async |vm: &Vm| -> Result<GuestSession, BootError> {
        let accel = vm.accel();
        if let AccelReason::KvmFailed(why) = &accel.reason {
            say(&format!("warning: KVM failed ({why}); restarted under TCG"));
        }
        say(&format!(
            "booting {} ({accel}); serial console: {}",
            recipe.name,
            vm.serial_log().display()
        ));
        let target = SshTarget {
            addr: vm.ssh_addr(),
            user: pipeline::BUILD_USER.to_owned(),
            keys: keys.clone(),
            privilege: provisioner::Privilege::Sudo,
        };
        let deadline = tokio::time::Instant::now() + boot_timeout;
        let session = provisioner::wait_for_ssh(&target, deadline, cancel)
            .await
            .map_err(|e| BootError::Guest(Box::new(e)))?;
        say(&format!(
            "ssh answered after {:.1}s",
            started.elapsed().as_secs_f64()
        ));
        match session
            .cloud_init_wait(boot_timeout, cancel)
            .await
            .map_err(|e| BootError::Guest(Box::new(e)))?
        {
            CloudInitOutcome::Finished => {}
            CloudInitOutcome::FinishedWithErrors { detail } => {
                say(&format!(
                    "warning: cloud-init finished with errors: {detail}"
                ));
            }
            CloudInitOutcome::NeverRan { detail } => {
                return Err(BootError::CloudInitNeverRan { detail });
            }
        }
        say(&format!(
            "cloud-init finished after {:.1}s",
            started.elapsed().as_secs_f64()
        ));
        Ok(session)
    };
    let (vm, session) = match Vm::launch_with_fallback(config, cancel.clone(), ready).await {
        Ok((vm, Ok(session))) => (vm, session),
        Ok((vm, Err(e))) => {
            let _ = vm.kill().await;
            return Err(if cancel.is_cancelled() {
                BootError::Interrupted
            } else {
                e
            });
        }
        Err(_) if cancel.is_cancelled() => return Err(BootError::Interrupted),
        Err(e) => return Err(BootError::Vm(e)),
    };
    session.close().await;

    let known_hosts = dir.join("known_hosts");
    let addr = vm.ssh_addr();
    write_private(
        &known_hosts,
        &format!(
            "[{}]:{} {}\n",
            addr.ip(),
            addr.port(),
            keys.host_public_openssh()
        ),
    )?;
    let command =
        pipeline::setup::ssh_command(addr, &BuildKeys::user_key_path(&keys_dir), &known_hosts);
    let _ = writeln!(io::stdout(), "{command}");
    say(&format!(
        "the guest is up; run the command above to log in (user {} has passwordless sudo).\n\
         run directory: {} (removed at the end)\n\
         Ctrl-C powers the guest off.",
        pipeline::BUILD_USER,
        dir.display()
    ));

    tokio::select! {
        () = ctrl_c.first.cancelled() => {
            say("\npowering the guest off (Ctrl-C again to kill it)");
        }
        why = vm.wait_for_exit_or_error() => {
            // The user powered it off from inside, or QEMU died: either way it is over.
            say(&format!("the vm stopped: {why}"));
            return Ok(());
        }
    }
    tokio::select! {
        stopped = vm.shutdown(POWERDOWN_DEADLINE) => {
            match stopped {
                Ok(stopped) => say(&format!("stopped ({:?})", stopped.method)),
                Err(e) => return Err(BootError::Vm(e)),
            }
        }
        // Dropping the shutdown future drops the handle, which kills QEMU.
        () = ctrl_c.second.cancelled() => say("killed QEMU"),
    }
    Ok(())
}

async fn fetch_base(
    recipe: &recipe::Recipe,
    cache_dir: &Path,
    offline: bool,
    cancel: &CancellationToken,
) -> Result<PathBuf, BootError> {
    let fetch_err = |source| BootError::Fetch {
        recipe: recipe.name.clone(),
        source,
    };
    let cache = fetch::BaseCache::open(cache_dir.join("base")).map_err(fetch_err)?;
    let source = pipeline::setup::base_source(&recipe.base);
    let options = fetch::FetchOptions {
        offline,
        ..fetch::FetchOptions::default()
    };
    let last_report = std::sync::Mutex::new(Instant::now());
    let progress = |event: fetch::FetchEvent| {
        if let fetch::FetchEvent::Downloading { done, total } = event {
            let mut last = last_report.lock().unwrap_or_else(|e| e.into_inner());
            if last.elapsed() >= Duration::from_secs(5) {
                *last = Instant::now();
                let total = total.map_or("?".to_owned(), |t| indicatif::HumanBytes(t).to_string());
                say(&format!(
                    "fetching the base: {} of {total}",
                    indicatif::HumanBytes(done)
                ));
            }
        }
    };
    let base = cache
        .fetch(&source, &options, &progress, cancel.clone())
        .await
        .map_err(fetch_err)?;
    Ok(base.path)
}

/// Writes a file readable only by its owner.
fn write_private(path: &Path, text: &str) -> Result<(), BootError> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io_err("create", path))?;
    file.write_all(text.as_bytes())
        .map_err(io_err("write", path))
}
