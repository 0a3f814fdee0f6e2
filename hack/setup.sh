#!/usr/bin/env bash
# Set up a fresh machine (Debian bookworm, as root or with sudo) for development and tests:
# system packages, the Python venv with the project and its test tools, and the Go-built binaries
# (Kubernetes + etcd into ~/.cache/spo/controlplane, containerd + crictl into ~/.cache/spo/node).
set -euo pipefail
cd "$(dirname "$0")/.."

# python3-venv: a stock Debian python3 cannot `python3 -m venv` without it (no ensurepip).
# secilc, policycoreutils, selinux-policy-default: RawSelinuxProfile policies are compiled in the tests.
# busybox-static: the node's images are built from it; runc, CNI plugins, iptables, iproute2, nftables:
# the node's runtime and network; auditd: the node's audit daemon (every seccomp line, none rate-limited);
# mmdebstrap and binutils (strip): the operator image's Debian base and libraries (`spo image build`).
APT_PACKAGES=(openssl procps ca-certificates git python3-venv secilc policycoreutils selinux-policy-default
  busybox-static runc containernetworking-plugins iptables iproute2 nftables auditd mmdebstrap binutils)
missing=()
for package in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "[setup] installing apt packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

PYTHON=${PYTHON:-python3}
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "[setup] need Python >= 3.11"; exit 1; }
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[test]'
echo "[setup] venv ready: .venv ($(.venv/bin/python --version))"

command -v go >/dev/null || { echo "[setup] Go is needed to build Kubernetes, etcd and containerd (go1.26+)"; exit 1; }
bash hack/controlplane/build.sh >/dev/null
bash hack/node/build.sh >/dev/null
echo "[setup] done. Next: .venv/bin/spo up   (or: bash hack/test.sh)"
