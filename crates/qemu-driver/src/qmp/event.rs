//! QMP events, parsed loosely.
//!
//! qapi 0.15's `Event` enum has no catch-all: an event or enum value it does not know fails to
//! deserialize and ends its whole stream (DESIGN.md §4). Here every event parses: the ones the
//! driver acts on get a variant with their enum values kept as strings, and anything else —
//! or a known event whose data has an unexpected shape — becomes [`QmpEvent::Other`].

use serde::Deserialize;
use serde_json::Value;

/// Which `BLOCK_JOB_*` event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockJobEventKind {
    /// `BLOCK_JOB_COMPLETED`.
    Completed,
    /// `BLOCK_JOB_CANCELLED`.
    Cancelled,
    /// `BLOCK_JOB_ERROR`.
    Error,
    /// `BLOCK_JOB_READY`.
    Ready,
    /// `BLOCK_JOB_PENDING`.
    Pending,
}

/// One asynchronous message from QEMU.
#[derive(Debug, Clone, PartialEq)]
pub enum QmpEvent {
    /// QEMU is shutting down. `guest` is true when the guest asked for it; `reason` is QEMU's
    /// `ShutdownCause` (`guest-shutdown`, `host-qmp-quit`, `host-signal` …).
    Shutdown {
        /// Whether the guest initiated it.
        guest: bool,
        /// QEMU's reason.
        reason: String,
    },
    /// The guest stopped running (paused, internal error, I/O error …; `query-status` says why).
    Stop,
    /// The guest runs again.
    Resume,
    /// The guest was reset (e.g. rebooted).
    Reset {
        /// Whether the guest initiated it.
        guest: bool,
        /// QEMU's reason.
        reason: String,
    },
    /// `system_powerdown` reached the guest (ACPI power button pressed).
    Powerdown,
    /// The guest kernel panicked (pvpanic); `action` is what QEMU does about it.
    GuestPanicked {
        /// `pause`, `poweroff`, `run` …
        action: String,
    },
    /// A job changed status (`created`, `running`, `concluded` …).
    JobStatusChange {
        /// Job id.
        id: String,
        /// New status.
        status: String,
    },
    /// A block job finished, failed, became ready or pending.
    BlockJob {
        /// Which event.
        kind: BlockJobEventKind,
        /// Job id / device.
        device: String,
        /// Error text, if the job failed.
        error: Option<String>,
    },
    /// Any other event, or a known one with data of an unexpected shape.
    Other {
        /// The event name.
        name: String,
        /// Its `data` (or `null`).
        data: Value,
    },
}

#[derive(Deserialize)]
struct ShutdownData {
    guest: bool,
    reason: String,
}

#[derive(Deserialize)]
struct PanicData {
    action: String,
}

#[derive(Deserialize)]
struct JobData {
    id: String,
    status: String,
}

#[derive(Deserialize)]
struct BlockJobData {
    device: String,
    #[serde(default)]
    error: Option<String>,
}

impl QmpEvent {
    /// Builds an event from its name and data; never fails.
    pub fn from_parts(name: &str, data: Value) -> QmpEvent {
        fn typed<T: for<'de> Deserialize<'de>>(data: &Value) -> Option<T> {
            T::deserialize(data).ok()
        }
        let block_kind = match name {
            "BLOCK_JOB_COMPLETED" => Some(BlockJobEventKind::Completed),
            "BLOCK_JOB_CANCELLED" => Some(BlockJobEventKind::Cancelled),
            "BLOCK_JOB_ERROR" => Some(BlockJobEventKind::Error),
            "BLOCK_JOB_READY" => Some(BlockJobEventKind::Ready),
            "BLOCK_JOB_PENDING" => Some(BlockJobEventKind::Pending),
            _ => None,
        };
        let parsed = match name {
            "SHUTDOWN" => typed::<ShutdownData>(&data).map(|d| QmpEvent::Shutdown {
                guest: d.guest,
                reason: d.reason,
            }),
            "RESET" => typed::<ShutdownData>(&data).map(|d| QmpEvent::Reset {
                guest: d.guest,
                reason: d.reason,
            }),
            "STOP" => Some(QmpEvent::Stop),
            "RESUME" => Some(QmpEvent::Resume),
            "POWERDOWN" => Some(QmpEvent::Powerdown),
            "GUEST_PANICKED" => {
                typed::<PanicData>(&data).map(|d| QmpEvent::GuestPanicked { action: d.action })
            }
            "JOB_STATUS_CHANGE" => typed::<JobData>(&data).map(|d| QmpEvent::JobStatusChange {
                id: d.id,
                status: d.status,
            }),
            _ => block_kind.and_then(|kind| {
                typed::<BlockJobData>(&data).map(|d| QmpEvent::BlockJob {
                    kind,
                    device: d.device,
                    error: d.error,
                })
            }),
        };
        parsed.unwrap_or_else(|| QmpEvent::Other {
            name: name.to_owned(),
            data,
        })
    }

    /// The QMP name of the event.
    pub fn name(&self) -> &str {
        match self {
            QmpEvent::Shutdown { .. } => "SHUTDOWN",
            QmpEvent::Stop => "STOP",
            QmpEvent::Resume => "RESUME",
            QmpEvent::Reset { .. } => "RESET",
            QmpEvent::Powerdown => "POWERDOWN",
            QmpEvent::GuestPanicked { .. } => "GUEST_PANICKED",
            QmpEvent::JobStatusChange { .. } => "JOB_STATUS_CHANGE",
            QmpEvent::BlockJob { kind, .. } => match kind {
                BlockJobEventKind::Completed => "BLOCK_JOB_COMPLETED",
                BlockJobEventKind::Cancelled => "BLOCK_JOB_CANCELLED",
                BlockJobEventKind::Error => "BLOCK_JOB_ERROR",
                BlockJobEventKind::Ready => "BLOCK_JOB_READY",
                BlockJobEventKind::Pending => "BLOCK_JOB_PENDING",
            },
            QmpEvent::Other { name, .. } => name,
        }
    }
}
