#!/usr/bin/env bash
# 05 — make the driver use the GSP firmware: `options nvidia NVreg_EnableGpuFirmware=<value>`.
# Values (NVIDIA open-gpu-kernel-modules): 1 = force GSP on (init fails without gsp_*.bin),
# 17/0x11 = force on with fallback, 18/0x12 = the driver's default when unset. See
# docs/gpu-firmware.md. Env: NVIDIA_ENABLE_GPU_FIRMWARE (default 1).
# Runs as root. Idempotent: rewrites one file and rebuilds the initramfs.
set -euo pipefail
[[ ${EUID} -eq 0 ]] || { echo "05-nvidia-firmware-config: must run as root" >&2; exit 1; }

value="${NVIDIA_ENABLE_GPU_FIRMWARE:-1}"
if [[ ! ${value} =~ ^([0-9]+|0[xX][0-9a-fA-F]+)$ ]]; then
    echo "05-nvidia-firmware-config: NVIDIA_ENABLE_GPU_FIRMWARE=${value} is not a number" >&2
    exit 1
fi
conf=/etc/modprobe.d/nvidia-gpu-firmware.conf

# Another file setting the option would make the effective value depend on file order.
others="$(grep -lsE 'NVreg_EnableGpuFirmware|EnableGpuFirmware=' \
    /etc/modprobe.d/*.conf /lib/modprobe.d/*.conf /usr/lib/modprobe.d/*.conf 2>/dev/null \
    | grep -vx "${conf}" || true)"
if [[ -n ${others} ]]; then
    echo "05-nvidia-firmware-config: other files also set EnableGpuFirmware:" >&2
    echo "${others}" >&2
    exit 1
fi

cat > "${conf}.tmp" <<CONF
# Written by imgbake (05-nvidia-firmware-config).
# NVreg_EnableGpuFirmware=${value}: 1 forces the GSP firmware on; see docs/gpu-firmware.md.
options nvidia NVreg_EnableGpuFirmware=${value}
CONF
mv "${conf}.tmp" "${conf}"

# mkinitramfs copies /etc/modprobe.d into the initramfs; rebuild every kernel's.
update-initramfs -u -k all

echo "05-nvidia-firmware-config: $(modprobe -c | grep -E '^options nvidia .*NVreg_EnableGpuFirmware')"
