"""`spo up` with its node, as a newcomer runs it: one node per machine, back after a `kill -9`, and
`spo down` leaves the machine as it found it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from api import constants
from spo import localcluster
from spo.nodeconfig import sysctl_path
from tests.conftest import NodeSlot
from tests.e2e.test_spo_up import _spo
from tests.kubectl import kubectl

pytestmark = [pytest.mark.e2e, pytest.mark.node]

NODE_EXECUTABLES = {"kubelet", "containerd", "containerd-shim-runc-v2", "runc", "pause", "auditd"}


@pytest.fixture
def free_machine(node_slot: NodeSlot) -> None:
    """The session's node gives the machine up: these tests run their own."""
    node_slot.stop()


def _lines(*argv: str) -> list[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout.splitlines()


def _host_traces() -> dict[str, list[str]]:
    """What a node may leave on the machine, as a user would list it."""
    executables = []
    for entry in Path("/proc").iterdir():
        try:
            executable = os.readlink(entry / "exe") if entry.name.isdigit() else ""
        except OSError:
            continue
        if Path(executable).name in NODE_EXECUTABLES:
            executables.append(executable)
    cgroups = Path(constants.CGROUP_V1_ROOT)
    return {
        "processes": sorted(executables),
        "mounts": sorted(line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()),
        "links": sorted(line.split(":")[1].strip() for line in _lines("ip", "-o", "link", "show")),
        "iptables": [line for tool in ("iptables-save", "ip6tables-save") for line in _lines(tool)
                     if line.startswith(("-A", ":"))],
        "cgroups": sorted(str(p) for p in cgroups.glob(f"*/{constants.KUBEPODS_CGROUP}")),
        "host directories": [d for d in constants.NODE_HOST_DIRS if Path(d).exists()],
        "sysctls": [f"{n}={sysctl_path(n).read_text().strip()}" for n in constants.NODE_SYSCTLS],
        "audit": [line for line in _lines("auditctl", "-s") if line.startswith(("pid", "backlog_limit"))],
    }  # fmt: skip


def _run_test_pod(kubeconfig: Path) -> None:
    kubectl(kubeconfig, "run", "test-pod", f"--image={constants.IMAGE_TEST_NGINX_UNPRIVILEGED}")
    kubectl(kubeconfig, "wait", "--for=condition=Ready", "pod/test-pod", "--timeout=60s")


def test_spo_up_node_survives_kill_and_down_leaves_nothing(tmp_path: Path, free_machine: None) -> None:
    before = _host_traces()
    state, other = tmp_path / "state", tmp_path / "other"
    port = str(localcluster.free_port())
    up = _spo("up", "--detach", "--state-dir", str(state), "--webhook-port", port)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        kubeconfig = state / "kubeconfig"
        status = _spo("status", "--state-dir", str(state))
        assert status.returncode == 0 and " Ready\n" in status.stdout, status.stdout
        _run_test_pod(kubeconfig)

        second = _spo("up", "--detach", "--state-dir", str(other), "--webhook-port", port)
        assert second.returncode == 1
        assert f"a node already runs on this machine (state directory {state})" in second.stderr
        assert not other.exists(), "a refused `spo up` must change nothing"

        recorded = json.loads((state / "processes.json").read_text())["processes"]
        for process in recorded:
            if process["name"] in ("kubelet", "containerd"):
                os.kill(process["pid"], signal.SIGKILL)
        again = _spo("up", "--detach", "--state-dir", str(state), "--webhook-port", port)
        assert again.returncode == 0, again.stdout + again.stderr
        assert " Ready\n" in _spo("status", "--state-dir", str(state)).stdout
        # The pod is still in etcd; the new kubelet runs it again.
        kubectl(kubeconfig, "wait", "--for=condition=Ready", "pod/test-pod", "--timeout=60s")
    finally:
        down = _spo("down", "--state-dir", str(state))
    assert down.returncode == 0, down.stderr
    assert _host_traces() == before
