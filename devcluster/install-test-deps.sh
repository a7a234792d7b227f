#!/usr/bin/env bash
# Installs the Debian packages the tests need: the servers the connector tests start (PostgreSQL:
# initdb, pg_ctl, postgres; OpenSSH's sshd), and what builds and runs the dev node's images
# (buildah, mmdebstrap and a static C toolchain for devcluster/build-images.sh; containerd, runc,
# the CNI plugins and iptables for the node).
#
#   devcluster/install-test-deps.sh            all of them (make test)
#   devcluster/install-test-deps.sh --images   only the image and node packages (make images)
#
# Idempotent: does nothing when every package is installed; runs `apt-get update` only when one
# is missing. The packages' own services are NOT started (a temporary policy-rc.d forbids it):
# the tests start their own servers on 127.0.0.1 in temporary folders (tests/e2e/servers.py).
set -euo pipefail

SERVER_PACKAGES=(postgresql openssh-server)
IMAGE_PACKAGES=(buildah mmdebstrap gcc libc6-dev containerd runc containernetworking-plugins iptables iproute2)
case "${1:-}" in
  "") PACKAGES=("${SERVER_PACKAGES[@]}" "${IMAGE_PACKAGES[@]}") ;;
  --images) PACKAGES=("${IMAGE_PACKAGES[@]}") ;;
  *) echo "usage: $0 [--images]" >&2; exit 2 ;;
esac

installed() {
  dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'
}

missing=()
for pkg in "${PACKAGES[@]}"; do
  installed "$pkg" || missing+=("$pkg")
done
if [[ ${#missing[@]} -eq 0 ]]; then
  echo "Test dependencies present: ${PACKAGES[*]}."
  exit 0
fi

if [[ $(id -u) -ne 0 ]]; then
  if command -v sudo >/dev/null 2>&1; then
    SUDO=(sudo)
  else
    echo "Missing packages ${missing[*]} and not root (no sudo): install them first." >&2
    exit 1
  fi
else
  SUDO=()
fi

# Keep the packages from starting their system services (sshd on port 22, a PostgreSQL
# cluster on 5432, the system's containerd) while they install: exit code 101 means "action
# forbidden" to invoke-rc.d.
policy=/usr/sbin/policy-rc.d
own_policy=0
if [[ ! -e $policy ]]; then
  printf '#!/bin/sh\nexit 101\n' | "${SUDO[@]}" tee "$policy" >/dev/null
  "${SUDO[@]}" chmod 755 "$policy"
  own_policy=1
fi
cleanup() {
  if [[ $own_policy -eq 1 ]]; then "${SUDO[@]}" rm -f "$policy"; fi
}
trap cleanup EXIT

echo "Installing ${missing[*]} (apt-get)..."
export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get update -qq
"${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "Installed ${missing[*]}."
