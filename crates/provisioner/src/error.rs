//! The crate's error type.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::exec::ExitStatus;

/// Everything that can go wrong while talking to the guest.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Reading or writing a key file failed.
    #[error("key file {path}")]
    KeyIo {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A key file is not an OpenSSH private key.
    #[error("key file {path} is not an unencrypted OpenSSH private key")]
    KeyDecode {
        /// The file.
        path: PathBuf,
        /// The decoding error.
        #[source]
        source: russh::keys::ssh_key::Error,
    },
    /// A key file holds a key of another type.
    #[error("key file {path} holds a {algorithm} key, expected ed25519")]
    KeyNotEd25519 {
        /// The file.
        path: PathBuf,
        /// What it holds.
        algorithm: String,
    },
    /// imgbake only talks to guests through a forwarded port on the loopback interface.
    #[error("refusing to connect to {addr}: the guest must be reached on 127.0.0.1")]
    NotLoopback {
        /// The address asked for.
        addr: SocketAddr,
    },
    /// TCP connection to the forwarded port failed.
    #[error("connect to {addr}")]
    Connect {
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The port accepted but no SSH server answered (QEMU's user network accepts before the
    /// guest listens).
    #[error("no ssh banner from {addr} within {waited:?}")]
    NoBanner {
        /// The address.
        addr: SocketAddr,
        /// How long we waited for the banner.
        waited: Duration,
    },
    /// Key exchange and authentication did not finish in time after the banner.
    #[error("ssh handshake with {addr} did not finish within {waited:?}")]
    HandshakeTimeout {
        /// The address.
        addr: SocketAddr,
        /// How long it was given.
        waited: Duration,
    },
    /// The SSH handshake or protocol failed.
    #[error("ssh handshake with {addr}")]
    Handshake {
        /// The address.
        addr: SocketAddr,
        /// The russh error.
        #[source]
        source: russh::Error,
    },
    /// The server presented a host key other than the one imgbake generated for this build.
    #[error(
        "host key mismatch at {addr}: expected {expected_fingerprint}, got {got_fingerprint} \
         (another guest or process answers on this port, or the seed was not applied)"
    )]
    HostKeyMismatch {
        /// The address.
        addr: SocketAddr,
        /// Fingerprint of the pinned key.
        expected_fingerprint: String,
        /// Fingerprint the server presented.
        got_fingerprint: String,
    },
    /// The server refused the build user's key.
    #[error("{addr} refused the build key for user {user}")]
    AuthRejected {
        /// The address.
        addr: SocketAddr,
        /// The user.
        user: String,
    },
    /// The server kept refusing the build key after the grace period.
    #[error(
        "{addr} kept refusing the build key for user {user} for {waited:?} \
         (cloud-init did not install it: check the seed's user-data)"
    )]
    AuthRejectedTooLong {
        /// The address.
        addr: SocketAddr,
        /// The user.
        user: String,
        /// How long the key was refused.
        waited: Duration,
    },
    /// SSH did not become ready before the deadline.
    #[error("ssh at {addr} not ready after {waited:?} ({attempts} attempts)")]
    SshWaitTimeout {
        /// The address.
        addr: SocketAddr,
        /// How long we waited.
        waited: Duration,
        /// How many attempts were made.
        attempts: u32,
        /// The last attempt's failure.
        #[source]
        last: Option<Box<Error>>,
    },
    /// The caller cancelled the operation.
    #[error("{what}: cancelled")]
    Cancelled {
        /// What was running.
        what: String,
    },
    /// An SSH channel request failed.
    #[error("ssh channel for {what}")]
    Channel {
        /// What the channel was for.
        what: String,
        /// The russh error.
        #[source]
        source: russh::Error,
    },
    /// The connection dropped before the remote command reported an exit status.
    #[error("connection lost while running {what} (no exit status)")]
    Disconnected {
        /// What was running.
        what: String,
    },
    /// A remote command ran past its timeout.
    #[error("{what} timed out after {after:?}")]
    Timeout {
        /// What was running.
        what: String,
        /// The timeout.
        after: Duration,
    },
    /// A helper command in the guest failed.
    #[error("{what} failed in the guest with {status}: {stderr}")]
    RemoteCommand {
        /// What was run.
        what: String,
        /// How it ended.
        status: ExitStatus,
        /// The end of its stderr.
        stderr: String,
    },
    /// A helper command's output could not be understood.
    #[error("unexpected output from {what}: {detail}")]
    Parse {
        /// What was run.
        what: String,
        /// What was wrong.
        detail: String,
    },
    /// An upload arrived with the wrong size.
    #[error("upload to {path} wrote {got} bytes, expected {expected}")]
    UploadSize {
        /// Remote path.
        path: String,
        /// Bytes sent.
        expected: u64,
        /// Bytes the guest has.
        got: u64,
    },
    /// A remote path is unusable (relative, or has characters we refuse).
    #[error("remote path {path:?} must be absolute and printable")]
    BadRemotePath {
        /// The path.
        path: String,
    },
    /// An environment variable name is not a valid shell name.
    #[error("environment variable name {name:?} is not a valid shell identifier")]
    BadEnvName {
        /// The name.
        name: String,
    },
    /// A value cannot be passed through a shell (contains a NUL byte).
    #[error("value of {name} contains a NUL byte")]
    BadEnvValue {
        /// The variable name.
        name: String,
    },
    /// The guest's directory for step secrets is not on a tmpfs, so the secrets would reach
    /// the disk (and with it a checkpoint layer and the image).
    #[error("refusing to write secrets to {dir} in the guest: it is on {fstype}, not a tmpfs")]
    SecretsNotOnTmpfs {
        /// The directory.
        dir: String,
        /// Its file system type, as `stat -f` says.
        fstype: String,
    },
    /// cloud-init did not finish before the timeout.
    #[error("cloud-init still {status} after {waited:?}")]
    CloudInitTimeout {
        /// How long we waited.
        waited: Duration,
        /// Its last reported status.
        status: String,
    },
    /// Writing the step log failed.
    #[error("step log {path}")]
    Log {
        /// The log file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The guest came back after a reboot step with the same boot id.
    #[error("step {step}: the guest did not reboot (boot id {boot_id} unchanged)")]
    BootIdUnchanged {
        /// The step id.
        step: String,
        /// The boot id before and after.
        boot_id: String,
    },
    /// Waiting for the guest to come back after a reboot failed.
    #[error("step {step}: waiting for the guest to come back after the reboot")]
    Reboot {
        /// The step id.
        step: String,
        /// Why.
        #[source]
        source: Box<Error>,
    },
    /// A step failed (use [`crate::StepOutcome::into_result`] to get this).
    #[error("step {} ({}) failed: {}; log: {}", .0.id, .0.name, .0.exit, .0.log_path.display())]
    StepFailed(Box<crate::step::StepFailed>),
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
