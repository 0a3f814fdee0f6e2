#!/usr/bin/env bash
# The test command: every test, the end-to-end ones against a real kube-apiserver + etcd.
# Extra arguments go to pytest (e.g. `bash hack/test.sh -k binding`).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || bash hack/setup.sh
bash hack/controlplane/build.sh >/dev/null
bash hack/node/build.sh >/dev/null
exec .venv/bin/python -m pytest "$@"
