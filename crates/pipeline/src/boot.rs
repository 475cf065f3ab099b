//! Booting a build VM and getting an SSH session into it: [`boot`] is what a build does before
//! its first step, and [`boot_interactive`] (`imgbake boot`) does the same for a person.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use provisioner::{BuildKeys, CloudInitOutcome, GuestSession, SshTarget};
use qemu_driver::{AccelReason, Vm, VmConfig};
use recipe::Recipe;
use tokio::sync::mpsc::UnboundedSender;
use tokio_util::sync::CancellationToken;

use crate::error::io_err;
use crate::events::{Emitter, secs};
use crate::{BakeEvent, Cancel, Error, Result};

/// How long a guest gets to power off before QEMU is told to quit.
pub(crate) const POWERDOWN_DEADLINE: Duration = Duration::from_secs(120);

/// A running build VM with an authenticated session.
pub struct Guest {
    /// The VM (owns QEMU).
    pub vm: Vm,
    /// The SSH session as the build user.
    pub session: GuestSession,
    /// When QEMU was started.
    pub started: Instant,
    /// Time from QEMU start until SSH answered.
    pub ssh_ready: Duration,
    /// Restored from a VM state: its clock and entropy are the saved moment's until the first
    /// command renews them ([`crate::resume::renew_command`]).
    pub needs_renewal: bool,
}

/// What [`boot`] needs.
pub struct BootRequest {
    /// QEMU settings (disk, seed, accel, …).
    pub config: VmConfig,
    /// The keys the seed was written with.
    pub keys: Arc<BuildKeys>,
    /// Whom to log in as and which host key to accept.
    pub login: Login,
    /// How long SSH and cloud-init each get.
    pub boot_timeout: Duration,
}

/// Whom [`boot`] logs in as, and how it checks the host key.
pub struct Login {
    /// The user the seed created.
    pub user: String,
    /// Pinned for builds; trusted on first use for `imgbake test`.
    pub host_key: provisioner::HostKeyPolicy,
}

impl Login {
    /// The build user, host key pinned.
    pub fn build() -> Self {
        Login {
            user: crate::BUILD_USER.to_owned(),
            host_key: provisioner::HostKeyPolicy::Pinned,
        }
    }
}

/// Starts QEMU (restarting once under TCG if `auto` picked KVM and KVM failed), waits for SSH
/// and for cloud-init. Everything is raced against QEMU dying and against `cancel`.
pub(crate) async fn boot(
    request: BootRequest,
    events: &Emitter,
    cancel: &CancellationToken,
) -> Result<Guest> {
    let BootRequest {
        config,
        keys,
        login,
        boot_timeout,
    } = request;
    let started = Instant::now();
    let serial_log = config.run_dir.join("serial.log");
    let ready = async |vm: &Vm| -> Result<(GuestSession, Duration)> {
        let accel = vm.accel();
        if let AccelReason::KvmFailed(why) = &accel.reason {
            events.emit(BakeEvent::RestartedUnderTcg {
                reason: why.clone(),
            });
        }
        events.emit(BakeEvent::VmStarted {
            accel: accel.accel.to_string(),
            reason: accel.to_string(),
            ssh_addr: vm.ssh_addr().to_string(),
            serial_log: vm.serial_log().to_path_buf(),
        });
        let target = SshTarget {
            addr: vm.ssh_addr(),
            user: login.user.clone(),
            keys: keys.clone(),
            privilege: provisioner::Privilege::Sudo,
            host_key: login.host_key,
        };
        let deadline = tokio::time::Instant::now() + boot_timeout;
        let session = provisioner::wait_for_ssh(&target, deadline, cancel).await?;
        let ssh_ready = started.elapsed();
        events.emit(BakeEvent::SshReady {
            after_secs: secs(ssh_ready),
        });
        match session.cloud_init_wait(boot_timeout, cancel).await? {
            CloudInitOutcome::Finished => {}
            CloudInitOutcome::FinishedWithErrors { detail } => {
                events.emit(BakeEvent::CloudInitWarning { detail });
            }
            CloudInitOutcome::NeverRan { detail } => {
                return Err(Error::CloudInitNeverRan {
                    detail,
                    serial_log: serial_log.clone(),
                });
            }
        }
        events.emit(BakeEvent::CloudInitDone {
            after_secs: secs(started.elapsed()),
        });
        Ok((session, ssh_ready))
    };
    let (vm, ready) = Vm::launch_with_fallback(config, cancel.clone(), ready).await?;
    let (session, ssh_ready) = match ready {
        Ok(ready) => ready,
        Err(e) => {
            let _ = vm.kill().await;
            return Err(e);
        }
    };
    Ok(Guest {
        vm,
        session,
        started,
        ssh_ready,
        needs_renewal: false,
    })
}

