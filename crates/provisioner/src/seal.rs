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

use crate::facts::{FACTS_SCRIPT, GuestFacts, parse_facts};
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
    keybody=$(printf '%s' "$key" | awk '{print $2}')
    grep -vF -- "$keybody" /root/.ssh/authorized_keys > /root/.ssh/authorized_keys.imgbake || true
    if grep -qvE '^[[:space:]]*(#.*)?$' /root/.ssh/authorized_keys.imgbake; then
        cat /root/.ssh/authorized_keys.imgbake > /root/.ssh/authorized_keys
    else
        rm -f /root/.ssh/authorized_keys
    fi
    rm -f /root/.ssh/authorized_keys.imgbake
fi
for file in /etc/sudoers.d/*; do
    [ -f "$file" ] || continue
    if grep -qE "^[[:space:]]*${user}[[:space:]]" "$file"; then
        sed -i -E "/^[[:space:]]*${user}[[:space:]]/d; /^# User rules for ${user}\$/d" "$file"
        grep -qvE '^[[:space:]]*(#.*)?$' "$file" || rm -f "$file"
    fi
done
if id -u "$user" >/dev/null 2>&1; then
    home=$(getent passwd "$user" | cut -d: -f6)
    usermod --lock --expiredate 1 "$user"
    userdel --force --remove "$user" 2>/dev/null || true
    id -u "$user" >/dev/null 2>&1 && fail "could not delete the build user $user"
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

/// Takes the guest's [`GuestFacts`] and then removes what imgbake added (see the module docs)
/// and flushes the guest's disks, in one round trip: the facts are those of the image as it
/// will be exported (after the recipe's cleanup), and cost no command of their own (each one
/// costs a good half second under TCG). Exit status and output are checked: a seal that did
/// not finish is an error. Facts that could not be read are `None`; they never fail the seal.
pub async fn seal(
    session: &GuestSession,
    spec: &SealSpec,
    cancel: &CancellationToken,
) -> Result<Option<GuestFacts>> {
    let quote = |what: &str, value: &str| {
        shell::quote(value).ok_or_else(|| Error::Parse {
            what: "the seal".into(),
            detail: format!("the {what} cannot be passed to a shell"),
        })
    };
    // The facts script ends with `true` and the seal's status is the command's: only the seal
    // can fail it.
    let cmd = format!(
        "sh -c {} imgbake-facts; echo {SEAL_SECTION}; sh -c {} imgbake-seal {} {} {}",
        quote("facts script", FACTS_SCRIPT)?,
        quote("script", SEAL_SCRIPT)?,
        quote("build user", &spec.build_user)?,
        quote("hostname", &spec.build_hostname)?,
        quote("public key", spec.user_public_key.trim())?,
    );
    let captured = session
        .exec_capture_root(&cmd, SEAL_TIMEOUT, cancel)
        .await?
        .check("sealing the image")?;
    let (facts, sealed) = split_seal_output(&captured.stdout);
    if !sealed.lines().any(|l| l.trim() == "imgbake-sealed") {
        return Err(Error::Parse {
            what: "the seal".into(),
            detail: format!(
                "it ended without saying it finished: {}",
                captured.stderr.trim()
            ),
        });
    }
    Ok(parse_facts(facts).ok())
}

/// The line between the facts' output and the seal's.
const SEAL_SECTION: &str = "@@imgbake-seal";

/// Splits the seal command's stdout into the facts' part and the seal's.
fn split_seal_output(stdout: &str) -> (&str, &str) {
    let marker = format!("\n{SEAL_SECTION}\n");
    match stdout.find(&marker) {
        Some(at) => (&stdout[..=at], &stdout[at + marker.len()..]),
        None => match stdout.strip_prefix(&marker[1..]) {
            Some(rest) => ("", rest),
            None => (stdout, ""),
        },
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_seal_output_splits_into_facts_and_the_seal() {
        let out = "@@kernel\n6.1.0-27-cloud-amd64\n@@imgbake-seal\nimgbake-sealed\n";
        let (facts, sealed) = super::split_seal_output(out);
        assert_eq!(facts, "@@kernel\n6.1.0-27-cloud-amd64\n");
        assert_eq!(sealed, "imgbake-sealed\n");
        assert_eq!(
            super::parse_facts(facts).unwrap().kernel,
            "6.1.0-27-cloud-amd64"
        );
        // A facts script that printed nothing; a seal that never got to say anything.
        assert_eq!(
            super::split_seal_output("@@imgbake-seal\nimgbake-sealed\n"),
            ("", "imgbake-sealed\n")
        );
        assert_eq!(
            super::split_seal_output("@@kernel\nx\n"),
            ("@@kernel\nx\n", "")
        );
    }

    #[test]
    fn the_script_is_valid_posix_sh() {
        let status = std::process::Command::new("sh")
            .args(["-n", "-c", super::SEAL_SCRIPT])
            .status()
            .unwrap();
        assert!(status.success());
    }
}
