#!/usr/bin/env bash
# 99 — leave nothing of the build in the image: apt caches, SSH host keys, machine-id,
# cloud-init state, logs, shell history, and the build user (keys, sudoers entry, account).
# Env: IMGBAKE_BUILD_USER (default imgbake) — the user imgbake is connected as.
#
# This step runs inside an SSH session of the build user, so it must not kill that session:
# 1. the user's keys and sudoers entry go first, and the account is locked and expired, so
#    even if anything below fails no one can log in as it;
# 2. the account itself is removed LAST with `userdel --force --remove`: --force deletes it
#    although our own session is still logged in (plain userdel refuses with "currently used
#    by process"); the session's processes keep running as a bare uid until the guest is
#    powered off over QMP. After this step no new SSH session can be opened.
# Deferring the userdel to a shutdown or first-boot unit was rejected: the offline verify of
# the exported disk must see the user gone, and a first-boot job would run on customer VMs.
set -euo pipefail
[[ ${EUID} -eq 0 ]] || { echo "99-cleanup: must run as root" >&2; exit 1; }
export DEBIAN_FRONTEND=noninteractive

user="${IMGBAKE_BUILD_USER:-imgbake}"

# apt
apt-get -o DPkg::Lock::Timeout=600 -y autoremove --purge
apt-get clean
rm -rf /var/lib/apt/lists/*

# SSH host keys: a fresh set is generated on each new instance's first boot.
rm -f /etc/ssh/ssh_host_*

# machine-id: empty (not absent) so systemd generates a new one at first boot.
truncate -s 0 /etc/machine-id
if [[ -e /var/lib/dbus/machine-id && ! -L /var/lib/dbus/machine-id ]]; then
    rm -f /var/lib/dbus/machine-id
    ln -s /etc/machine-id /var/lib/dbus/machine-id
fi

# cloud-init: instance state, seed copy, logs, and the network config it generated.
clean_args=(--logs --seed)
if cloud-init clean --help 2>&1 | grep -q -- '--configs'; then
    clean_args+=(--configs all)
fi
cloud-init clean "${clean_args[@]}"

# Root: keys (cloud-init's disable_root stub carries the build key), history.
rm -f /root/.ssh/authorized_keys /root/.bash_history /root/.lesshst /root/.wget-hsts
rm -rf /root/.cache

# Logs and temporary files.
journalctl --rotate >/dev/null 2>&1 || true
journalctl --vacuum-time=1s >/dev/null 2>&1 || true
find /var/log -type f \( -name '*.gz' -o -name '*.[0-9]' -o -name '*.old' \) -delete
find /var/log -type f -exec truncate -s 0 {} +
rm -rf /tmp/* /var/tmp/*

# The build user, step 1: no keys, no sudo, locked and expired.
if id -u "${user}" >/dev/null 2>&1; then
    home="$(getent passwd "${user}" | cut -d: -f6)"
    rm -f "${home}/.ssh/authorized_keys"
    for file in /etc/sudoers.d/*; do
        [[ -f ${file} ]] || continue
        if grep -qE "^[[:space:]]*${user}[[:space:]]" "${file}"; then
            sed -i -E "/^[[:space:]]*${user}[[:space:]]/d; /^# User rules for ${user}\$/d" "${file}"
            # Drop the file when only comments and blank lines are left (cloud-init's file).
            if ! grep -qvE '^[[:space:]]*(#.*)?$' "${file}"; then
                rm -f "${file}"
            fi
        fi
    done
    usermod --lock --expiredate 1 "${user}"
fi

# Discard freed blocks so the exported RAW stays sparse (needs discard on the virtual disk).
fstrim -av >/dev/null 2>&1 || true
sync

# The build user, step 2 — the very last action (see the header).
if id -u "${user}" >/dev/null 2>&1; then
    userdel --force --remove "${user}" 2>&1 | grep -v 'mail spool' >&2 || true
    if id -u "${user}" >/dev/null 2>&1; then
        echo "99-cleanup: could not delete build user ${user}" >&2
        exit 1
    fi
fi
echo "99-cleanup: done"