/// Powers the guest off; a second signal (`cancel.hard`) kills QEMU instead.
pub(crate) async fn stop_vm(vm: Vm, events: &Emitter, cancel: &Cancel) {
    events.emit(BakeEvent::ShuttingDown);
    tokio::select! {
        stopped = vm.shutdown(POWERDOWN_DEADLINE) => {
            if let Err(e) = stopped {
                events.emit(BakeEvent::Warning { message: format!("powering the guest off: {e}") });
            }
        }
        () = cancel.hard.cancelled() => {}
    }
}

/// `imgbake boot`: what to boot.
#[derive(Clone, Debug)]
pub struct InteractiveBoot {
    /// The recipe whose base image and VM settings to use.
    pub recipe: Recipe,
    /// The cache root (holding `base/`).
    pub cache_dir: PathBuf,
    /// Where the private run directory is made (short, for the QMP socket path).
    pub runtime_dir: PathBuf,
    /// Use only a cached base image.
    pub offline: bool,
}

/// Boots the recipe's base image as a build would (fresh overlay grown to the disk size, the
/// build seed with new keys and a fresh instance id, the recipe's VM settings), emits
/// [`BakeEvent::GuestReady`] with the ssh command, and keeps the guest up until `cancel`
/// (then powers it off) or until it stops by itself ([`BakeEvent::VmStopped`]). Nothing is
/// written to the cache but the base image; the run directory is removed at the end.
pub async fn boot_interactive(
    request: InteractiveBoot,
    events: UnboundedSender<BakeEvent>,
    cancel: Cancel,
) -> Result<()> {
    let events = Emitter::new(events);
    let recipe = &request.recipe;
    let base = crate::build::fetch_base(
        &crate::build::FetchRequest {
            recipe,
            cache_dir: &request.cache_dir,
            offline: request.offline,
        },
        &events,
        &cancel.graceful,
    )
    .await?;
    let boot_base =
        crate::build::plain_base(&request.cache_dir, &base, &events, &cancel.graceful).await?;
    // Short path (the QMP socket lives in it), mode 0700, removed when dropped.
    let run_dir = tempfile::Builder::new()
        .prefix("imgbake-boot-")
        .tempdir_in(&request.runtime_dir)
        .map_err(io_err("create a run directory in", &request.runtime_dir))?;
    let dir = run_dir.path();

    let keys = BuildKeys::generate();
    let keys_dir = dir.join("keys");
    keys.save(&keys_dir)
        .map_err(|e| io_err("write the ssh keys to", &keys_dir)(std::io::Error::other(e)))?;
    let seed = dir.join("seed.iso");
    // A fresh instance id per boot, so cloud-init runs in full.
    let instance_id = format!("imgbake-boot-{}", std::process::id());
    seed::write_iso(&crate::setup::seed_config(&instance_id, &keys), &seed)?;
    let disk = dir.join("disk.qcow2");
    qemu_driver::overlay::create(&boot_base, &disk, Some(recipe.vm.disk_size.as_u64())).await?;

    let keys = Arc::new(keys);
    let booted = boot(
        BootRequest {
            config: crate::setup::vm_config(recipe, &disk, &dir.join("vm"), seed),
            keys: keys.clone(),
            login: Login::build(),
            boot_timeout: recipe.vm.boot_timeout,
        },
        &events,
        &cancel.graceful,
    )
    .await;
    let Guest { vm, session, .. } = match booted {
        Ok(guest) => guest,
        Err(_) if cancel.graceful.is_cancelled() => {
            return Err(Error::Interrupted {
                last_checkpoint: None,
            });
        }
        Err(e) => return Err(e),
    };
    session.close().await;

    let known_hosts = crate::setup::write_known_hosts(dir, vm.ssh_addr(), &keys)?;
    events.emit(BakeEvent::GuestReady {
        ssh_command: crate::setup::ssh_command(
            vm.ssh_addr(),
            &BuildKeys::user_key_path(&keys_dir),
            &known_hosts,
        ),
        run_dir: dir.to_owned(),
        user: crate::BUILD_USER.to_owned(),
    });
    tokio::select! {
        () = cancel.graceful.cancelled() => {}
        why = vm.wait_for_exit_or_error() => {
            // Powered off from inside, or QEMU died: either way it is over.
            events.emit(BakeEvent::VmStopped { why: why.to_string() });
            return Ok(());
        }
    }
    stop_vm(vm, &events, &cancel).await;
    Ok(())
}
