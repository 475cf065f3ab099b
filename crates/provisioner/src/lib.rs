//! Provisioning the build guest over SSH.
//!
//! - [`BuildKeys`]: the per-build ed25519 user key and the host key imgbake puts in the seed.
//! - [`wait_for_ssh`] → [`GuestSession`]: poll `127.0.0.1:<port>` with backoff until the guest's
//!   sshd answers **with our host key** (anything else: [`Error::HostKeyMismatch`]) and accepts
//!   the user key. [`HostKeyPolicy::TrustOnFirstUse`] instead accepts and reports the first key
//!   (`imgbake test`, whose guest makes its own keys).
//! - [`GuestSession::cloud_init_wait`] → [`CloudInitOutcome`]: finished / finished with errors /
//!   never ran.
//! - [`GuestSession::exec`] streams a command's output line by line ([`OutputLine`]) and returns
//!   its [`ExitStatus`]; [`GuestSession::upload`] writes bytes to a file in the guest.
//! - [`run_step`] runs one [`StepSpec`] (upload, run as root with its environment and its
//!   secrets — written to a tmpfs only, masked in output by a [`SecretMask`] — log, timeout,
//!   retries, reboot) and reports [`StepEvent`]s. (The manifest's facts about the guest are
//!   read offline from the exported disk, by `inspect`, not over SSH.)
//!
//! Every long operation is a future that takes a [`CancellationToken`] and a deadline, so the
//! binary can `select!` it against "QEMU died". The library never prints.
//!
//! ```no_run
//! # async fn demo() -> provisioner::Result<()> {
//! use std::{collections::BTreeMap, sync::Arc, time::Duration};
//! use provisioner::*;
//! use tokio_util::sync::CancellationToken;
//!
//! let keys = Arc::new(BuildKeys::generate()); // its public halves go into the seed
//! let target = SshTarget {
//!     addr: "127.0.0.1:2222".parse().unwrap(),
//!     user: "imgbake".into(),
//!     keys,
//!     privilege: Privilege::Sudo,
//!     host_key: HostKeyPolicy::Pinned,
//! };
//! let cancel = CancellationToken::new();
//! let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
//! let mut session = wait_for_ssh(&target, deadline, &cancel).await?;
//! match session.cloud_init_wait(Duration::from_secs(600), &cancel).await? {
//!     CloudInitOutcome::Finished => {}
//!     CloudInitOutcome::FinishedWithErrors { detail } => eprintln!("warning: {detail}"),
//!     CloudInitOutcome::NeverRan { detail } => panic!("cloud-init never ran: {detail}"),
//! }
//! let step = StepSpec {
//!     id: "01".into(),
//!     name: "hello".into(),
//!     script: b"echo hello from $IMGBAKE_STEP_ID\n".to_vec(),
//!     env: BTreeMap::new(),
//!     secrets: BTreeMap::new(),
//!     timeout: Duration::from_secs(60),
//!     retries: 0,
//!     reboot: false,
//! };
//! let options = StepOptions::new("run/logs/01-hello.log", Duration::from_secs(300));
//! let outcome = run_step(&mut session, &step, &options, |event| println!("{event:?}"), &cancel)
//!     .await?;
//! outcome.into_result()?;
//! # Ok(()) }
//! ```
#![warn(missing_docs)]

mod cloud_init;
mod error;
mod exec;
mod keys;
mod mask;
mod seal;
mod session;
mod shell;
mod step;
mod wait;

pub use cloud_init::{CloudInitOutcome, CloudInitStatus};
pub use error::{Error, Result};
pub use exec::{ExitStatus, MAX_LINE, OutputLine, Stream};
pub use keys::BuildKeys;
pub use mask::{MIN_MASKED_LEN, MaskStream, SecretMask, mask_text};
pub use seal::{SealSpec, seal};
pub use secrecy::{ExposeSecret, SecretString};
pub use session::{
    Captured, GuestSession, HANDSHAKE_TIMEOUT, HostKeyPolicy, KEEPALIVE_INTERVAL, KEEPALIVE_MAX,
    KILL_GRACE, SshTarget,
};
pub use shell::{Privilege, is_secret_name};
pub use step::{
    DEFAULT_REBOOT_COMMAND, LAST_LINES, REMOTE_SECRET_DIR, REMOTE_STEP_DIR, StepEvent, StepExit,
    StepFailed, StepOptions, StepOutcome, StepSpec, StepSucceeded, run_step,
};
pub use tokio_util::sync::CancellationToken;
pub use wait::{AUTH_GRACE, BACKOFF_MAX, BACKOFF_START, wait_for_ssh};
