#!/usr/bin/env bash
# 03 — Kubernetes node tools: containerd (Ubuntu's package, systemd cgroups), and kubelet,
# kubeadm, kubectl from pkgs.k8s.io, held so unattended upgrades never move them.
# Env: KUBERNETES_VERSION — `v1.30.0` (exactly that patch) or `v1.30` (the latest patch of
# that minor). The exact package versions are resolved from the pkgs.k8s.io index, installed
# by version, and recorded in /etc/imgbake-versions (KUBERNETES_VERSION=v1.30.0, …; see
# docs/recipes.md).
# Runs as root. Idempotent.
set -euo pipefail
[[ ${EUID} -eq 0 ]] || { echo "03-kubernetes-tools: must run as root" >&2; exit 1; }
export DEBIAN_FRONTEND=noninteractive
apt_get() {
    apt-get -o DPkg::Lock::Timeout=600 \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "$@"
}

version="${KUBERNETES_VERSION:?set the recipe var kubernetes_version, e.g. v1.30.0}"
version="${version#v}"
if [[ ! ${version} =~ ^([0-9]+)\.([0-9]+)(\.([0-9]+))?$ ]]; then
    echo "03-kubernetes-tools: KUBERNETES_VERSION=${KUBERNETES_VERSION} is not vMAJOR.MINOR[.PATCH]" >&2
    exit 1
fi
minor="v${BASH_REMATCH[1]}.${BASH_REMATCH[2]}"
patch="${BASH_REMATCH[4]:-}"

# /etc/imgbake-versions: one KEY=VALUE per line (shell and os-release syntax), read by
# `imgbake verify` and the payload; each step replaces only its own keys.
record_version() {
    local file=/etc/imgbake-versions
    touch "${file}"
    grep -v "^$1=" "${file}" > "${file}.tmp" || true
    echo "$1=$2" >> "${file}.tmp"
    mv "${file}.tmp" "${file}"
}

# Kernel modules and sysctls a kubelet node needs.
cat > /etc/modules-load.d/k8s.conf <<'CONF'
overlay
br_netfilter
CONF
modprobe overlay
modprobe br_netfilter
cat > /etc/sysctl.d/99-kubernetes.conf <<'CONF'
net.bridge.bridge-nf-call-iptables  = 1
net.bridge.bridge-nf-call-ip6tables = 1
net.ipv4.ip_forward                 = 1
CONF
sysctl --system >/dev/null

apt_get -y install --no-install-recommends containerd
mkdir -p /etc/containerd
if [[ ! -s /etc/containerd/config.toml ]] || ! grep -q 'SystemdCgroup' /etc/containerd/config.toml; then
    containerd config default > /etc/containerd/config.toml
fi
sed -i 's/SystemdCgroup = false/SystemdCgroup = true/' /etc/containerd/config.toml
systemctl enable containerd
systemctl restart containerd

# pkgs.k8s.io: one repository per minor version.
install -d -m 0755 /etc/apt/keyrings
curl -fsSL --retry 5 "https://pkgs.k8s.io/core:/stable:/${minor}/deb/Release.key" \
    | gpg --dearmor --yes -o /etc/apt/keyrings/kubernetes-apt-keyring.gpg
chmod 0644 /etc/apt/keyrings/kubernetes-apt-keyring.gpg
echo "deb [signed-by=/etc/apt/keyrings/kubernetes-apt-keyring.gpg] https://pkgs.k8s.io/core:/stable:/${minor}/deb/ /" \
    > /etc/apt/sources.list.d/kubernetes.list
apt_get update

# The exact package version of each tool: `<patch>-<revision>` (e.g. 1.30.0-1.1), the newest
# revision of the requested patch, or the newest patch of the minor.
resolve() {
    local package="$1" versions
    versions="$(apt-cache madison "${package}" | awk '{print $3}' | sort -uV)"
    if [[ -n ${patch} ]]; then
        versions="$(awk -v want="${version}-" 'index($0, want) == 1' <<<"${versions}")"
    fi
    if [[ -z ${versions} ]]; then
        echo "03-kubernetes-tools: ${package} ${KUBERNETES_VERSION} is not in pkgs.k8s.io ${minor}; it has:" >&2
        apt-cache madison "${package}" | awk '{print "  " $3}' >&2
        return 1
    fi
    tail -n1 <<<"${versions}"
}
packages=()
for tool in kubelet kubeadm kubectl; do
    packages+=("${tool}=$(resolve "${tool}")")
done
apt-mark unhold kubelet kubeadm kubectl >/dev/null 2>&1 || true
apt_get -y install --no-install-recommends --allow-change-held-packages --allow-downgrades "${packages[@]}"
apt-mark hold kubelet kubeadm kubectl

# Record what is installed (not what was asked for): kubelet's package version, vX.Y.Z.
installed="$(dpkg-query -W -f='${Version}' kubelet)"
installed="v${installed%%-*}"
if [[ -n ${patch} && ${installed} != "v${version}" ]]; then
    echo "03-kubernetes-tools: kubelet ${installed} is installed, but ${KUBERNETES_VERSION} was asked for" >&2
    exit 1
fi
record_version KUBERNETES_VERSION "${installed}"
for tool in kubelet kubeadm kubectl; do
    record_version "${tool^^}_PACKAGE_VERSION" "$(dpkg-query -W -f='${Version}' "${tool}")"
done
record_version CONTAINERD_PACKAGE_VERSION "$(dpkg-query -W -f='${Version}' containerd)"
# kubelet crash-loops until kubeadm configures it; leave it enabled but stopped in the image.
systemctl enable kubelet
systemctl stop kubelet || true

echo "03-kubernetes-tools: ${packages[*]} (${installed}), $(kubeadm version -o short), containerd $(containerd --version | awk '{print $3}')"
