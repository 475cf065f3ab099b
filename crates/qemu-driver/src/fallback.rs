//! `accel: auto` with a safety net: if KVM fails for this guest before it is ready, restart
//! once under TCG.

use std::path::Path;

use tokio_util::sync::CancellationToken;

use crate::accel::{Accel, AccelChoice, AccelDecision, AccelReason};
use crate::config::VmConfig;
use crate::error::{Error, Result};
use crate::launch;
use crate::overlay;
use crate::vm::Vm;

impl Vm {
    /// Launches like [`Vm::launch`] and runs `until_ready(&vm)` (e.g. "wait for SSH and
    /// cloud-init") while watching the VM. With [`AccelChoice::Auto`], if KVM fails — QEMU
    /// aborts in KVM setup or the guest stops with a KVM internal error — before `until_ready`
    /// finishes, QEMU is killed, the disk overlay is recreated empty on its backing file (a
    /// half-done first boot would confuse cloud-init), and the VM is restarted **once** under
    /// TCG. `until_ready` is then called again; at its start `vm.accel().reason` is
    /// [`AccelReason::KvmFailed`], so the caller can say loudly that it restarted.
    ///
    /// The disk must therefore be an overlay made for this run (see [`overlay::create`]).
    /// Any other failure of the VM is returned as the error; `until_ready`'s own result is
    /// returned as is.
    pub async fn launch_with_fallback<T>(
        config: VmConfig,
        cancel: CancellationToken,
        until_ready: impl AsyncFnMut(&Vm) -> T,
    ) -> Result<(Vm, T)> {
        let decision = crate::vm::decide_checked(&config)?;
        Self::launch_with_fallback_from(config, decision, cancel, until_ready).await
    }

    /// [`Vm::launch_with_fallback`] with the first accelerator decision given (no pre-checks).
    /// The TCG restart still happens only when `config.accel` is [`AccelChoice::Auto`].
    pub async fn launch_with_fallback_from<T>(
        config: VmConfig,
        decision: AccelDecision,
        cancel: CancellationToken,
        mut until_ready: impl AsyncFnMut(&Vm) -> T,
    ) -> Result<(Vm, T)> {
        let auto = config.accel == AccelChoice::Auto;
        let first = match launch::start(config.clone(), decision, &cancel).await {
            Ok(vm) => match run_until_ready(&vm, &cancel, &mut until_ready).await {
                Ok(value) => return Ok((vm, value)),
                Err(e) if auto && vm.accel.accel == Accel::Kvm && e.is_kvm_failure() => {
                    if let Err(kill_err) = vm.kill().await {
                        tracing::warn!("killing the failed kvm vm: {kill_err}");
                    }
                    e
                }
                Err(e) => return Err(e),
            },
            Err(e) if auto && e.is_kvm_failure() => e,
            Err(e) => return Err(e),
        };
        let why = match &first {
            Error::Kvm { detail, .. } => detail.clone(),
            other => other.to_string(),
        };
        tracing::warn!("kvm failed ({why}); restarting under tcg");
        reset_overlay(&config.disk).await?;
        let decision = AccelDecision {
            accel: Accel::Tcg,
            reason: AccelReason::KvmFailed(why),
        };
        let vm = launch::start(config, decision, &cancel).await?;
        let value = run_until_ready(&vm, &cancel, &mut until_ready).await?;
        Ok((vm, value))
    }
}

async fn run_until_ready<T>(
    vm: &Vm,
    cancel: &CancellationToken,
    until_ready: &mut impl AsyncFnMut(&Vm) -> T,
) -> Result<T> {
    tokio::select! {
        value = until_ready(vm) => Ok(value),
        error = vm.wait_for_exit_or_error() => Err(error),
        () = cancel.cancelled() => Err(Error::Cancelled { during: "booting the guest".into() }),
    }
}

/// Recreates `disk` as an empty overlay on its own backing file, same size.
async fn reset_overlay(disk: &Path) -> Result<()> {
    let info = overlay::info(disk).await?;
    match info.full_backing_filename.or(info.backing_filename) {
        Some(backing) => overlay::create(Path::new(&backing), disk, Some(info.virtual_size)).await,
        None => {
            tracing::warn!(
                "{} has no backing file; restarting on it as it is",
                disk.display()
            );
            Ok(())
        }
    }
}
