//! Booting the build VM and getting an SSH session into it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use provisioner::{BuildKeys, CloudInitOutcome, GuestSession, SshTarget};
use qemu_driver::{AccelReason, Vm, VmConfig};
use tokio_util::sync::CancellationToken;

use crate::bake::Emitter;
use crate::events::secs;
use crate::{BakeEvent, Error, Result};

/// A running build VM with an authenticated session.
pub(crate) struct Guest {
    pub vm: Vm,
    pub session: GuestSession,
    pub started: Instant,
    /// Time from QEMU start until SSH answered.
    pub ssh_ready: Duration,
}

/// Starts QEMU (restarting once under TCG if `auto` picked KVM and KVM failed), waits for SSH
/// and for cloud-init. Everything is raced against QEMU dying and against `cancel`.
pub(crate) async fn boot(
    config: VmConfig,
    keys: Arc<BuildKeys>,
    boot_timeout: Duration,
    events: &Emitter,
    cancel: &CancellationToken,
) -> Result<Guest> {
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
            user: crate::BUILD_USER.to_owned(),
            keys: keys.clone(),
            privilege: provisioner::Privilege::Sudo,
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
    let (session, ssh_ready) = ready?;
    Ok(Guest {
        vm,
        session,
        started,
        ssh_ready,
    })
}
