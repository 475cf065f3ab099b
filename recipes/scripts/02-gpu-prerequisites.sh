#!/usr/bin/env bash
# 02 — what any GPU driver needs: kernel headers for every installed kernel, DKMS and build
# tools; and nouveau blacklisted, so it can never claim the GPU before a driver does.
# Runs as root. Idempotent.
set -euo pipefail
[[ ${EUID} -eq 0 ]] || { echo "02-gpu-prerequisites: must run as root" >&2; exit 1; }
export DEBIAN_FRONTEND=noninteractive
apt_get() {
    apt-get -o DPkg::Lock::Timeout=600 \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "$@"
}

# Headers for every kernel on disk, not just the running one: 01 may have installed a newer
# kernel that the next boot will use, and DKMS builds modules for each kernel with headers.
headers=()
for dir in /lib/modules/*/; do
    headers+=("linux-headers-$(basename "${dir}")")
done
# The generic headers metapackage keeps headers coming with future kernel updates.
apt_get -y install --no-install-recommends \
    build-essential dkms pkg-config linux-headers-generic "${headers[@]}"

cat > /etc/modprobe.d/blacklist-nouveau.conf <<'CONF'
# Written by imgbake (02-gpu-prerequisites): keep nouveau away from NVIDIA GPUs.
blacklist nouveau
options nouveau modeset=0
CONF

# nouveau may be in the initramfs; rebuild it for every kernel so the blacklist applies at boot.
update-initramfs -u -k all

echo "02-gpu-prerequisites: headers for ${headers[*]}; dkms $(dkms --version 2>/dev/null || echo '?')"
