//! Resuming a build from a saved VM state instead of booting: find the state saved with the
//! newest reused layer ([`find_state`]), load it into a new QEMU on a fresh overlay over that
//! layer ([`restore`]), renew what must not be shared with the saved guest (wall clock,
//! entropy) and reconnect SSH with the chain's pinned host key. Any failure on the way is
//! the caller's cue to boot from the disk checkpoint instead, saying why.

use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use checkpoint::{CacheKey, CheckpointStore, SavedState};
use provisioner::{BuildKeys, SshTarget};
use qemu_driver::{AccelDecision, MachineProfile, StateKey, Vm, VmConfig};
use tokio_util::sync::CancellationToken;

use crate::boot::{Guest, Login};
use crate::events::{Emitter, secs};
use crate::{BakeEvent, Error, Result};

/// How many random bytes the restored guest's pool gets mixed in.
const ENTROPY_BYTES: usize = 64;

/// How long a restored guest gets to answer SSH. Its sshd is already listening, so this is
/// seconds even under a loaded TCG host; a guest that does not answer by then is better booted
/// than waited for (a boot's own timeout, `vm.boot_timeout`, is minutes).
pub(crate) const RESTORE_SSH_TIMEOUT: Duration = Duration::from_secs(120);

/// What saving and restoring states needs to know about this host's QEMU, probed once per
/// build.
#[derive(Clone, Debug)]
pub(crate) struct StateSupport {
    /// `qemu-system-x86_64 --version`'s first line.
    pub qemu_version: String,
}

impl StateSupport {
    /// `Ok` when states can be saved and restored here; `Err(reason)` otherwise.
    pub async fn probe(config: &VmConfig) -> std::result::Result<StateSupport, String> {
        if !qemu_driver::vmstate::compressor_available() {
            return Err(format!(
                "{} is not installed, so no vm state is saved or restored",
                qemu_driver::vmstate::STATE_COMPRESSOR
            ));
        }
        let qemu_version = qemu_driver::vmstate::qemu_version(&config.qemu_binary)
            .await
            .map_err(|e| format!("cannot tell qemu's version ({e})"))?;
        Ok(StateSupport { qemu_version })
    }

    /// The key of a state saved with `layer` on `config` under `accel`.
    pub fn key(
        &self,
        config: &VmConfig,
        accel: &AccelDecision,
        layer: &CacheKey,
    ) -> Result<(CacheKey, MachineProfile)> {
        let profile = MachineProfile::new(config, accel.accel, &self.qemu_version)?;
        let key = StateKey {
            layer: *layer,
            profile: profile.clone(),
        }
        .cache_key();
        Ok((key, profile))
    }
}

/// A person's summary of a machine profile, for the state's record.
pub(crate) fn describe(profile: &MachineProfile) -> String {
    format!(
        "{}; machine {}; {} cpu {}; {} vCPUs; {} MiB",
        profile.qemu_version,
        profile.machine,
        profile.accel,
        profile.cpu_model(),
        profile.cpus,
        profile.memory_mib
    )
}

/// The state saved with `layer` for this machine, or why there is none.
pub(crate) fn find_state(
    store: &CheckpointStore,
    support: &StateSupport,
    config: &VmConfig,
    layer: &CacheKey,
) -> std::result::Result<(SavedState, AccelDecision), String> {
    let accel = qemu_driver::accel::decide(config.accel);
    let (key, _) = support
        .key(config, &accel, layer)
        .map_err(|e| e.to_string())?;
    match store.lookup_state(&key) {
        Ok(Some(state)) => Ok((state, accel)),
        Ok(None) => {
            let any = store.states_of(layer).map_err(|e| e.to_string())?;
            Err(if any == 0 {
                "no vm state was saved with that checkpoint".into()
            } else {
                format!(
                    "the vm state saved with that checkpoint was made for another machine \
                     (qemu version, machine, cpu, memory or devices differ; now: {})",
                    MachineProfile::new(config, accel.accel, &support.qemu_version)
                        .map(|p| describe(&p))
                        .unwrap_or_default()
                )
            })
        }
        Err(e) => Err(e.to_string()),
    }
}

