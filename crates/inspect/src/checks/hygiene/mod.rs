//! Image hygiene: nothing of the build machine or the build's identity left behind. One file
//! per rule; each fails a dirty image when [`Expectations::hygiene`] is set, else warns.
//!
//! What counts as dirty (each is one check):
//! - `/etc/ssh/ssh_host_*` keys: every instance would share them;
//! - a non-empty `/etc/machine-id` (other than `uninitialized`), or a regular non-empty
//!   `/var/lib/dbus/machine-id`: instances would share an id and DHCP client id;
//! - `/var/lib/cloud/instance` or anything in `/var/lib/cloud/instances`: cloud-init would
//!   treat the first boot as already done (and the build's user-data lives there);
//! - the build user in `/etc/passwd`, or a `/home/<build user>`;
//! - any non-empty `authorized_keys` under `/root/.ssh` or `/home/*/.ssh`;
//! - non-empty `/var/log/cloud-init.log` / `cloud-init-output.log`: the build's seed and step
//!   output (`cloud-init clean --logs` removes them). Other logs in `/var/log` are left alone:
//!   a package's empty log files and journal directories are normal.
//!
//! [`Expectations::hygiene`]: crate::Expectations::hygiene

pub(crate) mod authorized_keys;
pub(crate) mod build_logs;
pub(crate) mod build_user;
pub(crate) mod cloud_init_instance;
pub(crate) mod machine_id;
pub(crate) mod ssh_host_keys;

use super::{CheckId, Context};
use crate::Result;
use crate::imagefs::ImageFs;
use crate::report::{Check, Verdict};

/// The texts of one rule.
struct Rule<'a> {
    id: CheckId,
    clean: &'a str,
    dirty: &'a str,
}

/// The check for `rule` given what was found dirty (`dirty` empty: clean).
fn judge(cx: &Context<'_>, rule: Rule<'_>, dirty: Vec<String>) -> Check {
    let verdict = match (dirty.is_empty(), cx.expect.hygiene) {
        (true, _) => Verdict::Pass,
        (false, true) => Verdict::Fail,
        (false, false) => Verdict::Warn,
    };
    let summary = if dirty.is_empty() {
        rule.clean
    } else {
        rule.dirty
    };
    Check::new(rule.id, verdict, summary, dirty)
}

/// True when `path` exists and holds more than whitespace.
fn non_empty(fs: &ImageFs, path: &str) -> Result<bool> {
    Ok(fs
        .read(path)?
        .is_some_and(|d| !d.iter().all(u8::is_ascii_whitespace)))
}
