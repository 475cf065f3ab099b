//! Sealing: after the recipe's last step imgbake removes, itself, everything it added to the
//! guest, so a recipe's cleanup needs no knowledge of imgbake. What it added: the build user
//! (account, home, `authorized_keys`, cloud-init's sudoers entry, the key stub cloud-init's
//! `disable_root` put in root's `authorized_keys`), `/var/lib/imgbake`, the SSH host key it
//! injected through the seed, the `/etc/hosts` line of the build hostname, and the build boot's
//! cloud-init instance state.
//!
//! The order matters because imgbake's own session belongs to the build user: everything runs
//! in ONE root shell started through `sudo` (so losing the user's sudo rights midway does not
//! matter), the account goes last with `userdel --force` (our session's processes keep running
//! as a bare uid until the guest is powered off), and the flush runs in that same root shell
//! after it. After [`seal`] no new command can be run in the guest: the caller takes its
//! checkpoint and powers the guest off over QMP.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::session::GuestSession;
use crate::{Error, Result, shell};

/// What to remove.
#[derive(Clone, Debug)]
pub struct SealSpec {
    /// The build user imgbake logged in as.
    pub build_user: String,
    /// The build VM's hostname (its `/etc/hosts` line goes).
    pub build_hostname: String,
    /// The public half of the build user's key (its stub in root's `authorized_keys` goes).
    pub user_public_key: String,
}

/// How long the seal may take (cloud-init clean and a flush of a large page cache).
const SEAL_TIMEOUT: Duration = Duration::from_secs(600);

/// The seal script; `$1` user, `$2` hostname, `$3` the user's public key.
const SEAL_SCRIPT: &str = r#"
set -eu
user=$1 host=$2 key=$3
fail() { echo "imgbake seal: $*" >&2; exit 1; }
rm -rf /var/lib/imgbake
rm -f /etc/ssh/ssh_host_*
if [ -f /etc/hosts ]; then
    # Only lines naming the build hostname as a whole word.
    sed -i -E "/^[0-9a-fA-F:.]+[[:space:]]+(.*[[:space:]])?${host}([[:space:]]|\$)/d" /etc/hosts
fi
# A recipe whose cleanup ran `cloud-init clean` left /var/lib/cloud empty: nothing of the
# build boot is left to clean, and cloud-init's start-up alone takes seconds under TCG.
if command -v cloud-init >/dev/null 2>&1 && [ -n "$(ls -A /var/lib/cloud 2>/dev/null)" ]; then
    cloud-init clean --seed >/dev/null || fail "cloud-init clean failed"
fi
rm -rf /var/lib/cloud/instances /var/lib/cloud/instance /var/lib/cloud/data
if [ -f /root/.ssh/authorized_keys ]; then
    # The key's second field, without a process (each costs ~60 ms under TCG).
    set -f; set -- $key; set +f
    keybody=${2:-}
    # An empty pattern would match, and remove, every line.
    [ -n "$keybody" ] || fail "the build key has no key field"
    grep -vF -- "$keybody" /root/.ssh/authorized_keys > /root/.ssh/authorized_keys.imgbake || true
    if grep -qvE '^[[:space:]]*(#.*)?$' /root/.ssh/authorized_keys.imgbake; then
        cat /root/.ssh/authorized_keys.imgbake > /root/.ssh/authorized_keys
    else
        rm -f /root/.ssh/authorized_keys
    fi
    rm -f /root/.ssh/authorized_keys.imgbake
fi
# One grep over every sudoers file names the ones with a rule for the user (one per line:
# a name may hold a space).
rules=$(grep -lE "^[[:space:]]*${user}[[:space:]]" /etc/sudoers.d/* 2>/dev/null || true)
saved_ifs=$IFS
IFS='
'
for file in $rules; do
    sed -i -E "/^[[:space:]]*${user}[[:space:]]/d; /^# User rules for ${user}\$/d" "$file"
    grep -qvE '^[[:space:]]*(#.*)?$' "$file" || rm -f "$file"
done
IFS=$saved_ifs
# A user that cannot be deleted fails the seal, and with it the build: nothing is exported.
if entry=$(getent passwd "$user"); then
    home=${entry#*:*:*:*:*:}
    home=${home%%:*}
    userdel --force --remove "$user" 2>/dev/null || true
    getent passwd "$user" >/dev/null && fail "could not delete the build user $user"
    [ -n "$home" ] && [ "$home" != / ] && rm -rf -- "$home"
fi
getent group "$user" >/dev/null 2>&1 && groupdel "$user" 2>/dev/null || true
sync || fail "sync failed"
# The power button (imgbake powers the guest off over ACPI next) then goes straight to
# systemd-shutdown, which still kills every process, remounts / read-only and syncs, instead
# of stopping each unit in turn (seconds under TCG). The unit lives in /run: nothing of it
# reaches the disk, and a guest without systemd-run just shuts down the long way.
if command -v systemd-run >/dev/null 2>&1; then
    systemd-run --quiet --unit=imgbake-poweroff --property=RemainAfterExit=yes \
        --property="ExecStop=/bin/systemctl --force --no-block poweroff" /bin/true \
        || echo "imgbake seal: no fast power-off (systemd-run failed)" >&2
fi
echo imgbake-sealed
"#;

/// Removes what imgbake added (see the module docs) and flushes the guest's disks. Exit
/// status and output are checked: a seal that did not finish is an error.
pub async fn seal(
    session: &GuestSession,
    spec: &SealSpec,
    cancel: &CancellationToken,
) -> Result<()> {
    let quote = |what: &str, value: &str| {
        shell::quote(value).ok_or_else(|| Error::Parse {
            what: "the seal".into(),
            detail: format!("the {what} cannot be passed to a shell"),
        })
    };
    let cmd = format!(
        "sh -c {} imgbake-seal {} {} {}",
        quote("script", SEAL_SCRIPT)?,
        quote("build user", &spec.build_user)?,
        quote("hostname", &spec.build_hostname)?,
        quote("public key", spec.user_public_key.trim())?,
    );
    let captured = session
        .exec_capture_root(&cmd, SEAL_TIMEOUT, cancel)
        .await?
        .check("sealing the image")?;
    if !captured
        .stdout
        .lines()
        .any(|l| l.trim() == "imgbake-sealed")
    {
        return Err(Error::Parse {
            what: "the seal".into(),
            detail: format!(
                "it ended without saying it finished: {}",
                captured.stderr.trim()
            ),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_script_is_valid_posix_sh() {
        let status = std::process::Command::new("sh")
            .args(["-n", "-c", super::SEAL_SCRIPT])
            .status()
            .unwrap();
        assert!(status.success());
    }
}
