//! Image hygiene: nothing of the build machine or the build's identity left behind.
//!
//! What counts as dirty (each is one finding):
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

use serde::Serialize;

use crate::Result;
use crate::imagefs::ImageFs;

/// One hygiene rule's outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// Check id (`ssh-host-keys`).
    pub id: &'static str,
    /// True when clean.
    pub clean: bool,
    /// One line for people.
    pub summary: String,
    /// What was found.
    pub details: Vec<String>,
}

fn finding(id: &'static str, dirty: Vec<String>, clean_text: &str, dirty_text: &str) -> Finding {
    Finding {
        id,
        clean: dirty.is_empty(),
        summary: if dirty.is_empty() {
            clean_text.to_string()
        } else {
            dirty_text.to_string()
        },
        details: dirty,
    }
}

fn non_empty(fs: &ImageFs, path: &str) -> Result<bool> {
    Ok(fs
        .read(path)?
        .is_some_and(|d| !d.iter().all(u8::is_ascii_whitespace)))
}

/// Runs every hygiene rule.
pub(crate) fn check(fs: &ImageFs, build_user: &str) -> Result<Vec<Finding>> {
    let mut out = Vec::new();

    let keys: Vec<String> = fs
        .list("/etc/ssh")?
        .into_iter()
        .filter(|e| e.name.starts_with("ssh_host_"))
        .map(|e| format!("/etc/ssh/{}", e.name))
        .collect();
    out.push(finding(
        "ssh-host-keys",
        keys,
        "no SSH host keys",
        "SSH host keys left in the image",
    ));

    let mut ids = Vec::new();
    if let Some(id) = fs.read_text("/etc/machine-id")? {
        let id = id.trim();
        if !id.is_empty() && id != "uninitialized" {
            ids.push(format!("/etc/machine-id = {id}"));
        }
    }
    if fs.read_link("/var/lib/dbus/machine-id")?.is_none()
        && non_empty(fs, "/var/lib/dbus/machine-id")?
    {
        ids.push("/var/lib/dbus/machine-id is a non-empty file".to_string());
    }
    out.push(finding(
        "machine-id",
        ids,
        "machine-id empty or absent",
        "a machine-id is set",
    ));

    let mut cloud = Vec::new();
    if fs.exists_no_follow("/var/lib/cloud/instance")? {
        cloud.push("/var/lib/cloud/instance".to_string());
    }
    for e in fs.list("/var/lib/cloud/instances")? {
        cloud.push(format!("/var/lib/cloud/instances/{}", e.name));
    }
    out.push(finding(
        "cloud-init-instance",
        cloud,
        "no cloud-init instance state",
        "cloud-init instance state left (run `cloud-init clean`)",
    ));

    let mut user = Vec::new();
    if let Some(passwd) = fs.read_text("/etc/passwd")? {
        for (n, line) in passwd.lines().enumerate() {
            if line.split(':').next() == Some(build_user) {
                user.push(format!("/etc/passwd:{} {line}", n + 1));
            }
        }
    }
    if fs.exists_no_follow(&format!("/home/{build_user}"))? {
        user.push(format!("/home/{build_user}"));
    }
    out.push(finding(
        "build-user",
        user,
        &format!("no build user `{build_user}`"),
        &format!("build user `{build_user}` left in the image"),
    ));

    let mut keys = Vec::new();
    let mut homes = vec!["/root".to_string()];
    homes.extend(
        fs.list("/home")?
            .into_iter()
            .filter(|e| e.is_dir)
            .map(|e| format!("/home/{}", e.name)),
    );
    for home in homes {
        for name in ["authorized_keys", "authorized_keys2"] {
            let path = format!("{home}/.ssh/{name}");
            if non_empty(fs, &path)? {
                keys.push(path);
            }
        }
    }
    out.push(finding(
        "authorized-keys",
        keys,
        "no authorized_keys",
        "authorized_keys left in the image",
    ));

    let mut logs = Vec::new();
    for path in ["/var/log/cloud-init.log", "/var/log/cloud-init-output.log"] {
        if non_empty(fs, path)? {
            logs.push(path.to_string());
        }
    }
    out.push(finding(
        "build-logs",
        logs,
        "no cloud-init/build logs",
        "cloud-init logs from the build left (run `cloud-init clean --logs`)",
    ));
    Ok(out)
}
