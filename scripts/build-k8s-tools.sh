#!/usr/bin/env bash
# Build the tools that validate the Helm chart (deploy/helm/tickguard) without a cluster, from the Go
# module proxy:
#   helm          helm.sh/helm/v3 v3.19.0 (pinned in scripts/k8s-validate/go.mod)
#   k8s-validate  scripts/k8s-validate: strict decoding of every rendered object against k8s.io/api v0.34.0
# Both come from one module, so one go.sum pins helm and the Kubernetes API types together.
# Binaries live in a cache outside the repo (${TICKGUARD_CACHE:-$HOME/.cache/tickguard}/bin/k8s-tools-<hash>);
# the repo gets symlinks in .k8s/bin/. The hash covers the module's sources and the Go version, so a second
# run only re-links (seconds). Cold: ~4-6 min on 2 cores (helm is most of it).
set -euo pipefail

HELM_VERSION=v3.19.0
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MODULE_DIR="$REPO_ROOT/scripts/k8s-validate"
CACHE_DIR="${TICKGUARD_CACHE:-$HOME/.cache/tickguard}"
LINK_DIR="$REPO_ROOT/.k8s/bin"
BUILD_JOBS="${TICKGUARD_BUILD_JOBS:-2}"

# Progress and errors on stderr; `fail` ends the build with status 1.
say() { echo "build-k8s-tools: $*" >&2; }
fail() { say "ERROR: $*"; exit 1; }

# Go >= 1.24 (helm 3.19's go.mod): the machine's, or the one scripts/build-tick.sh fetched into the cache.
find_go() {
  local candidate
  for candidate in "" /usr/local/go/bin /usr/lib/go/bin "$CACHE_DIR"/go-*/bin; do
    if [ -n "$candidate" ]; then
      [ -x "$candidate/go" ] || continue
      export PATH="$candidate:$PATH"
    fi
    if command -v go >/dev/null 2>&1; then
      local minor
      minor="$(go env GOVERSION 2>/dev/null | sed -n 's/^go1\.\([0-9]*\).*/\1/p')"
      if [ -n "$minor" ] && [ "$minor" -ge 24 ]; then
        return 0
      fi
    fi
  done
  return 1
}
find_go || fail "Go >= 1.24 is needed to build helm $HELM_VERSION (run 'make tick' first: it fetches Go \
from the module proxy when the machine has none), found: $(go version 2>/dev/null || echo none)"

export GO111MODULE=on GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS="-mod=mod -buildvcs=false"
export GOPROXY="${GOPROXY:-https://proxy.golang.org,direct}"

hash="$(cat "$MODULE_DIR"/go.mod "$MODULE_DIR"/go.sum "$MODULE_DIR"/*.go | sha256sum | cut -c1-16)"
out="$CACHE_DIR/bin/k8s-tools-$hash-$(go env GOVERSION)"
mkdir -p "$LINK_DIR"
if [ -x "$out/helm" ] && [ -x "$out/k8s-validate" ]; then
  say "cached ($out)"
else
  started=$SECONDS
  mkdir -p "$out.tmp"
  say "building helm $HELM_VERSION and k8s-validate with $(go version | cut -d' ' -f3) (~4-6 min cold on 2 cores)..."
  (cd "$MODULE_DIR" && nice -n 10 go build -p "$BUILD_JOBS" -trimpath \
    -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" \
    -o "$out.tmp/helm" helm.sh/helm/v3/cmd/helm) || fail "building helm failed (errors above)"
  (cd "$MODULE_DIR" && nice -n 10 go build -p "$BUILD_JOBS" -trimpath -ldflags "-s -w" \
    -o "$out.tmp/k8s-validate" .) || fail "building k8s-validate failed (errors above)"
  "$out.tmp/helm" version --short | grep -q "$HELM_VERSION" || fail "built helm does not report $HELM_VERSION"
  rm -rf "$out" && mv "$out.tmp" "$out"
  say "built in $((SECONDS - started)) s"
fi
ln -sfn "$out/helm" "$LINK_DIR/helm"
ln -sfn "$out/k8s-validate" "$LINK_DIR/k8s-validate"
say "ready in $LINK_DIR: $("$LINK_DIR/helm" version --short)"
