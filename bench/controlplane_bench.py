"""Figures for the local cluster: cold build time of every binary (as the build scripts recorded it),
cached build step, binary sizes, control-plane startup time to /readyz and idle RSS of etcd and
kube-apiserver; then, with a node, `spo up` to node Ready and to the first pod Running, and `spo down`.
Prints one line per figure.

    .venv/bin/python bench/controlplane_bench.py [--idle-seconds 30] [--runs 3] [--node-runs 2]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from api import constants
from spo import localcluster, node


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--idle-seconds", type=float, default=30.0, help="wait before reading RSS")
    parser.add_argument("--runs", type=int, default=3, help="startups to time")
    parser.add_argument("--node-runs", type=int, default=2, help="`spo up` with a node to time (0: none)")
    args = parser.parse_args()

    started = time.monotonic()
    subprocess.run(["bash", str(localcluster.BUILD_SCRIPT)], check=True, capture_output=True)
    print(f"build step with the cache warm: {(time.monotonic() - started) * 1000:.0f} ms")
    binaries, node_binaries = localcluster.binaries_dir(), node.node_binaries_dir()
    cold_build(binaries, node_binaries)
    for directory in (binaries, node_binaries):
        for path in sorted(p for p in directory.iterdir() if os.access(p, os.X_OK)):
            print(f"{path.name} binary: {path.stat().st_size / 2**20:.1f} MiB")

    startups = []
    for run in range(args.runs):
        cluster = localcluster.ControlPlane(Path(tempfile.mkdtemp(prefix="spo-bench-")), binaries)
        started = time.monotonic()
        cluster.start()
        startups.append(time.monotonic() - started)
        if run == args.runs - 1:
            time.sleep(args.idle_seconds)
            for name, process in cluster.processes.items():
                print(f"{name} idle RSS after {args.idle_seconds:.0f} s: {rss_mib(process.pid):.0f} MiB")
        cluster.destroy()
    print(
        "start to /readyz (PKI, etcd, kube-apiserver): "
        f"median {statistics.median(startups):.2f} s, max {max(startups):.2f} s over {args.runs} runs"
    )
    for _ in range(args.node_runs):
        spo_up_with_node()


def cold_build(*directories: Path) -> None:
    """The seconds each binary took to build from nothing, recorded by hack/*/build.sh."""
    total = 0
    for directory in directories:
        record = directory / "build-seconds"
        if not record.exists():
            print(f"cold build of {directory.name}: not recorded (built before the scripts kept timings)")
            continue
        for line in record.read_text().splitlines():
            name, seconds = line.split()
            total += int(seconds)
            print(f"cold build of {name}: {seconds} s")
    print(f"cold build of every binary, one after the other: {total} s")


def spo_up_with_node() -> None:
    """`spo up --detach` from a fresh state directory to node Ready (its own progress line), to the
    command's return, to the docs' test image Running; then `spo down`."""
    state = Path(tempfile.mkdtemp(prefix="spo-bench-node-"))
    kubectl = [str(Path(sys.executable).parent / "kubectl"), f"--kubeconfig={state / 'kubeconfig'}"]
    spo = localcluster.python_module("spo.cli")
    started = time.monotonic()
    up = subprocess.Popen(
        [*spo, "up", "--detach", "--state-dir", str(state), "--webhook-port", str(localcluster.free_port())],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert up.stdout is not None
    ready = 0.0
    for line in up.stdout:
        if line.startswith("node ") and line.rstrip().endswith(" is Ready"):
            ready = time.monotonic() - started
    if up.wait() != 0:
        raise SystemExit("spo up failed")
    returned = time.monotonic() - started
    image = constants.IMAGE_TEST_NGINX_UNPRIVILEGED
    subprocess.run([*kubectl, "run", "test-pod", f"--image={image}"], check=True, capture_output=True)
    subprocess.run(
        [*kubectl, "wait", "--for=jsonpath={.status.phase}=Running", "pod/test-pod", "--timeout=120s"],
        check=True, capture_output=True,
    )  # fmt: skip
    running = time.monotonic() - started
    started = time.monotonic()
    subprocess.run([*spo, "down", "--state-dir", str(state)], check=True, capture_output=True)
    shutil.rmtree(state)
    print(
        f"spo up (node): node Ready after {ready:.1f} s, spo up returned after {returned:.1f} s, "
        f"first pod Running after {running:.1f} s; spo down {time.monotonic() - started:.1f} s"
    )


if __name__ == "__main__":
    main()
