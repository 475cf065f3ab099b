#!/usr/bin/env bash
# 04 — the NVIDIA driver as Ubuntu ships it, plus the NVIDIA Container Toolkit.
# Ubuntu 22.04/24.04 carry the 565 branch only as the `-server` packages (565.57.01):
# nvidia-headless-565-server[-open], nvidia-utils-565-server and the GSP firmware package
# nvidia-firmware-565-server-<version>. (Plain nvidia-driver-565 needs NVIDIA's CUDA repo.)
# Env: NVIDIA_DRIVER_BRANCH (e.g. 565); NVIDIA_KERNEL_MODULES: proprietary | open.
# The recipe reboots after this step so the next steps run on the final kernel.
# Runs as root. Idempotent.
set -euo pipefail
[[ ${EUID} -eq 0 ]] || { echo "04-nvidia-driver: must run as root" >&2; exit 1; }
export DEBIAN_FRONTEND=noninteractive
apt_get() {
    apt-get -o DPkg::Lock::Timeout=600 \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "$@"
}

branch="${NVIDIA_DRIVER_BRANCH:?set the recipe var nvidia_driver_branch, e.g. 565}"
[[ ${branch} =~ ^[0-9]+$ ]] || { echo "04-nvidia-driver: NVIDIA_DRIVER_BRANCH=${branch} is not a number" >&2; exit 1; }
case "${NVIDIA_KERNEL_MODULES:-proprietary}" in
    proprietary) suffix="" ;;
    open) suffix="-open" ;;
    *) echo "04-nvidia-driver: NVIDIA_KERNEL_MODULES must be proprietary or open" >&2; exit 1 ;;
esac

headless="nvidia-headless-${branch}-server${suffix}"
utils="nvidia-utils-${branch}-server"
apt_get update
if ! apt-cache show "${headless}" >/dev/null 2>&1; then
    echo "04-nvidia-driver: ${headless} is not in this release's archive" >&2
    echo "  (Ubuntu ships some branches only via NVIDIA's CUDA repository; see docs/gpu-firmware.md)" >&2
    exit 1
fi
apt-mark unhold "${headless}" "${utils}" >/dev/null 2>&1 || true
apt_get -y install --no-install-recommends --allow-change-held-packages "${headless}" "${utils}"

# The GSP firmware package is versioned by the exact driver version; install it by name so a
# dependency change can never leave /lib/firmware/nvidia/<version>/ empty.
upstream="$(dpkg-query -W -f='${Version}' "${utils}")"
upstream="${upstream%%-*}"
firmware="nvidia-firmware-${branch}-server-${upstream}"
if apt-cache show "${firmware}" >/dev/null 2>&1; then
    apt_get -y install --no-install-recommends "${firmware}"
fi
# Keep driver, utils and firmware in lock-step with the built modules.
apt-mark hold "${headless}" "${utils}"
if dpkg-query -W -f='${Status}' "${firmware}" 2>/dev/null | grep -q 'install ok installed'; then
    apt-mark hold "${firmware}"
fi

# DKMS must have built the module for every installed kernel (the next boot may use a newer one).
for dir in /lib/modules/*/; do
    kernel="$(basename "${dir}")"
    if ! modinfo -k "${kernel}" -F version nvidia >/dev/null 2>&1; then
        echo "04-nvidia-driver: no nvidia module for kernel ${kernel}; dkms status:" >&2
        dkms status >&2 || true
        exit 1
    fi
done

# NVIDIA Container Toolkit from NVIDIA's libnvidia-container apt repository.
install -d -m 0755 /usr/share/keyrings
curl -fsSL --retry 5 https://nvidia.github.io/libnvidia-container/gpgkey \
    | gpg --dearmor --yes -o /usr/share/keyrings/nvidia-container-toolkit-keyring.gpg
curl -fsSL --retry 5 https://nvidia.github.io/libnvidia-container/stable/deb/nvidia-container-toolkit.list \
    | sed 's#deb https://#deb [signed-by=/usr/share/keyrings/nvidia-container-toolkit-keyring.gpg] https://#g' \
    > /etc/apt/sources.list.d/nvidia-container-toolkit.list
apt_get update
apt_get -y install --no-install-recommends nvidia-container-toolkit
nvidia-ctk runtime configure --runtime=containerd
systemctl restart containerd

echo "04-nvidia-driver: ${headless} ${upstream}, $(nvidia-ctk --version | head -n1)"
