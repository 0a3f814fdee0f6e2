"""Agent figures: time from `kubectl apply` of N SeccompProfiles (one manifest) to all Installed on one
node, as the node statuses say and with every file on disk, and the agent's RSS then (target: under 60 s
and under 150 MiB for 1,000 on this machine). The control plane and one `spo agent` run as host
processes; the agent writes into a temporary kubelet directory.

    .venv/bin/python bench/agent_bench.py [--profiles 1000]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import manifests.crds
from api import constants
from api.kinds import NODE_STATUS, SECCOMP_PROFILE
from api.kube import api_client
from spo import localcluster
from spo.bringup import start_agent

NODE = "bench-node"
KUBECTL = Path(sys.executable).parent / "kubectl"


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def installed_count(kubeconfig: Path) -> int:
    result = subprocess.run(
        [str(KUBECTL), f"--kubeconfig={kubeconfig}", "get", NODE_STATUS.plural, "-o",
         f"jsonpath={{range .items[?(@.nodeName==\"{NODE}\")]}}{{.status}}{{\"\\n\"}}{{end}}"],
        capture_output=True, text=True, check=True, timeout=120,
    )  # fmt: skip
    return sum(1 for line in result.stdout.splitlines() if line == "Installed")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--profiles", type=int, default=1000)
    args = parser.parse_args()
    state = Path(tempfile.mkdtemp(prefix="spo-agent-bench-"))
    cluster = localcluster.ControlPlane(state, localcluster.binaries_dir())
    try:
        cluster.start()
        api = api_client(str(cluster.kubeconfig))
        localcluster.install_crds(api, manifests.crds.all_crds())
        localcluster.ensure_namespace(api, constants.DEFAULT_NAMESPACE)
        kubelet_dir = state / "kubelet"
        agent = start_agent(
            cluster,
            NODE,
            kubelet_dir,
            constants.DEFAULT_NAMESPACE,
            localcluster.free_port(),
            selinux_dir=state / "selinux.d",
            audit_log=state / "audit.log",
            state_dir=state / "recordings",
        )
        print(f"agent RSS idle: {rss_mib(agent.pid):.0f} MiB", flush=True)
        documents = [
            {
                "apiVersion": SECCOMP_PROFILE.api_version,
                "kind": "SeccompProfile",
                "metadata": {"name": f"bench-{i:04d}"},
                "spec": {
                    "defaultAction": "SCMP_ACT_ERRNO",
                    "baseProfileName": "runc-v1.4.2",
                    "syscalls": [{"action": "SCMP_ACT_ALLOW", "names": ["exit", "futex", "read"]}],
                },
            }
            for i in range(args.profiles)
        ]
        manifest = json.dumps({"apiVersion": "v1", "kind": "List", "items": documents})
        started = time.monotonic()
        subprocess.run(
            [str(KUBECTL), f"--kubeconfig={cluster.kubeconfig}", "apply", "-f", "-"],
            input=manifest, capture_output=True, text=True, check=True, timeout=600,
        )  # fmt: skip
        applied = time.monotonic() - started
        operator_dir = kubelet_dir / "seccomp" / constants.SECCOMP_OPERATOR_DIR
        while installed_count(cluster.kubeconfig) < args.profiles:
            time.sleep(1)
        elapsed = time.monotonic() - started
        files = len(list(operator_dir.glob("bench-*.json")))
        print(f"kubectl apply of {args.profiles} SeccompProfiles: {applied:.1f} s")
        print(f"apply to all {args.profiles} Installed on one node: {elapsed:.1f} s ({files} files)")
        print(f"agent RSS with {args.profiles} profiles: {rss_mib(agent.pid):.0f} MiB")
    finally:
        cluster.destroy()


if __name__ == "__main__":
    main()
