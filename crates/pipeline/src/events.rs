//! What a build reports while it runs. The pipeline never prints: the binary renders these as a
//! progress display or as `--json` lines.

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

/// One thing that happened during a build.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum BakeEvent {
    /// The base image is being fetched (bytes so far, total if known).
    FetchProgress {
        /// Bytes received or hashed.
        done: u64,
        /// Total, when known.
        total: Option<u64>,
    },
    /// The base image is ready.
    BaseReady {
        /// The cached file.
        path: PathBuf,
        /// Its sha256.
        sha256: String,
    },
    /// Checkpoints that were broken or cut off and were thrown away.
    CheckpointDiscarded {
        /// Why, as a sentence.
        reason: String,
    },
    /// Steps that will not run because their checkpoints are reused.
    StepsReused {
        /// Their ids, in order.
        ids: Vec<String>,
        /// `true` for `--resume-from`, `false` for automatic reuse.
        resumed: bool,
    },
    /// QEMU started.
    VmStarted {
        /// `kvm` or `tcg`.
        accel: String,
        /// The accelerator decision as a sentence ("using TCG: /dev/kvm is not writable").
        reason: String,
        /// `127.0.0.1:<port>` forwarded to the guest's SSH.
        ssh_addr: String,
        /// The serial console log.
        serial_log: PathBuf,
    },
    /// KVM failed and the VM was restarted under TCG.
    RestartedUnderTcg {
        /// What KVM did.
        reason: String,
    },
    /// SSH answered and authenticated.
    SshReady {
        /// Seconds since QEMU started.
        after_secs: f64,
    },
    /// cloud-init finished with errors (the build goes on).
    CloudInitWarning {
        /// The errors.
        detail: String,
    },
    /// cloud-init finished.
    CloudInitDone {
        /// Seconds since QEMU started.
        after_secs: f64,
    },
    /// A step started.
    StepStarted {
        /// Step id.
        id: String,
        /// Step name.
        name: String,
        /// Attempt number (1-based).
        attempt: u32,
    },
    /// A line of a step's output.
    StepOutput {
        /// Step id.
        id: String,
        /// `stdout` or `stderr`.
        stream: &'static str,
        /// The line (secrets masked).
        line: String,
    },
    /// A failed attempt will be retried.
    StepRetrying {
        /// Step id.
        id: String,
        /// How the attempt ended.
        exit: String,
    },
    /// The guest is rebooting after a step.
    Rebooting {
        /// Step id.
        id: String,
    },
    /// The guest came back after a reboot.
    Rebooted {
        /// Step id.
        id: String,
        /// Downtime.
        downtime_secs: f64,
    },
    /// A step ended.
    StepFinished {
        /// Step id.
        id: String,
        /// Whether it succeeded.
        success: bool,
        /// How it ended ("exit 0", "timed out after …").
        exit: String,
        /// How long it took.
        duration_secs: f64,
    },
    /// A checkpoint was taken after a step.
    CheckpointSaved {
        /// Step id.
        id: String,
        /// Its key (short).
        key: String,
        /// Bytes of the layer.
        size: u64,
        /// False when another build had already published the same key.
        published: bool,
    },
    /// The guest is being powered off.
    ShuttingDown,
    /// An output file was written.
    OutputWritten {
        /// The file.
        path: PathBuf,
    },
    /// A stage of the export.
    Exporting {
        /// What is being done.
        what: String,
        /// Fraction done (0–1) when known.
        fraction: Option<f64>,
    },
    /// After a failure with `--keep-on-failure`: the VM stays up until Ctrl-C.
    KeptForDebugging {
        /// The exact command to get in.
        ssh_command: String,
    },
    /// A non-fatal warning.
    Warning {
        /// The message.
        message: String,
    },
}

pub(crate) fn secs(d: Duration) -> f64 {
    (d.as_secs_f64() * 100.0).round() / 100.0
}
