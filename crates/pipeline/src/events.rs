//! What a build reports while it runs. The pipeline never prints: the binary renders these as a
//! progress display or as `--json` lines.

use std::path::PathBuf;
use std::time::Duration;

use provisioner::StepEvent;
use serde::Serialize;
use tokio::sync::mpsc::UnboundedSender;

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
    /// The uncompressed copy of the base that the build boots on (made once per base).
    PlainBaseReady {
        /// The copy.
        path: PathBuf,
        /// Whether it was made now, and how long that took.
        made_secs: Option<f64>,
    },
    /// Checkpoints that were broken or cut off and were thrown away.
    CheckpointDiscarded {
        /// Why, as a sentence.
        reason: String,
    },
    /// A chain's first layer was made on the same base at another path; its header now names
    /// this build's base file, so the chain is reused instead of rebuilt.
    CheckpointRebased {
        /// The layer's step id.
        step_id: String,
        /// The base path its header named.
        from: PathBuf,
        /// The base file it names now.
        to: PathBuf,
    },
    /// Another build is making the checkpoint this one would make first (the base's first
    /// boot, shared by every recipe on it, or a step both have); this one waits for it and then
    /// starts from it instead of making it too.
    WaitingForCheckpoint {
        /// The checkpoint's step id (`ready` for the first boot).
        id: String,
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
    /// `imgbake test` (or `recipe --test`) is booting an image with a fresh seed.
    TestStarted {
        /// The image under test.
        image: PathBuf,
        /// The test seed's instance id.
        instance_id: String,
        /// The test seed's hostname.
        hostname: String,
    },
    /// One check of the booted image was decided.
    TestRow {
        /// The check.
        row: crate::TestRow,
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
        /// Which stream the line came from.
        stream: OutputStream,
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
    /// The VM state (RAM, devices) was saved with a step's checkpoint, at the same stopped
    /// moment as its disk layer.
    VmStateSaved {
        /// Step id.
        id: String,
        /// Bytes of the (compressed) state file.
        size: u64,
        /// Seconds the guest was stopped for the layer and the state.
        paused_secs: f64,
        /// True when the RAM was written while the guest ran on (QEMU's `background-snapshot`)
        /// rather than with it stopped.
        background: bool,
        /// False when it was not kept (its layer is another build's, or a save failed).
        published: bool,
    },
    /// The build resumed the VM from the state saved after step `id` instead of booting.
    VmStateRestored {
        /// The step whose state was loaded.
        id: String,
        /// Seconds from QEMU's start until the guest answered SSH (the next step's command renews
        /// its clock and entropy first).
        after_secs: f64,
    },
    /// No VM state was used: the build boots from the disk checkpoint. Not an error.
    VmStateNotUsed {
        /// Why, as a sentence.
        reason: String,
    },
    /// After the last step: imgbake removes what it added to the guest (build user, its
    /// keys and sudo rule, `/var/lib/imgbake`, the injected host key, the build hostname's
    /// `/etc/hosts` line, cloud-init's instance state) and flushes the disks.
    Sealing,
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
    /// `imgbake boot`: the guest is up; this command gets in. It runs until cancelled.
    GuestReady {
        /// The exact command to get in.
        ssh_command: String,
        /// The private run directory (key, known_hosts, serial log); removed at the end.
        run_dir: PathBuf,
        /// The user logged in as (passwordless sudo).
        user: String,
    },
    /// `imgbake boot`: the VM stopped by itself (powered off inside, or QEMU died).
    VmStopped {
        /// What happened.
        why: String,
    },
    /// A non-fatal warning.
    Warning {
        /// The message.
        message: String,
    },
}

/// Which of a step's streams a line came from; serialised as `stdout` / `stderr`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputStream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// Sends events; a closed receiver is not an error (the build goes on).
#[derive(Clone, Debug)]
pub(crate) struct Emitter(UnboundedSender<BakeEvent>);

impl Emitter {
    pub(crate) fn new(sender: UnboundedSender<BakeEvent>) -> Emitter {
        Emitter(sender)
    }

    pub(crate) fn emit(&self, event: BakeEvent) {
        let _ = self.0.send(event);
    }

    /// Forwards one provisioner step event as a [`BakeEvent`].
    pub(crate) fn step_event(&self, event: StepEvent, name: &str) {
        self.emit(match event {
            StepEvent::Started { id, attempt, .. } => BakeEvent::StepStarted {
                id,
                name: name.to_owned(),
                attempt,
            },
            StepEvent::Output { id, stream, line } => BakeEvent::StepOutput {
                id,
                stream: match stream {
                    provisioner::Stream::Stdout => OutputStream::Stdout,
                    provisioner::Stream::Stderr => OutputStream::Stderr,
                },
                line,
            },
            StepEvent::Retrying { id, exit, .. } => BakeEvent::StepRetrying {
                id,
                exit: exit.to_string(),
            },
            StepEvent::Rebooting { id } => BakeEvent::Rebooting { id },
            StepEvent::Rebooted { id, downtime } => BakeEvent::Rebooted {
                id,
                downtime_secs: secs(downtime),
            },
            StepEvent::Finished { id, exit, duration } => BakeEvent::StepFinished {
                id,
                success: exit.success(),
                exit: exit.to_string(),
                duration_secs: secs(duration),
            },
        });
    }
}

pub(crate) fn secs(d: Duration) -> f64 {
    (d.as_secs_f64() * 100.0).round() / 100.0
}
