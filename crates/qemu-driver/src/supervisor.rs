//! The task that owns the QEMU child: reaps it, kills it on request, and turns QMP events into
//! [`VmState`] changes published on a watch channel.

use std::process::ExitStatus;
use std::time::Duration;

use tokio::process::Child;
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::qmp::{Qmp, QmpEvent};
use crate::state::VmState;

/// How long a `query-status` after a `STOP` may take before the supervisor moves on.
const STATUS_QUERY_TIMEOUT: Duration = Duration::from_secs(5);
/// Quiet time on stderr after which QEMU is taken to have finished explaining a failure.
const STDERR_QUIET: Duration = Duration::from_millis(100);
/// Upper bound for that wait.
const STDERR_SETTLE_CAP: Duration = Duration::from_secs(1);
/// How long to wait for the stderr drain to reach EOF once QEMU has exited.
const DRAIN_GRACE: Duration = Duration::from_secs(1);

/// Why QEMU announced a shutdown (`SHUTDOWN` event).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShutdownCause {
    /// Whether the guest asked for it.
    pub guest: bool,
    /// QEMU's reason (`guest-shutdown`, `host-qmp-quit`, `host-signal` …).
    pub reason: String,
}

/// What the supervisor knows about the VM; watch it with [`crate::Vm::status`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmStatus {
    /// Current state.
    pub state: VmState,
    /// QEMU's exit status once it exited.
    pub exit: Option<ExitStatus>,
    /// The last `SHUTDOWN` event's cause.
    pub shutdown: Option<ShutdownCause>,
    /// How many times the guest was reset (rebooted).
    pub resets: u32,
}

impl VmStatus {
    pub(crate) fn new(state: VmState) -> Self {
        Self {
            state,
            exit: None,
            shutdown: None,
            resets: 0,
        }
    }
}

pub(crate) struct Supervisor {
    pub child: Child,
    pub qmp: Qmp,
    pub events: broadcast::Receiver<QmpEvent>,
    pub status: watch::Sender<VmStatus>,
    pub kill: CancellationToken,
    pub drain: JoinHandle<()>,
    pub stderr: std::sync::Arc<crate::process::StderrTail>,
}

fn set_state(status: &watch::Sender<VmStatus>, to: VmState) {
    status.send_if_modified(|s| {
        if s.state == to {
            return false;
        }
        match s.state.valid_transition(to) {
            Ok(()) => {
                tracing::debug!("vm state {} -> {}", s.state, to);
                s.state = to;
                true
            }
            // Terminal states stick (e.g. a STOP after SHUTDOWN); ignore such events.
            Err(e) => {
                tracing::debug!("ignoring vm state change: {e}");
                false
            }
        }
    });
}

impl Supervisor {
    pub(crate) async fn run(mut self) {
        let mut killing = false;
        let mut events_open = true;
        let exit = loop {
            tokio::select! {
                exit = self.child.wait() => break exit,
                () = self.kill.cancelled(), if !killing => {
                    killing = true;
                    if let Err(e) = self.child.start_kill() {
                        tracing::debug!("killing qemu: {e}");
                    }
                }
                event = self.events.recv(), if events_open => match event {
                    Ok(event) => self.on_event(event).await,
                    // Missed events: ask QEMU where it stands.
                    Err(broadcast::error::RecvError::Lagged(_)) => self.refresh().await,
                    Err(broadcast::error::RecvError::Closed) => events_open = false,
                },
            }
        };
        // QEMU closed stderr by exiting; give the drain a moment to write the last lines.
        let _ = tokio::time::timeout(DRAIN_GRACE, &mut self.drain).await;
        self.status.send_modify(|s| {
            s.state = VmState::Exited;
            s.exit = exit.as_ref().ok().copied();
        });
        if let Err(e) = exit {
            tracing::warn!("waiting for qemu failed: {e}");
        }
    }

    async fn on_event(&mut self, event: QmpEvent) {
        match event {
            QmpEvent::Stop => self.refresh().await,
            QmpEvent::Resume => set_state(&self.status, VmState::Running),
            QmpEvent::Shutdown { guest, reason } => {
                self.status
                    .send_modify(|s| s.shutdown = Some(ShutdownCause { guest, reason }));
                set_state(&self.status, VmState::ShuttingDown);
            }
            QmpEvent::GuestPanicked { .. } => set_state(&self.status, VmState::GuestPanicked),
            QmpEvent::Reset { .. } => self.status.send_modify(|s| s.resets += 1),
            _ => {}
        }
    }

    /// Reads the run state with `query-status` (a `STOP` event does not say why).
    async fn refresh(&mut self) {
        let query = self
            .qmp
            .execute_as::<_, serde_json::Value>(qapi::qmp::query_status {});
        match tokio::time::timeout(STATUS_QUERY_TIMEOUT, query).await {
            Ok(Ok(value)) => {
                let status = value.get("status").and_then(|s| s.as_str()).unwrap_or("");
                let state = VmState::from_run_state(status);
                if matches!(state, VmState::InternalError | VmState::GuestPanicked) {
                    // Let QEMU's explanation reach the stderr tail before anyone quotes it.
                    self.stderr.settle(STDERR_QUIET, STDERR_SETTLE_CAP).await;
                }
                set_state(&self.status, state);
            }
            Ok(Err(e)) => tracing::debug!("query-status after STOP: {e}"),
            Err(_) => tracing::debug!("query-status after STOP timed out"),
        }
    }
}
