#!/usr/bin/env bash
# Build the node's container runtime tools from the Go module proxy into a cache outside the clone:
# containerd 2.x (daemon, ctr, the runc shim) and crictl. runc and the CNI plugins come from Debian.
# Idempotent: builds only what is missing, then prints the binary directory on stdout.
set -euo pipefail

CONTAINERD_VERSION=${SPO_CONTAINERD_VERSION:-v2.4.2}
CRICTL_VERSION=${SPO_CRICTL_VERSION:-v1.37.0}
CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/spo/node
OUT=${SPO_NODE_BIN:-$CACHE/containerd-${CONTAINERD_VERSION}-crictl-${CRICTL_VERSION}}
CONTAINERD_COMMANDS=(containerd ctr containerd-shim-runc-v2)

log() { printf '[node] %s\n' "$*" >&2; }

# Two runs at once (setup and a test session, two test sessions) would race on the same files: the
# second waits for the first, then finds the binaries built.
mkdir -p "$OUT"
exec 9>"$OUT/.build.lock"
flock 9

missing=()
for command in "${CONTAINERD_COMMANDS[@]}"; do [ -x "$OUT/$command" ] || missing+=("$command"); done
if [ "${#missing[@]}" -eq 0 ] && [ -x "$OUT/crictl" ]; then
  log "containerd $CONTAINERD_VERSION and crictl $CRICTL_VERSION already built in $OUT: skipping build"
  echo "$OUT"
  exit 0
fi

command -v go >/dev/null || { log "go is not on PATH"; exit 1; }
# No cgo: these tags drop the snapshotters that need it; overlayfs (the one the node uses) stays.
export CGO_ENABLED=0 GOFLAGS=-mod=mod
TAGS="no_btrfs no_devmapper no_zfs no_aufs osusergo netgo"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
started=$(date +%s)
# Seconds per binary (the first one also downloads the modules), read by bench/controlplane_bench.py.
timed() { echo "$1 $(( $(date +%s) - $2 ))" >> "$OUT/build-seconds"; }

if [ "${#missing[@]}" -gt 0 ]; then
  log "building containerd $CONTAINERD_VERSION (${missing[*]})"
  mkdir "$WORK/containerd"
  cd "$WORK/containerd"
  go mod init spo.local/node/containerd >/dev/null 2>&1
  go mod edit -require="github.com/containerd/containerd/v2@${CONTAINERD_VERSION}"
  LDFLAGS="-s -w -X github.com/containerd/containerd/v2/version.Version=${CONTAINERD_VERSION}"
  for command in "${missing[@]}"; do
    t0=$(date +%s)
    go build -trimpath -tags "$TAGS" -ldflags "$LDFLAGS" -o "$OUT/$command.tmp" \
      "github.com/containerd/containerd/v2/cmd/$command"
    mv "$OUT/$command.tmp" "$OUT/$command"
    timed "$command" "$t0"
    log "$command built after $(( $(date +%s) - started ))s"
  done
fi

if [ ! -x "$OUT/crictl" ]; then
  mkdir "$WORK/crictl"
  cd "$WORK/crictl"
  go mod init spo.local/node/crictl >/dev/null 2>&1
  go mod edit -require="sigs.k8s.io/cri-tools@${CRICTL_VERSION}"
  t0=$(date +%s)
  go build -trimpath -ldflags "-s -w" -o "$OUT/crictl.tmp" sigs.k8s.io/cri-tools/cmd/crictl
  mv "$OUT/crictl.tmp" "$OUT/crictl"
  timed crictl "$t0"
  log "crictl built after $(( $(date +%s) - started ))s"
fi

log "built in $(( $(date +%s) - started ))s"
"$OUT/containerd" --version >&2
echo "$OUT"
