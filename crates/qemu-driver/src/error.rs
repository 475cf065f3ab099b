//! The crate's error type.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

use crate::state::VmState;

/// Result alias used throughout qemu-driver.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The last lines QEMU wrote to stderr and to the serial console, quoted by errors about a VM
/// that died or stopped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tails {
    /// Last lines of QEMU's stderr (also in `qemu.log` in the run directory).
    pub stderr: String,
    /// Last lines of the guest's serial console.
    pub serial: String,
    /// The full serial log.
    pub serial_log: PathBuf,
}

impl fmt::Display for Tails {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self == &Tails::default() {
            return Ok(());
        }
        write_block(f, "qemu stderr", &self.stderr)?;
        let label = format!("serial console ({})", self.serial_log.display());
        write_block(f, &label, &self.serial)
    }
}

fn write_block(f: &mut fmt::Formatter<'_>, label: &str, text: &str) -> fmt::Result {
    if text.trim().is_empty() {
        return write!(f, "\n  {label}: (empty)");
    }
    write!(f, "\n  {label}, last lines:")?;
    for line in text.lines() {
        write!(f, "\n    | {line}")?;
    }
    Ok(())
}

/// Everything that can go wrong while driving QEMU.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The VM configuration cannot work (zero CPUs, no memory, missing disk …).
    #[error("invalid vm configuration: {reason}")]
    InvalidConfig {
        /// What is wrong.
        reason: String,
    },

    /// The private run directory could not be prepared.
    #[error("cannot prepare run directory {path}")]
    RunDir {
        /// The run directory (or the file in it).
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },

    /// UEFI firmware files are missing or cannot be copied.
    #[error("cannot use UEFI firmware file {path} (is the `ovmf` package installed?)")]
    Firmware {
        /// The firmware file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },

    /// A program (qemu-system-x86_64, qemu-img) could not be started.
    #[error("cannot start {program}")]
    Spawn {
        /// The program.
        program: String,
        /// Cause.
        #[source]
        source: io::Error,
    },

    /// No free TCP port could be found on 127.0.0.1 for the SSH forward.
    #[error("cannot find a free tcp port on 127.0.0.1")]
    FreePort {
        /// Cause.
        #[source]
        source: io::Error,
    },

    /// The QMP socket could not be set up or QEMU never connected to it.
    #[error("cannot set up the qmp socket {path}")]
    QmpSocket {
        /// The socket path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },

    /// Reading from or writing to the QMP socket failed.
    #[error("qmp connection failed while {during}")]
    QmpIo {
        /// What the client was doing.
        during: String,
        /// Cause.
        #[source]
        source: io::Error,
    },

    /// QEMU sent something that is not valid QMP.
    #[error("qmp protocol error: {detail}")]
    QmpProtocol {
        /// What was wrong, with an excerpt of the message.
        detail: String,
    },

    /// The QMP connection closed (QEMU exited) while a command waited for its reply.
    #[error("qmp connection closed before qemu answered {command}")]
    QmpClosed {
        /// The command.
        command: String,
    },

    /// QEMU answered a command with an error.
    #[error("qemu rejected {command}: {desc} ({class})")]
    QmpCommand {
        /// The command.
        command: String,
        /// QMP error class, e.g. `GenericError`.
        class: String,
        /// QEMU's description.
        desc: String,
    },

    /// A reply could not be decoded into the expected type.
    #[error("cannot decode qemu's reply to {command}")]
    QmpDecode {
        /// The command.
        command: String,
        /// Cause.
        #[source]
        source: serde_json::Error,
    },

    /// QEMU could not bind the SSH forwarding port, even after retrying with other ports.
    #[error(
        "qemu could not forward a host port to the guest's ssh after {attempts} attempts{tails}"
    )]
    PortForward {
        /// How many ports were tried.
        attempts: u32,
        /// Output of the last attempt.
        tails: Tails,
    },

    /// QEMU exited while the VM was expected to run.
    #[error("qemu exited unexpectedly ({status}){tails}")]
    Exited {
        /// QEMU's exit status.
        status: ExitStatus,
        /// Last lines of stderr and serial console.
        tails: Tails,
    },

    /// The VM shut down (the guest powered off, or QEMU was told to quit) while it was expected
    /// to run.
    #[error("the vm shut down ({reason}){tails}")]
    ShutDown {
        /// QEMU's shutdown reason, e.g. `guest-shutdown`.
        reason: String,
        /// Last lines of stderr and serial console.
        tails: Tails,
    },

    /// KVM failed: the guest stopped with a KVM internal error, or QEMU aborted in KVM setup.
    #[error("kvm is not usable for guests on this machine: {detail} (try: --accel tcg){tails}")]
    Kvm {
        /// What happened (`internal-error` state, or QEMU's exit).
        detail: String,
        /// Last lines of stderr and serial console.
        tails: Tails,
    },

    /// The VM stopped in a terminal state that is not a KVM failure.
    #[error("the vm stopped: {state}{tails}")]
    Stopped {
        /// The state it stopped in (internal-error under TCG, guest-panicked, io-error …).
        state: VmState,
        /// Last lines of stderr and serial console.
        tails: Tails,
    },

    /// Saving the VM state (`migrate` to a file) failed; the guest was resumed.
    #[error("cannot save the vm state to {path}: {detail}")]
    StateSave {
        /// The state file.
        path: PathBuf,
        /// QEMU's reason.
        detail: String,
    },

    /// Loading a saved VM state (`migrate-incoming`) failed.
    #[error("cannot restore the vm state from {path}: {detail}{tails}")]
    StateRestore {
        /// The state file.
        path: PathBuf,
        /// QEMU's reason.
        detail: String,
        /// Last lines of stderr and serial console.
        tails: Tails,
    },

    /// A wait ran out of time.
    #[error("timed out after {after:?} while {during}{tails}")]
    Timeout {
        /// What was awaited.
        during: String,
        /// The deadline.
        after: Duration,
        /// Last lines of stderr and serial console.
        tails: Tails,
    },

    /// The operation was cancelled through its `CancellationToken`.
    #[error("cancelled while {during}")]
    Cancelled {
        /// What was going on.
        during: String,
    },

    /// Waiting for QEMU to exit failed.
    #[error("cannot wait for qemu (pid {pid})")]
    Wait {
        /// QEMU's pid.
        pid: u32,
        /// Cause.
        #[source]
        source: io::Error,
    },

    /// `qemu-img` failed.
    #[error("qemu-img {action} failed ({status}): {stderr}")]
    QemuImg {
        /// What it was asked to do, e.g. `create overlay /x.qcow2`.
        action: String,
        /// Its exit status.
        status: ExitStatus,
        /// Its stderr (trimmed).
        stderr: String,
    },

    /// `qemu-img` printed output that could not be read.
    #[error("cannot read the output of qemu-img {action}")]
    QemuImgOutput {
        /// What it was asked to do.
        action: String,
        /// Cause.
        #[source]
        source: serde_json::Error,
    },

    /// A state change that the lifecycle does not allow.
    #[error("invalid vm state transition from {from} to {to}")]
    InvalidTransition {
        /// Old state.
        from: VmState,
        /// New state.
        to: VmState,
    },
}

impl Error {
    /// True when the error means "KVM does not work here": the caller may relaunch under TCG.
    pub fn is_kvm_failure(&self) -> bool {
        matches!(self, Error::Kvm { .. })
    }

    /// The stderr/serial tails carried by the error, if any.
    pub fn tails(&self) -> Option<&Tails> {
        match self {
            Error::PortForward { tails, .. }
            | Error::Exited { tails, .. }
            | Error::ShutDown { tails, .. }
            | Error::Kvm { tails, .. }
            | Error::Stopped { tails, .. }
            | Error::Timeout { tails, .. } => Some(tails),
            _ => None,
        }
    }
}