/// What [`restore`] needs.
pub(crate) struct RestoreRequest {
    /// The VM, as a boot would start it (its disk a fresh overlay over the state's layer).
    pub config: VmConfig,
    /// The accelerator the state's key was computed for.
    pub accel: AccelDecision,
    /// The state file.
    pub state: PathBuf,
    /// The step whose state it is (for the event).
    pub step_id: String,
    /// The chain's keys (the guest's pinned host key, the build user's key).
    pub keys: Arc<BuildKeys>,
    /// How long SSH gets to answer.
    pub timeout: Duration,
}

/// Loads the state, resumes the guest, reconnects SSH, resets the guest's clock to the host's
/// and feeds it fresh entropy. Every wait is raced against QEMU dying and `cancel`.
pub(crate) async fn restore(
    request: RestoreRequest,
    events: &Emitter,
    cancel: &CancellationToken,
) -> Result<Guest> {
    let started = Instant::now();
    let vm = Vm::restore(
        request.config,
        request.accel,
        &request.state,
        cancel.clone(),
    )
    .await?;
    let accel = vm.accel();
    events.emit(BakeEvent::VmStarted {
        accel: accel.accel.to_string(),
        reason: accel.to_string(),
        ssh_addr: vm.ssh_addr().to_string(),
        serial_log: vm.serial_log().to_path_buf(),
    });
    let login = Login::build();
    let target = SshTarget {
        addr: vm.ssh_addr(),
        user: login.user,
        keys: request.keys,
        privilege: provisioner::Privilege::Sudo,
        host_key: login.host_key,
    };
    let deadline = tokio::time::Instant::now() + request.timeout;
    // The clock and the entropy are renewed by the first step's command (one `sudo` round
    // trip less: ~0.4 s under TCG), before its script.
    let resumed = async {
        let session = provisioner::wait_for_ssh(&target, deadline, cancel).await?;
        Ok::<_, Error>((session, started.elapsed()))
    };
    let outcome = tokio::select! {
        outcome = resumed => outcome,
        error = vm.wait_for_exit_or_error() => Err(error.into()),
    };
    match outcome {
        Ok((session, ssh_ready)) => {
            events.emit(BakeEvent::VmStateRestored {
                id: request.step_id,
                after_secs: secs(started.elapsed()),
            });
            Ok(Guest {
                vm,
                session,
                started,
                ssh_ready,
                needs_renewal: true,
            })
        }
        Err(e) => {
            let _ = vm.kill().await;
            Err(e)
        }
    }
}

/// The root commands run first in a restored guest (before the first step's script, in its
/// command): its wall clock is the saved moment's, so it is set from the host's now; and its
/// entropy pool is the saved one, shared with every other restore of the same state, so host
/// random bytes are mixed in (through `/dev/urandom`: mixed, not credited).
pub(crate) fn renew_command() -> Result<String> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let mut bytes = [0u8; ENTROPY_BYTES];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(crate::error::io_err("read", "/dev/urandom"))?;
    Ok(renew_command_with(now, &bytes))
}

fn renew_command_with(now: Duration, bytes: &[u8]) -> String {
    // printf's octal escapes are POSIX (dash has no \x): binary-safe without base64 or xxd.
    let escaped: String = bytes.iter().map(|b| format!("\\{b:03o}")).collect();
    format!(
        "date -u -s @{}.{:09} >/dev/null && printf '{escaped}' > /dev/urandom",
        now.as_secs(),
        now.subsec_nanos()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_renew_command_sets_the_clock_and_writes_the_bytes() {
        let cmd = renew_command_with(Duration::new(1_796_129_945, 5), &[0, 7, 255, b'\'']);
        assert_eq!(
            cmd,
            r"date -u -s @1796129945.000000005 >/dev/null && printf '\000\007\377\047' > /dev/urandom"
        );
    }
}
