#!/usr/bin/env bash
# 06 — in-guest checks of the driver install (the build VM has no GPU, so nothing is loaded):
#   - modinfo: the nvidia module's version is on the expected branch;
#   - the GSP firmware for that exact version is in /lib/firmware/nvidia/<version>/;
#   - the effective modprobe config carries NVreg_EnableGpuFirmware=<expected>;
#   - the initramfs, if it contains nvidia, carries the same option.
# `imgbake verify` repeats these checks offline on the exported disk.
# Env: NVIDIA_DRIVER_BRANCH, NVIDIA_ENABLE_GPU_FIRMWARE (default 1).
set -euo pipefail
[[ ${EUID} -eq 0 ]] || { echo "06-verify-nvidia: must run as root" >&2; exit 1; }

branch="${NVIDIA_DRIVER_BRANCH:?set the recipe var nvidia_driver_branch}"
expected="${NVIDIA_ENABLE_GPU_FIRMWARE:-1}"
failures=0
fail() { echo "06-verify-nvidia: FAIL: $*" >&2; failures=$((failures + 1)); }
pass() { echo "06-verify-nvidia: ok: $*"; }

kernel="$(uname -r)"
version="$(modinfo -k "${kernel}" -F version nvidia 2>/dev/null || true)"
if [[ -z ${version} ]]; then
    fail "no nvidia module for the running kernel ${kernel}"
elif [[ ${version} != "${branch}".* ]]; then
    fail "nvidia module version ${version} is not on branch ${branch}"
else
    pass "nvidia module ${version} for kernel ${kernel}"
fi

if [[ -n ${version} ]]; then
    fwdir="/lib/firmware/nvidia/${version}"
    for blob in gsp_tu10x.bin gsp_ga10x.bin; do
        if [[ -s ${fwdir}/${blob} ]]; then
            pass "${fwdir}/${blob}"
        else
            fail "${fwdir}/${blob} is missing (GSP firmware must match the driver version exactly)"
        fi
    done
fi

# The effective configuration, as modprobe itself would apply it (last `options` wins).
effective="$(modprobe -c | sed -nE 's/^options nvidia .*NVreg_EnableGpuFirmware=([0-9a-fA-Fx]+).*/\1/p' | tail -n1)"
if [[ -z ${effective} ]]; then
    fail "no 'options nvidia NVreg_EnableGpuFirmware=…' in the modprobe configuration"
elif (( effective != expected )); then
    fail "NVreg_EnableGpuFirmware is ${effective}, expected ${expected}"
else
    pass "NVreg_EnableGpuFirmware=${effective}"
fi

initrd="/boot/initrd.img-${kernel}"
if [[ -r ${initrd} ]] && lsinitramfs "${initrd}" | grep -qE '/nvidia\.ko(\.zst|\.xz)?$'; then
    if lsinitramfs "${initrd}" | grep -q 'etc/modprobe.d/nvidia-gpu-firmware.conf$'; then
        pass "${initrd} contains nvidia and the option file"
    else
        fail "${initrd} contains nvidia but not the option file; run update-initramfs -u"
    fi
else
    pass "${initrd} does not load nvidia (the option is read from /etc/modprobe.d at load)"
fi

if (( failures > 0 )); then
    echo "06-verify-nvidia: ${failures} check(s) failed" >&2
    exit 1
fi
