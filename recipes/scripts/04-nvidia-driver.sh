#!/usr/bin/env bash
# 04 — the NVIDIA driver as Ubuntu ships it, plus the NVIDIA Container Toolkit with containerd's
# default runtime set to `nvidia` (what Kubernetes' NVIDIA device plugin needs without a
# RuntimeClass or the GPU Operator).
# Ubuntu 22.04/24.04 carry the datacenter branches as `-server` packages, e.g. 565 (565.57.01)
# and 580: nvidia-headless-<branch>-server[-open], nvidia-utils-<branch>-server and the GSP
# firmware package nvidia-firmware-<branch>-server-<version>. (Plain nvidia-driver-565 needs
# NVIDIA's CUDA repo.) Since LP #2147038 (2026-04) the *-570-server packages are transitional
# to 580; this step refuses a branch whose packages pull in another branch.
# Env:
#   NVIDIA_DRIVER_BRANCH      e.g. 580 or 565
#   NVIDIA_KERNEL_MODULES     proprietary (default) | open (Blackwell needs open)
#   NVIDIA_PREBUILT_MODULES   true: Ubuntu's signed linux-modules-nvidia-<branch>-server[-open]-<flavour>
#                             (Secure Boot) instead of DKMS, when the archive has them for every
#                             installed kernel; else DKMS, with a message. Default false.
#   NVIDIA_FABRICMANAGER      true: install and enable nvidia-fabricmanager-<branch> (HGX with
#                             NVSwitch). Default false.
# Every installed package of the branch is held (apt-mark hold); exact versions are recorded in
# /etc/imgbake-versions (NVIDIA_DRIVER_VERSION=…; see docs/recipes.md).
# The recipe reboots after this step so the next steps run on the final kernel.
# Runs as root. Idempotent.
set -euo pipefail
[[ ${EUID} -eq 0 ]] || { echo "04-nvidia-driver: must run as root" >&2; exit 1; }
export DEBIAN_FRONTEND=noninteractive
apt_get() {
    apt-get -o DPkg::Lock::Timeout=600 \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "$@"
}
die() { echo "04-nvidia-driver: $*" >&2; exit 1; }
in_archive() { apt-cache show "$1" >/dev/null 2>&1; }
installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'ok installed$'; }
# true/false vars: `true` or `false` (or empty for false), nothing else, so a typo is an error.
flag() {
    case "${2}" in
        true) return 0 ;;
        false | "") return 1 ;;
        *) die "$1 must be true or false, not '${2}'" ;;
    esac
}
# /etc/imgbake-versions: one KEY=VALUE per line, each step replacing only its own keys.
record_version() {
    local file=/etc/imgbake-versions
    touch "${file}"
    grep -v "^$1=" "${file}" > "${file}.tmp" || true
    echo "$1=$2" >> "${file}.tmp"
    mv "${file}.tmp" "${file}"
}

branch="${NVIDIA_DRIVER_BRANCH:?set the recipe var nvidia_driver_branch, e.g. 580}"
[[ ${branch} =~ ^[0-9]+$ ]] || die "NVIDIA_DRIVER_BRANCH=${branch} is not a number"
case "${NVIDIA_KERNEL_MODULES:-proprietary}" in
    proprietary) suffix="" ;;
    open) suffix="-open" ;;
    *) die "NVIDIA_KERNEL_MODULES must be proprietary or open, not '${NVIDIA_KERNEL_MODULES}'" ;;
esac
prebuilt=false
if flag NVIDIA_PREBUILT_MODULES "${NVIDIA_PREBUILT_MODULES:-false}"; then prebuilt=true; fi
fabricmanager=false
if flag NVIDIA_FABRICMANAGER "${NVIDIA_FABRICMANAGER:-false}"; then fabricmanager=true; fi

headless="nvidia-headless-${branch}-server${suffix}"
utils="nvidia-utils-${branch}-server"
apt_get update
if ! in_archive "${headless}"; then
    echo "04-nvidia-driver: ${headless} is not in this release's archive" >&2
    echo "  (Ubuntu ships some branches only via NVIDIA's CUDA repository; see docs/gpu-firmware.md)" >&2
    exit 1
fi
# A transitional package (570 → 580) depends on another branch's packages of the same kind.
other="$(apt-cache depends "${headless}" 2>/dev/null \
    | grep -oE "nvidia-headless-(no-dkms-)?[0-9]+-server" | grep -v -- "-${branch}-server" | head -n1 || true)"
if [[ -n ${other} ]]; then
    die "${headless} is a transitional package for ${other} (Ubuntu moved the branch, e.g. 570 → 580 in LP #2147038); set nvidia_driver_branch to the branch it installs"
fi

