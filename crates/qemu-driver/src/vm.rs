//! The [`Vm`] handle: owns a running QEMU, watches it, stops it.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::Path;
use std::process::ExitStatus;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{broadcast, watch};
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::accel::{self, Accel, AccelDecision};
use crate::config::{RunPaths, VmConfig};
use crate::error::{Error, Result, Tails};
use crate::launch;
use crate::process::{self, StderrTail};
use crate::qmp::{Qmp, QmpEvent};
use crate::state::VmState;
use crate::supervisor::VmStatus;

/// How long `quit` may take before QEMU is killed.
const QUIT_GRACE: Duration = Duration::from_secs(10);
/// How long QEMU may take to exit after its SHUTDOWN event before that is reported.
const SHUTDOWN_TO_EXIT: Duration = Duration::from_secs(1);
/// How long a SIGKILLed QEMU may take to be reaped.
const KILL_GRACE: Duration = Duration::from_secs(10);

/// How [`Vm::shutdown`] ended up stopping QEMU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopMethod {
    /// The guest powered off after `system_powerdown` (the clean path).
    Powerdown,
    /// The guest did not power off in time; QEMU was told to `quit`.
    Quit,
    /// QEMU did not quit in time and was killed.
    Kill,
    /// QEMU had already exited.
    AlreadyExited,
}

/// The result of [`Vm::shutdown`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stopped {
    /// QEMU's exit status.
    pub status: ExitStatus,
    /// How it was stopped.
    pub method: StopMethod,
}

/// The current top of the guest disk's block graph.
#[derive(Debug, Clone)]
pub(crate) struct BlockTop {
    /// Node name of the top format node.
    pub node: String,
    /// How many layers were added on top of the launch disk.
    pub layers: u32,
}

/// A running QEMU. Stop it with [`Vm::shutdown`] (graceful) or [`Vm::kill`]; dropping it
/// kills QEMU as a backstop.
pub struct Vm {
    pub(crate) config: VmConfig,
    pub(crate) paths: RunPaths,
    pub(crate) accel: AccelDecision,
    pub(crate) ssh_port: u16,
    pub(crate) pid: u32,
    pub(crate) qmp: Qmp,
    pub(crate) status: watch::Receiver<VmStatus>,
    pub(crate) kill: CancellationToken,
    /// Cancels `kill` when the handle is dropped: the supervisor then kills and reaps QEMU.
    pub(crate) _kill_guard: DropGuard,
    pub(crate) stderr: Arc<StderrTail>,
    pub(crate) block: tokio::sync::Mutex<BlockTop>,
}

impl std::fmt::Debug for Vm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vm")
            .field("name", &self.config.name)
            .field("pid", &self.pid)
            .field("ssh_port", &self.ssh_port)
            .field("accel", &self.accel)
            .field("state", &self.state())
            .finish_non_exhaustive()
    }
}

impl Vm {
    /// Starts QEMU for `config` and lets the guest run. Decides the accelerator (see
    /// [`Vm::accel`]), creates the run directory, forwards a free port to the guest's SSH
    /// (retrying if QEMU cannot bind it) and completes the QMP handshake. `cancel` aborts the
    /// start (QEMU is killed); once running, the VM ignores it — stop it with
    /// [`Vm::shutdown`] or [`Vm::kill`].
    ///
    /// Must be called inside a tokio runtime (QEMU is spawned through [`child::spawn`]: own
    /// process group, killed with imgbake; see [`crate::process::spawn`]).
    ///
    /// With [`AccelChoice::Kvm`](crate::AccelChoice::Kvm) on a machine whose `/dev/kvm` comes
    /// from `kvm_pvm` alone ([`accel::KvmBackend::Pvm`]), this fails at once with
    /// [`Error::Kvm`] instead of booting a guest that would crash minutes later.
    pub async fn launch(config: VmConfig, cancel: CancellationToken) -> Result<Vm> {
        let decision = decide_checked(&config)?;
        launch::start(config, decision, &cancel).await
    }

    /// Like [`Vm::launch`] with the accelerator decision given and no pre-checks (used for
    /// the TCG restart, and to force KVM where the pre-check would refuse it).
    pub async fn launch_with_accel(
        config: VmConfig,
        accel: AccelDecision,
        cancel: CancellationToken,
    ) -> Result<Vm> {
        launch::start(config, accel, &cancel).await
    }

    /// The accelerator in use and why (its `Display` is a sentence for the user).
    pub fn accel(&self) -> &AccelDecision {
        &self.accel
    }

