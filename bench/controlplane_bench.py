"""Figures for the local control plane: cached build step, binary sizes, startup time to /readyz and
idle RSS of etcd and kube-apiserver. Prints one line per figure.

    .venv/bin/python bench/controlplane_bench.py [--idle-seconds 30] [--runs 3]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from spo import localcluster


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
    args = parser.parse_args()

    started = time.monotonic()
    subprocess.run(["bash", str(localcluster.BUILD_SCRIPT)], check=True, capture_output=True)
    print(f"build step with the cache warm: {(time.monotonic() - started) * 1000:.0f} ms")
    binaries = localcluster.binaries_dir()
    for name in ("kube-apiserver", "etcd"):
        print(f"{name} binary: {(binaries / name).stat().st_size / 2**20:.1f} MiB")

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


if __name__ == "__main__":
    main()
