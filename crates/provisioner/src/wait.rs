//! Waiting for the guest's SSH server: poll with backoff until it answers with our host key
//! and accepts our user key.

use std::time::Duration;

use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;

use crate::session::{GuestSession, SshTarget};
use crate::{Error, Result};

/// First pause between attempts.
pub const BACKOFF_START: Duration = Duration::from_millis(250);
/// Longest pause between attempts.
pub const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// How long the build key may be refused before giving up: cloud-init writes
/// `authorized_keys` early in boot, but sshd may be up a moment before.
pub const AUTH_GRACE: Duration = Duration::from_secs(30);
/// First wait for the server's banner on an accepted connection; grows per attempt up to
/// [`BANNER_WAIT_MAX`] so a slow (TCG) guest still gets through.
const BANNER_WAIT_START: Duration = Duration::from_secs(2);
const BANNER_WAIT_MAX: Duration = Duration::from_secs(15);

/// What kind of failure one attempt had, for deciding what to do next.
enum Verdict {
    /// Not up yet: try again.
    Retry,
    /// Key refused: try again until [`AUTH_GRACE`] has passed since the first refusal.
    AuthRefused,
    /// Give up now.
    Fatal,
}

fn classify(err: &Error) -> Verdict {
    match err {
        Error::Connect { .. }
        | Error::NoBanner { .. }
        | Error::Handshake { .. }
        | Error::HandshakeTimeout { .. } => Verdict::Retry,
        Error::AuthRejected { .. } => Verdict::AuthRefused,
        _ => Verdict::Fatal,
    }
}

/// Polls `target` until SSH accepts us, `deadline` passes, or `cancel` fires.
///
/// Connection refused / reset / closed before the banner, and handshake errors, are retried
/// with backoff ([`BACKOFF_START`] doubling to [`BACKOFF_MAX`]). A host key other than the
/// pinned one fails at once ([`Error::HostKeyMismatch`]). A refused user key is retried for
/// [`AUTH_GRACE`], then [`Error::AuthRejectedTooLong`]. Past the deadline:
/// [`Error::SshWaitTimeout`] with the last attempt's error as its source.
pub async fn wait_for_ssh(
    target: &SshTarget,
    deadline: Instant,
    cancel: &CancellationToken,
) -> Result<GuestSession> {
    if !target.addr.ip().is_loopback() {
        return Err(Error::NotLoopback { addr: target.addr });
    }
    let started = Instant::now();
    let mut backoff = BACKOFF_START;
    let mut banner_wait = BANNER_WAIT_START;
    let mut attempts = 0u32;
    let mut first_refusal: Option<Instant> = None;
    let mut last: Option<Error> = None;
    let timed_out = |attempts, last: Option<Error>| Error::SshWaitTimeout {
        addr: target.addr,
        waited: started.elapsed(),
        attempts,
        last: last.map(Box::new),
    };
    loop {
        attempts += 1;
        let attempt = tokio::select! {
            biased;
            _ = cancel.cancelled() => return Err(Error::Cancelled { what: format!("waiting for ssh at {}", target.addr) }),
            _ = sleep_until(deadline) => return Err(timed_out(attempts, last)),
            r = GuestSession::connect(target, banner_wait) => r,
        };
        let err = match attempt {
            Ok(session) => {
                tracing::debug!(attempts, elapsed = ?started.elapsed(), "ssh ready");
                return Ok(session);
            }
            Err(err) => err,
        };
        tracing::debug!(attempts, error = %err, "ssh not ready");
        match classify(&err) {
            Verdict::Fatal => return Err(err),
            Verdict::AuthRefused => {
                let since = *first_refusal.get_or_insert_with(Instant::now);
                if since.elapsed() >= AUTH_GRACE {
                    return Err(Error::AuthRejectedTooLong {
                        addr: target.addr,
                        user: target.user.clone(),
                        waited: since.elapsed(),
                    });
                }
            }
            Verdict::Retry => {
                if matches!(err, Error::NoBanner { .. }) {
                    banner_wait = (banner_wait * 3 / 2).min(BANNER_WAIT_MAX);
                }
            }
        }
        last = Some(err);
        let wake = (Instant::now() + backoff).min(deadline);
        tokio::select! {
            biased;
            _ = cancel.cancelled() => return Err(Error::Cancelled { what: format!("waiting for ssh at {}", target.addr) }),
            _ = sleep_until(wake) => {}
        }
        if Instant::now() >= deadline {
            return Err(timed_out(attempts, last));
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}