    /// Where the guest's SSH is reachable: `127.0.0.1:<forwarded port>`.
    pub fn ssh_addr(&self) -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, self.ssh_port))
    }

    /// QEMU's pid.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The configuration it was started with.
    pub fn config(&self) -> &VmConfig {
        &self.config
    }

    /// Files in the run directory (serial log, QEMU log …).
    pub fn paths(&self) -> &RunPaths {
        &self.paths
    }

    /// The serial console log.
    pub fn serial_log(&self) -> &Path {
        &self.paths.serial_log
    }

    /// The QMP session, for commands this handle does not wrap.
    pub fn qmp(&self) -> &Qmp {
        &self.qmp
    }

    /// The current state.
    pub fn state(&self) -> VmState {
        self.status.borrow().state
    }

    /// A watch on the VM's status (state, exit status, shutdown cause, reset count).
    pub fn status(&self) -> watch::Receiver<VmStatus> {
        self.status.clone()
    }

    /// QMP events from now on (all of them, including unknown ones as `Other`).
    pub fn events(&self) -> broadcast::Receiver<QmpEvent> {
        self.qmp.events()
    }

    /// The last lines of QEMU's stderr and of the serial console right now.
    pub fn tails(&self) -> Tails {
        process::tails(&self.stderr, &self.paths.serial_log)
    }

    /// Asks QEMU for the run state (`query-status`), parsed loosely.
    pub async fn query_status(&self) -> Result<VmState> {
        let value = self
            .qmp
            .execute_as::<_, serde_json::Value>(qapi::qmp::query_status {})
            .await?;
        let status = value.get("status").and_then(|s| s.as_str()).unwrap_or("");
        Ok(VmState::from_run_state(status))
    }

    /// The error that describes `status` if the VM can no longer do work, else `None`.
    fn failure(&self, status: &VmStatus) -> Option<Error> {
        let tails = || self.tails();
        let kvm = self.accel.accel == Accel::Kvm;
        match status.state {
            VmState::Starting | VmState::Running | VmState::Paused => None,
            VmState::InternalError if kvm => Some(self.kvm_error()),
            VmState::InternalError | VmState::GuestPanicked | VmState::IoError => {
                Some(Error::Stopped {
                    state: status.state,
                    tails: tails(),
                })
            }
            VmState::ShuttingDown => Some(Error::ShutDown {
                reason: status
                    .shutdown
                    .as_ref()
                    .map_or_else(|| "no reason given".into(), |c| c.reason.clone()),
                tails: tails(),
            }),
            VmState::Exited => {
                let tails = tails();
                match status.exit {
                    Some(_) if kvm && accel::stderr_shows_kvm_failure(&tails.stderr) => {
                        Some(self.kvm_error())
                    }
                    // Exit 0 after a SHUTDOWN event: say why it shut down.
                    Some(exit) if exit.success() && status.shutdown.is_some() => {
                        Some(Error::ShutDown {
                            reason: status
                                .shutdown
                                .as_ref()
                                .map_or_else(String::new, |c| c.reason.clone()),
                            tails,
                        })
                    }
                    Some(exit) => Some(Error::Exited {
                        status: exit,
                        tails,
                    }),
                    None => Some(Error::Wait {
                        pid: self.pid,
                        source: std::io::Error::other("exit status unavailable"),
                    }),
                }
            }
        }
    }

    /// A KVM failure, quoting QEMU's stderr from its KVM line on (QEMU follows "KVM internal
    /// error" with a register dump longer than the usual tail).
    fn kvm_error(&self) -> Error {
        let stderr = self.stderr.last(200);
        let mut tails = self.tails();
        if let Some(start) = stderr.lines().position(is_kvm_line) {
            tails.stderr = stderr
                .lines()
                .skip(start)
                .take(40)
                .collect::<Vec<_>>()
                .join("\n");
        }
        Error::Kvm {
            detail: kvm_detail(&stderr),
            tails,
        }
    }

    /// `Err` at once if the VM has died or stopped for good (see
    /// [`Vm::wait_for_exit_or_error`]); `Ok` while it can still run the guest.
    pub fn check(&self) -> Result<()> {
        match self.failure(&self.status.borrow()) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Resolves when the VM can no longer do work, with the error that says why: QEMU exited
    /// or crashed ([`Error::Exited`]), KVM failed ([`Error::Kvm`], with the advice to use
    /// `--accel tcg`), the guest panicked or hit an I/O error ([`Error::Stopped`]), or it shut
    /// down ([`Error::ShutDown`]). Every error quotes the tails of QEMU's stderr and the serial
    /// console. Meant for `select!` next to SSH waits and step runs; it is noticed as soon as
    /// the supervisor sees the event or QEMU's exit.
    pub async fn wait_for_exit_or_error(&self) -> Error {
        let mut status = self.status.clone();
        loop {
            let current = status.borrow_and_update().clone();
            if current.state == VmState::ShuttingDown {
                // QEMU exits right after SHUTDOWN; wait (briefly) for the exit so the error has
                // the exit status and all of stderr.
                let _ = tokio::time::timeout(
                    SHUTDOWN_TO_EXIT,
                    status.wait_for(|s| s.state == VmState::Exited),
                )
                .await;
                let last = status.borrow().clone();
                return self.failure(&last).unwrap_or_else(|| self.gone());
            }
            if let Some(error) = self.failure(&current) {
                return error;
            }
            if status.changed().await.is_err() {
                // The supervisor is gone, which only happens after QEMU exited.
                let last = status.borrow().clone();
                return self.failure(&last).unwrap_or_else(|| self.gone());
            }
        }
    }

    fn gone(&self) -> Error {
        Error::QmpClosed {
            command: "(supervision)".into(),
        }
    }

    async fn wait_exited(&self, within: Duration) -> Option<ExitStatus> {
        let mut status = self.status.clone();
        let exited = status.wait_for(|s| s.state == VmState::Exited);
        match tokio::time::timeout(within, exited).await {
            Ok(Ok(s)) => s.exit,
            // Supervisor gone: QEMU has exited; use what it recorded.
            Ok(Err(_)) => self.status.borrow().exit,
            Err(_) => None,
        }
    }

    /// Stops the VM the clean way: `system_powerdown` (ACPI), wait up to `powerdown_deadline`
    /// for the guest to power off and QEMU to exit, then `quit`, then SIGKILL; QEMU is reaped
    /// in every case. A guest that powers off cleanly gives exit status 0 and
    /// [`StopMethod::Powerdown`]. A guest that is not running (paused, stopped by an error)
    /// cannot act on the power button, so it goes straight to `quit`; so does one that stops
    /// for good while powering off. To abort a shutdown, drop the future: the handle goes with
    /// it and QEMU is killed.
    pub async fn shutdown(self, powerdown_deadline: Duration) -> Result<Stopped> {
        if let Some(status) = self.status.borrow().exit {
            return Ok(Stopped {
                status,
                method: StopMethod::AlreadyExited,
            });
        }
        // Only a running guest can act on the ACPI power button.
        if self.state() == VmState::Running {
            match self.qmp.execute(qapi::qmp::system_powerdown {}).await {
                Ok(_) | Err(Error::QmpClosed { .. }) => {}
                Err(e) => tracing::debug!("system_powerdown: {e}"),
            }
            let mut status = self.status.clone();
            // Stop waiting early if the guest stops for good instead of powering off.
            let done = status.wait_for(|s| {
                matches!(
                    s.state,
                    VmState::Exited
                        | VmState::InternalError
                        | VmState::GuestPanicked
                        | VmState::IoError
                )
            });
            let _ = tokio::time::timeout(powerdown_deadline, done).await;
            let exited = self.status.borrow().exit;
            if let Some(status) = exited {
                return Ok(Stopped {
                    status,
                    method: StopMethod::Powerdown,
                });
            }
        }
        tracing::debug!(
            "guest did not power off (state {}); sending quit",
            self.state()
        );
        if let Err(e) = tokio::time::timeout(QUIT_GRACE, self.qmp.quit()).await {
            tracing::debug!("quit: {e}");
        }
        if let Some(status) = self.wait_exited(QUIT_GRACE).await {
            return Ok(Stopped {
                status,
                method: StopMethod::Quit,
            });
        }
        self.kill_now().await.map(|status| Stopped {
            status,
            method: StopMethod::Kill,
        })
    }

    /// Kills QEMU (SIGKILL) and reaps it.
    pub async fn kill(self) -> Result<ExitStatus> {
        self.kill_now().await
    }

    async fn kill_now(&self) -> Result<ExitStatus> {
        self.kill.cancel();
        self.wait_exited(KILL_GRACE)
            .await
            .ok_or_else(|| Error::Timeout {
                during: format!("waiting for qemu (pid {}) to exit after SIGKILL", self.pid),
                after: KILL_GRACE,
                tails: self.tails(),
            })
    }
}

/// The accelerator for `config`; refuses an explicit `kvm` where `/dev/kvm` is `kvm_pvm` alone.
pub(crate) fn decide_checked(config: &VmConfig) -> Result<AccelDecision> {
    if config.accel == crate::AccelChoice::Kvm
        && accel::kvm_backend(Path::new(accel::SYS_MODULE)) == accel::KvmBackend::Pvm
    {
        return Err(Error::Kvm {
            detail: accel::PVM_REASON.into(),
            tails: Tails::default(),
        });
    }
    Ok(accel::decide(config.accel))
}

fn is_kvm_line(line: &str) -> bool {
    accel::stderr_shows_kvm_failure(line)
}

/// The line of QEMU's stderr that names the KVM failure, or a generic description.
fn kvm_detail(stderr: &str) -> String {
    stderr
        .lines()
        .find(|l| is_kvm_line(l))
        .map(|l| l.trim().to_owned())
        .unwrap_or_else(|| "the guest stopped with internal-error".into())
}
