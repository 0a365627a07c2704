#!/usr/bin/env bash
# Install the Debian packages tickguard's build and tests need, only when one is missing.
set -euo pipefail
packages=(git make gcc python3-venv curl ca-certificates docker-compose)  # docker-compose: validates compose/docker-compose.yml in tests
# debootstrap, iproute2 (ip): tests/images builds each image's root filesystem and runs it in namespaces
packages+=(debootstrap iproute2)
missing=()
for pkg in "${packages[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "sysdeps: all present (${packages[*]})"
  exit 0
fi
echo "sysdeps: installing ${missing[*]}"
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
