#!/usr/bin/env bash
# 99 — leave nothing of the build in the image: apt caches, SSH host keys, machine-id,
# cloud-init state, logs, shell history.
#
# What imgbake itself added (its build user with keys and sudo rule, /var/lib/imgbake, the
# injected host key, the build hostname in /etc/hosts, the build boot's cloud-init instance)
# imgbake removes after this step ("sealing"), so this script needs no knowledge of imgbake.
set -euo pipefail
[[ ${EUID} -eq 0 ]] || { echo "99-cleanup: must run as root" >&2; exit 1; }
export DEBIAN_FRONTEND=noninteractive

# apt. The lists go first: autoremove needs only dpkg's status and apt's auto-installed
# marks, and without the lists apt builds its cache from the status file alone (a second and
# more under TCG, where parsing the lists is most of autoremove's time).
rm -rf /var/lib/apt/lists/*
apt-get -o DPkg::Lock::Timeout=600 -y autoremove --purge
apt-get clean

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
# `--configs` (newer cloud-init) also removes the network config it generated. Its source says
# whether it is there; `cloud-init clean --help` would start Python once more (seconds under TCG).
clean_py=/usr/lib/python3/dist-packages/cloudinit/cmd/clean.py
if [[ -f ${clean_py} ]]; then
    grep -q -- '--configs' "${clean_py}" && clean_args+=(--configs all)
elif cloud-init clean --help 2>&1 | grep -q -- '--configs'; then
    clean_args+=(--configs all)
fi
# `python3 -m cloudinit.cmd.clean` is `cloud-init clean` without loading every other subcommand
# first (2.0 s against 2.7 s under TCG); the command line tool where the module will not run.
python3 -m cloudinit.cmd.clean "${clean_args[@]}" 2>/dev/null || cloud-init clean "${clean_args[@]}"

# Root: keys (cloud-init's disable_root stub carries the build key), history.
rm -f /root/.ssh/authorized_keys /root/.bash_history /root/.lesshst /root/.wget-hsts
rm -rf /root/.cache

# Logs and temporary files.
journalctl --rotate >/dev/null 2>&1 || true
journalctl --vacuum-time=1s >/dev/null 2>&1 || true
find /var/log -type f \( -name '*.gz' -o -name '*.[0-9]' -o -name '*.old' \) -delete
find /var/log -type f -exec truncate -s 0 {} +
rm -rf /tmp/* /var/tmp/*

# Discard freed blocks so the exported RAW stays sparse (needs discard on the virtual disk).
fstrim -av >/dev/null 2>&1 || true
sync

echo "99-cleanup: done"
