#!/usr/bin/env bash
# 03 — Kubernetes node tools: containerd (Ubuntu's package, systemd cgroups), and kubelet,
# kubeadm, kubectl from pkgs.k8s.io, held so unattended upgrades never move them.
# Env: KUBERNETES_VERSION — `v1.30` (latest patch of that minor) or `v1.30.4` (pinned).
# Runs as root. Idempotent.
set -euo pipefail
[[ ${EUID} -eq 0 ]] || { echo "03-kubernetes-tools: must run as root" >&2; exit 1; }
export DEBIAN_FRONTEND=noninteractive
apt_get() {
    apt-get -o DPkg::Lock::Timeout=600 \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "$@"
}

version="${KUBERNETES_VERSION:?set the recipe var kubernetes_version, e.g. v1.30}"
version="${version#v}"
if [[ ! ${version} =~ ^([0-9]+)\.([0-9]+)(\.([0-9]+))?$ ]]; then
    echo "03-kubernetes-tools: KUBERNETES_VERSION=${KUBERNETES_VERSION} is not vMAJOR.MINOR[.PATCH]" >&2
    exit 1
fi
minor="v${BASH_REMATCH[1]}.${BASH_REMATCH[2]}"
patch="${BASH_REMATCH[4]:-}"

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

packages=(kubelet kubeadm kubectl)
if [[ -n ${patch} ]]; then
    want="${version}-*"
    packages=("kubelet=${want}" "kubeadm=${want}" "kubectl=${want}")
fi
apt-mark unhold kubelet kubeadm kubectl >/dev/null 2>&1 || true
apt_get -y install --no-install-recommends --allow-change-held-packages "${packages[@]}"
apt-mark hold kubelet kubeadm kubectl
# kubelet crash-loops until kubeadm configures it; leave it enabled but stopped in the image.
systemctl enable kubelet
systemctl stop kubelet || true

echo "03-kubernetes-tools: $(kubeadm version -o short), containerd $(containerd --version | awk '{print $3}')"
