#!/usr/bin/env bash
# 01 — bring the base image up to date and install the tools later steps need.
# Runs as root. Idempotent: re-running upgrades nothing that is already current.
set -euo pipefail
[[ ${EUID} -eq 0 ]] || { echo "01-system-update: must run as root" >&2; exit 1; }
export DEBIAN_FRONTEND=noninteractive

# Wait up to 10 minutes for dpkg locks (first-boot apt timers can hold them), keep the
# distribution's config files on upgrade.
apt_get() {
    apt-get -o DPkg::Lock::Timeout=600 \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "$@"
}

# The first-boot unattended upgrade would race our own apt runs; the finished image keeps
# the timers enabled (this only stops them for the build boot).
systemctl stop apt-daily.timer apt-daily-upgrade.timer unattended-upgrades.service 2>/dev/null || true

apt_get update
apt_get -y dist-upgrade
apt_get -y install --no-install-recommends \
    ca-certificates curl gnupg apt-transport-https software-properties-common pciutils

echo "01-system-update: $(lsb_release -ds 2>/dev/null || grep PRETTY_NAME /etc/os-release), kernels:" \
    "$(find /lib/modules -mindepth 1 -maxdepth 1 -printf '%f ' | sort)"
