#!/usr/bin/env bash
# Build the Debian root filesystem that stands in for python:3.11-slim-bookworm when the image tests
# (tests/images) reproduce our Dockerfiles without a Docker engine.
#
#   scripts/rootfs-base.sh DIR [RELEASE]
#
# debootstrap --variant=minbase is what debian:bookworm-slim is built from; on top we add what the
# official python:3.11-slim image adds over it: ca-certificates, netbase, tzdata and a Python 3.11 that
# answers as `python`/`python3`/`pip` from /usr/local/bin. The official image compiles CPython itself;
# we use Debian's python3.11 + python3.11-venv instead (the one deliberate difference; python3-distutils
# only because debootstrap cannot pick the provider of python3.11-venv's virtual python3.11-distutils). Neither ships or
# pulls libgomp1, which is the point: the api image must install it itself (checked below).
# DIR is written through a temporary sibling and renamed at the end, so a half-built base is never used.
set -euo pipefail
dir=${1:?usage: rootfs-base.sh DIR [RELEASE]}
release=${2:-bookworm}
# The packages the base adds; tests/images/rootfs.py hashes this line into the cache key.
BASE_PACKAGES="ca-certificates,netbase,tzdata,python3.11,python3.11-venv,python3-distutils"
[ "${PRINT_PACKAGES:-}" = 1 ] && { echo "$BASE_PACKAGES"; exit 0; }

command -v debootstrap >/dev/null || { echo "rootfs-base: debootstrap not found (scripts/install-sysdeps.sh)" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || { echo "rootfs-base: debootstrap and chroot need root" >&2; exit 1; }
# debootstrap mounts /proc and /sys inside the target. In a private mount namespace those mounts never
# reach the host and vanish with the last process, even if this script is killed halfway: a later
# `rm -rf` of a half-built root can never reach through a leftover mount.
if [ -z "${ROOTFS_BASE_PRIVATE_MOUNTS:-}" ]; then
  exec env ROOTFS_BASE_PRIVATE_MOUNTS=1 unshare --mount --propagation private -- bash "$0" "$@"
fi

# The Debian mirror apt uses on this machine (deb822 sources first, then the one-line format).
mirror=$(sed -n 's/^URIs:[[:space:]]*\([^[:space:]]*\).*/\1/p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | grep -v -- '-security' | head -1 || true)
[ -n "$mirror" ] || mirror=$(awk '$1 == "deb" && $2 !~ /security/ {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
mirror=${mirror:-http://deb.debian.org/debian}
security=${mirror%/debian}/debian-security

tmp="$dir.partial"
rm -rf "$tmp"
mkdir -p "$(dirname "$dir")"
echo "rootfs-base: debootstrap --variant=minbase $release from $mirror (+ $BASE_PACKAGES)"
debootstrap --variant=minbase --include="$BASE_PACKAGES" "$release" "$tmp" "$mirror" >"$tmp.log" 2>&1 \
  || { tail -20 "$tmp.log" >&2; echo "rootfs-base: debootstrap failed (log above)" >&2; exit 1; }
rm -f "$tmp.log"

# The same apt sources as debian:bookworm-slim (release, updates, security), so a Dockerfile's
# `apt-get update && apt-get install` sees the same archive.
rm -f "$tmp/etc/apt/sources.list"
cat >"$tmp/etc/apt/sources.list.d/debian.sources" <<SOURCES
Types: deb
URIs: $mirror
Suites: $release $release-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $security
Suites: $release-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SOURCES
# debian:*-slim configures apt and dpkg to keep images small: no translations, no apt binary caches
# or downloaded .debs after an install, no docs/man pages/locales (copyright files stay). Same here,
# so a Dockerfile's `apt-get install` leaves the same bytes behind as it does on the real image.
cat >"$tmp/etc/apt/apt.conf.d/docker-slim" <<'APT'
Acquire::Languages "none";
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
APT::AutoRemove::SuggestsImportant "false";
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb || true"; };
APT
cat >"$tmp/etc/dpkg/dpkg.cfg.d/docker-slim" <<'DPKG'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/lintian/*
DPKG
find "$tmp/usr/share/doc" -mindepth 1 ! -name copyright ! -type d -delete
find "$tmp/usr/share/doc" -mindepth 1 -type d -empty -delete
rm -rf "$tmp"/usr/share/man/* "$tmp"/usr/share/info/* "$tmp"/usr/share/locale/* "$tmp"/usr/share/lintian/*
# No package lists, no downloaded .debs, no apt binary caches.
chroot "$tmp" apt-get clean
rm -rf "$tmp"/var/lib/apt/lists/* "$tmp"/var/cache/apt/*.bin

# python:3.11-slim keeps its interpreter, pip and site-packages under /usr/local. A venv at /usr/local
# gives exactly that layout (bin/python, bin/pip, lib/python3.11/site-packages) without touching
# Debian's externally-managed system Python.
chroot "$tmp" /usr/bin/python3.11 -m venv /usr/local
chroot "$tmp" /usr/local/bin/python -c 'import ssl, sqlite3, venv, ensurepip' \
  || { echo "rootfs-base: Python in the base root is incomplete" >&2; exit 1; }

if chroot "$tmp" dpkg -s libgomp1 >/dev/null 2>&1 || [ -n "$(find "$tmp" -xdev -name 'libgomp.so*' -print -quit)" ]; then
  echo "rootfs-base: libgomp made it into the base root: the api image's libgomp1 line would go untested" >&2
  exit 1
fi
mv "$tmp" "$dir"
echo "rootfs-base: ready: $dir ($(du -sxh "$dir" | cut -f1))"
