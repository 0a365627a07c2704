#!/usr/bin/env bash
# Time a cold CI run on this machine: a fresh clone of the current commit and `bash .ci/run` with an empty
# HOME, so nothing cached is reused (no ~/.cache/tickguard, Go module/build caches, cargo registry or pip
# cache). Only installed toolchains stay reachable: rustup's (RUSTUP_HOME), pyenv's Python (PYENV_ROOT), Go.
#   scripts/cold-ci.sh [WORKDIR]      (default /tmp/tickguard-cold-ci; removed and recreated)
# Prints the exit status and seconds; the full log is WORKDIR/ci.log.
set -u
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
root="${1:-/tmp/tickguard-cold-ci}"
rm -rf "$root" && mkdir -p "$root/home" "$root/tmp"
git clone -q "$repo" "$root/repo" || exit 1
cd "$root/repo" || exit 1
rustup_home="${RUSTUP_HOME:-$HOME/.rustup}"
pyenv_root="${PYENV_ROOT:-$HOME/.pyenv}"
start=$SECONDS
# TMPDIR inside the work dir: the suite's check that nothing is left in the temp dir then sees only this run.
env -i HOME="$root/home" TMPDIR="$root/tmp" RUSTUP_HOME="$rustup_home" PYENV_ROOT="$pyenv_root" LANG=C.UTF-8 \
  PATH="$pyenv_root/shims:$pyenv_root/bin:$HOME/.cargo/bin:/usr/local/go/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
  bash .ci/run >"$root/ci.log" 2>&1
status=$?
echo "cold-ci: commit $(git -C "$root/repo" log --oneline -1 | cut -c1-60): exit $status in $((SECONDS - start)) s (log: $root/ci.log)"
exit $status
