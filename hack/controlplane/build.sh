#!/usr/bin/env bash
# Build the Kubernetes binaries (kube-apiserver, kube-controller-manager, kube-scheduler, kubelet) and
# etcd from the Go module proxy into a cache outside the clone. Idempotent: builds only what is missing,
# then prints the binary directory on stdout (progress goes to stderr).
set -euo pipefail

K8S_VERSION=${SPO_K8S_VERSION:-v1.37.2}
ETCD_VERSION=${SPO_ETCD_VERSION:-v3.6.16}
CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/spo/controlplane
OUT=${SPO_CONTROLPLANE_BIN:-$CACHE/k8s-${K8S_VERSION}-etcd-${ETCD_VERSION}}
K8S_COMMANDS=(kube-apiserver kube-controller-manager kube-scheduler kubelet)

log() { printf '[controlplane] %s\n' "$*" >&2; }

# Two runs at once (setup and a test session, two test sessions) would race on the same files: the
# second waits for the first, then finds the binaries built.
mkdir -p "$OUT"
exec 9>"$OUT/.build.lock"
flock 9

missing=()
for command in "${K8S_COMMANDS[@]}"; do [ -x "$OUT/$command" ] || missing+=("$command"); done
if [ "${#missing[@]}" -eq 0 ] && [ -x "$OUT/etcd" ]; then
  log "Kubernetes $K8S_VERSION and etcd $ETCD_VERSION already built in $OUT: skipping build"
  echo "$OUT"
  exit 0
fi

command -v go >/dev/null || { log "go is not on PATH"; exit 1; }
export CGO_ENABLED=0 GOFLAGS=-mod=mod
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
started=$(date +%s)
# Seconds per binary (the first one also downloads the modules), read by bench/controlplane_bench.py.
timed() { echo "$1 $(( $(date +%s) - $2 ))" >> "$OUT/build-seconds"; }

if [ "${#missing[@]}" -gt 0 ]; then
  log "building ${missing[*]} $K8S_VERSION (the first build takes several minutes)"
  STAGING_VERSION="v0.${K8S_VERSION#v1.}"
  MINOR=$(echo "${K8S_VERSION#v1.}" | cut -d. -f1)
  # k8s.io/kubernetes pins its staging modules at v0.0.0 with local replaces; as a dependency each
  # must be replaced by its published v0.X.Y, so read the list from its own go.mod.
  KGOMOD=$(cd "$WORK" && go mod download -json "k8s.io/kubernetes@${K8S_VERSION}" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
  KGO=$(awk '$1=="go"{print $2; exit}' "$KGOMOD")
  STAGING=$(grep -oE '^[[:space:]]*k8s\.io/[a-z0-9-]+ => \./staging/' "$KGOMOD" | awk '{print $1}' | sort -u)
  mkdir "$WORK/kubernetes"
  cd "$WORK/kubernetes"
  go mod init spo.local/controlplane/kubernetes >/dev/null 2>&1
  replaces=()
  for module in $STAGING; do replaces+=("-replace=${module}=${module}@${STAGING_VERSION}"); done
  go mod edit -go="$KGO" -godebug="default=go$(echo "$KGO" | cut -d. -f1,2)" \
    -require="k8s.io/kubernetes@${K8S_VERSION}" "${replaces[@]}"
  LDFLAGS="-s -w -X k8s.io/component-base/version.gitVersion=${K8S_VERSION}"
  LDFLAGS+=" -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=${MINOR}"
  LDFLAGS+=" -X k8s.io/component-base/version.gitTreeState=clean"
  for command in "${missing[@]}"; do
    t0=$(date +%s)
    go build -trimpath -ldflags "$LDFLAGS" -o "$OUT/$command.tmp" "k8s.io/kubernetes/cmd/$command"
    mv "$OUT/$command.tmp" "$OUT/$command"
    timed "$command" "$t0"
    log "$command built after $(( $(date +%s) - started ))s ($(du -h "$OUT/$command" | cut -f1))"
  done
fi

if [ ! -x "$OUT/etcd" ]; then
  # etcd in its own module so its dependency versions do not move the Kubernetes graph.
  mkdir "$WORK/etcd"
  cd "$WORK/etcd"
  go mod init spo.local/controlplane/etcd >/dev/null 2>&1
  go mod edit -require="go.etcd.io/etcd/server/v3@${ETCD_VERSION}"
  t0=$(date +%s)
  go build -trimpath -ldflags "-s -w" -o "$OUT/etcd.tmp" go.etcd.io/etcd/server/v3
  mv "$OUT/etcd.tmp" "$OUT/etcd"
  timed etcd "$t0"
  log "etcd built after $(( $(date +%s) - started ))s ($(du -h "$OUT/etcd" | cut -f1))"
fi

log "built in $(( $(date +%s) - started ))s"
"$OUT/kube-apiserver" --version >&2
"$OUT/etcd" --version >&2
echo "$OUT"
