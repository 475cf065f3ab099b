#!/usr/bin/env bash
# 06 — in-guest checks of the driver install (the build VM has no GPU, so nothing is loaded):
#   - modinfo: the nvidia module's version is on the expected branch;
#   - the GSP firmware for that exact version is in /lib/firmware/nvidia/<version>/;
#   - the effective modprobe config carries NVreg_EnableGpuFirmware=<expected>;
#   - the initramfs, if it contains nvidia, carries the same option;
#   - the modules are the kind asked for (open: "Dual MIT/GPL" licence; proprietary: "NVIDIA");
#   - every installed package of the branch is held;
#   - containerd's effective default runtime is `nvidia`;
#   - with NVIDIA_FABRICMANAGER=true, nvidia-fabricmanager is installed, enabled, same version;
#   - /etc/imgbake-versions records the driver version that is installed.
# `imgbake verify` repeats the driver, firmware and option checks offline on the exported disk.
# Env: NVIDIA_DRIVER_BRANCH, NVIDIA_ENABLE_GPU_FIRMWARE (default 1), NVIDIA_KERNEL_MODULES
# (default proprietary), NVIDIA_FABRICMANAGER (default false).
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

# The listing is captured first: `lsinitramfs | grep -q` under pipefail can fail with SIGPIPE
# when grep exits at its first match while lsinitramfs is still writing.
initrd="/boot/initrd.img-${kernel}"
listing=""
if [[ -r ${initrd} ]]; then
    listing="$(lsinitramfs "${initrd}")"
fi
if [[ -n ${listing} ]] && (( $(grep -cE '/nvidia\.ko(\.zst|\.xz)?$' <<<"${listing}" || true) > 0 )); then
    if (( $(grep -c 'etc/modprobe.d/nvidia-gpu-firmware.conf$' <<<"${listing}" || true) > 0 )); then
        pass "${initrd} contains nvidia and the option file"
    else
        fail "${initrd} contains nvidia but not the option file; run update-initramfs -u"
    fi
else
    pass "${initrd} does not load nvidia (the option is read from /etc/modprobe.d at load)"
fi

if [[ -n ${version} ]]; then
    license="$(modinfo -k "${kernel}" -F license nvidia 2>/dev/null || true)"
    case "${NVIDIA_KERNEL_MODULES:-proprietary}:${license}" in
        open:"Dual MIT/GPL" | proprietary:NVIDIA) pass "${NVIDIA_KERNEL_MODULES:-proprietary} kernel modules (licence ${license})" ;;
        *) fail "the nvidia module's licence is '${license}', not what ${NVIDIA_KERNEL_MODULES:-proprietary} modules carry" ;;
    esac
fi

# Every installed package of the branch must be held (04 holds them).
branch_packages="$(dpkg-query -W -f='${Package} ${Status}\n' \
    | awk '$NF == "installed" {print $1}' | grep -E "nvidia.*-${branch}(-|$)" || true)"
held="$(apt-mark showhold)"
unheld="$(comm -23 <(sort <<<"${branch_packages}") <(sort <<<"${held}") | tr '\n' ' ')"
if [[ -z ${branch_packages} ]]; then
    fail "no installed packages of branch ${branch}"
elif [[ -n ${unheld// /} ]]; then
    fail "packages of branch ${branch} not held: ${unheld}"
else
    pass "all $(wc -l <<<"${branch_packages}") packages of branch ${branch} held"
fi

# containerd's effective configuration (config.toml with its imports, as containerd reads it).
containerd_config="$(containerd config dump 2>/dev/null || true)"
default_runtime="$(sed -nE 's/^[[:space:]]*default_runtime_name[[:space:]]*=[[:space:]]*"([^"]*)".*/\1/p' <<<"${containerd_config}" | sort -u | tr '\n' ' ')"
if [[ ${default_runtime% } == nvidia ]]; then
    pass "containerd's default runtime is nvidia"
else
    fail "containerd's default runtime is '${default_runtime% }', not nvidia; run nvidia-ctk runtime configure --runtime=containerd --set-as-default"
fi

case "${NVIDIA_FABRICMANAGER:-false}" in
    true)
        fm_version="$(dpkg-query -W -f='${Version}' "nvidia-fabricmanager-${branch}" 2>/dev/null || true)"
        if [[ -z ${fm_version} ]]; then
            fail "nvidia-fabricmanager-${branch} is not installed"
        elif [[ ${fm_version%%-*} != "${version}" ]]; then
            fail "nvidia-fabricmanager-${branch} is ${fm_version%%-*}, the driver is ${version}"
        elif ! systemctl is-enabled --quiet nvidia-fabricmanager.service; then
            fail "nvidia-fabricmanager.service is not enabled"
        else
            pass "nvidia-fabricmanager ${fm_version%%-*} installed and enabled"
        fi
        ;;
    *) ;;
esac

recorded="$(sed -n 's/^NVIDIA_DRIVER_VERSION=//p' /etc/imgbake-versions 2>/dev/null || true)"
if [[ -n ${version} && ${recorded} == "${version}" ]]; then
    pass "/etc/imgbake-versions records NVIDIA_DRIVER_VERSION=${recorded}"
else
    fail "/etc/imgbake-versions records NVIDIA_DRIVER_VERSION='${recorded}', the module is '${version}'"
fi

if (( failures > 0 )); then
    echo "06-verify-nvidia: ${failures} check(s) failed" >&2
    exit 1
fi