# Prebuilt, signed modules: one linux-modules-nvidia package per installed kernel, plus the
# flavour's metapackage so kernel updates bring matching modules. The flavour is the running
# kernel's (5.15.0-130-generic → generic).
modules=()
if [[ ${prebuilt} == true ]]; then
    kernel="$(uname -r)"
    flavour="${kernel#*-*-}"
    nodkms="nvidia-headless-no-dkms-${branch}-server${suffix}"
    modules=("linux-modules-nvidia-${branch}-server${suffix}-${flavour}")
    for dir in /lib/modules/*/; do
        modules+=("linux-modules-nvidia-${branch}-server${suffix}-$(basename "${dir}")")
    done
    missing=()
    for package in "${nodkms}" "${modules[@]}"; do
        in_archive "${package}" || missing+=("${package}")
    done
    if (( ${#missing[@]} > 0 )); then
        echo "04-nvidia-driver: NVIDIA_PREBUILT_MODULES=true, but the archive lacks ${missing[*]};" \
            "building the modules with DKMS instead (unsigned: Secure Boot needs a MOK)" >&2
        prebuilt=false
        modules=()
    else
        headless="${nodkms}"
    fi
fi

apt-mark unhold "${headless}" "${utils}" "${modules[@]}" >/dev/null 2>&1 || true
apt_get -y install --no-install-recommends --allow-change-held-packages \
    "${headless}" "${utils}" "${modules[@]}"

# The GSP firmware package is versioned by the exact driver version; install it by name so a
# dependency change can never leave /lib/firmware/nvidia/<version>/ empty.
upstream="$(dpkg-query -W -f='${Version}' "${utils}")"
upstream="${upstream%%-*}"
[[ ${upstream} == "${branch}".* ]] || die "${utils} installed driver ${upstream}, not branch ${branch}"
firmware="nvidia-firmware-${branch}-server-${upstream}"
if in_archive "${firmware}"; then
    apt_get -y install --no-install-recommends "${firmware}"
fi

# Fabric Manager must be the driver's exact version, or it refuses to start.
if [[ ${fabricmanager} == true ]]; then
    fm="nvidia-fabricmanager-${branch}"
    in_archive "${fm}" || die "NVIDIA_FABRICMANAGER=true, but ${fm} is not in this release's archive"
    apt-mark unhold "${fm}" >/dev/null 2>&1 || true
    apt_get -y install --no-install-recommends --allow-change-held-packages "${fm}"
    fm_version="$(dpkg-query -W -f='${Version}' "${fm}")"
    fm_version="${fm_version%%-*}"
    [[ ${fm_version} == "${upstream}" ]] || die "${fm} is ${fm_version}, the driver is ${upstream}; they must match"
    # Enabled, not started: the build VM has no NVSwitch.
    systemctl enable nvidia-fabricmanager.service
    record_version NVIDIA_FABRICMANAGER_VERSION "${fm_version}"
fi

# A module for every installed kernel (the next boot may use a newer one), on the branch.
for dir in /lib/modules/*/; do
    kernel="$(basename "${dir}")"
    version="$(modinfo -k "${kernel}" -F version nvidia 2>/dev/null || true)"
    if [[ -z ${version} ]]; then
        echo "04-nvidia-driver: no nvidia module for kernel ${kernel}; dkms status:" >&2
        dkms status >&2 || true
        exit 1
    fi
    [[ ${version} == "${upstream}" ]] || die "kernel ${kernel} has nvidia module ${version}, the driver is ${upstream}"
done

# Hold every installed package of the branch (libnvidia-*-<branch>-server, nvidia-dkms-…,
# nvidia-kernel-common-…, nvidia-firmware-…, linux-modules-nvidia-…, fabric manager), so no
# upgrade moves one part of the driver away from the others.
mapfile -t held < <(dpkg-query -W -f='${Package} ${Status}\n' \
    | awk '$NF == "installed" {print $1}' \
    | grep -E "nvidia.*-${branch}(-|$)" || true)
(( ${#held[@]} > 0 )) || die "no installed packages of branch ${branch} to hold"
apt-mark hold "${held[@]}" >/dev/null

# NVIDIA Container Toolkit from NVIDIA's libnvidia-container apt repository.
install -d -m 0755 /usr/share/keyrings
curl -fsSL --retry 5 https://nvidia.github.io/libnvidia-container/gpgkey \
    | gpg --dearmor --yes -o /usr/share/keyrings/nvidia-container-toolkit-keyring.gpg
curl -fsSL --retry 5 https://nvidia.github.io/libnvidia-container/stable/deb/nvidia-container-toolkit.list \
    | sed 's#deb https://#deb [signed-by=/usr/share/keyrings/nvidia-container-toolkit-keyring.gpg] https://#g' \
    > /etc/apt/sources.list.d/nvidia-container-toolkit.list
apt_get update
apt_get -y install --no-install-recommends nvidia-container-toolkit
# --set-as-default: pods get the nvidia runtime without a RuntimeClass.
nvidia-ctk runtime configure --runtime=containerd --set-as-default
systemctl restart containerd

modules_source=dkms
if [[ ${prebuilt} == true ]]; then modules_source=prebuilt; fi
record_version NVIDIA_DRIVER_BRANCH "${branch}"
record_version NVIDIA_DRIVER_VERSION "${upstream}"
record_version NVIDIA_KERNEL_MODULES "${NVIDIA_KERNEL_MODULES:-proprietary}"
record_version NVIDIA_MODULES_SOURCE "${modules_source}"
record_version NVIDIA_CONTAINER_TOOLKIT_VERSION "$(dpkg-query -W -f='${Version}' nvidia-container-toolkit)"

echo "04-nvidia-driver: ${headless} ${upstream} (${modules_source}), held: ${held[*]};" \
    "$(nvidia-ctk --version | head -n1)"
