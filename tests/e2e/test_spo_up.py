"""`spo up --no-node --detach` / `spo status` / `spo down` from a fresh state directory: the control plane
alone, which needs no root and may run beside others (tests/e2e/test_node_lifecycle.py runs the node)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from api import constants
from spo import localcluster
from tests.docs_examples import docs_objects, spod_patches
from tests.eventually import eventually
from tests.kubectl import kubectl, kubectl_json

MUTATING = constants.MUTATING_WEBHOOK_CONFIGURATION
NAMESPACE = constants.DEFAULT_NAMESPACE

pytestmark = pytest.mark.e2e

# The console script, as a user runs it: unlike `python -m`, it puts nothing of the caller's directory first
# on the import path; what `spo up` starts must not either.
SPO = [str(Path(sys.executable).parent / "spo")]


def _spo(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*SPO, *args], capture_output=True, text=True, timeout=600, check=False, cwd=cwd)


def test_spo_up_detach_then_down(tmp_path: Path) -> None:
    state = tmp_path / "state"
    port = str(localcluster.free_port())
    # A working directory with folders named like our packages (real-node.md, "Known project bug").
    work = tmp_path / "work"
    for package in ("manifests", "api", "spo", "webhooks"):
        (work / package).mkdir(parents=True)
    up = _spo("up", "--no-node", "--detach", "--state-dir", str(state), "--webhook-port", port, cwd=work)
    assert up.returncode == 0, up.stdout + up.stderr
    kubeconfig = state / "kubeconfig"
    assert f"export KUBECONFIG={kubeconfig}" in up.stdout
    recorded = json.loads((state / "processes.json").read_text())["processes"]
    pids = [p["pid"] for p in recorded]
    assert {p["name"] for p in recorded} == {"etcd", "kube-apiserver", "webhook", "reconciler"}
    try:
        assert _spo("status", "--state-dir", str(state)).returncode == 0
        crds = kubectl(kubeconfig, "get", "crd", "-o", "name").stdout.split()
        assert len([c for c in crds if c.endswith(".security-profiles-operator.x-k8s.io")]) == 7
        profile1 = next(o for o in docs_objects() if o["metadata"]["name"] == "profile1")
        created = kubectl(kubeconfig, "apply", "-f", "-", stdin=yaml.safe_dump(profile1))
        assert "seccompprofile.security-profiles-operator.x-k8s.io/profile1 created" in created.stdout
        assert (
            "spo-mutating-webhook-configuration"
            in kubectl(kubeconfig, "get", "mutatingwebhookconfigurations", "-o", "name").stdout
        )
        _docs_patches_reach_the_live_configuration(kubeconfig)
        again = _spo("up", "--no-node", "--detach", "--state-dir", str(state))
        assert again.returncode == 1, "a second up must refuse"
    finally:
        down = _spo("down", "--state-dir", str(state))
    assert down.returncode == 0, down.stderr
    listed = subprocess.run(
        ["ps", "-o", "pid=,stat=", "-p", ",".join(map(str, pids))],
        capture_output=True,
        text=True,
        check=False,
    )
    # A zombie has exited; it only waits for its new parent (init) to reap it.
    running = [line for line in listed.stdout.splitlines() if not line.split()[1].startswith("Z")]
    assert running == [], f"still running: {running}"
    assert _spo("status", "--state-dir", str(state)).returncode == 1


def _docs_patches_reach_the_live_configuration(kubeconfig: Path) -> None:
    """As a user types it: docs 7.8.8 step 3, `webhookOptions: []`, then the JSON enricher on."""

    def webhooks() -> dict[str, Any]:
        configuration = kubectl_json(kubeconfig, "get", "mutatingwebhookconfiguration", MUTATING)
        return {w["name"]: w for w in configuration["webhooks"]}

    def patch(body: dict[str, Any]) -> None:
        kubectl(kubeconfig, "-n", NAMESPACE, "patch", "spod", "spod", "--type=merge", "-p", json.dumps(body))

    patch(next(e["patch"] for e in spod_patches() if e["section"] == "7.8.8"))
    selector = {"matchExpressions": [{"key": "spo-record", "operator": "In", "values": ["true"]}]}
    eventually(lambda: webhooks()["recording.spo.io"]["objectSelector"] == selector, what="docs 7.8.8")
    patch({"spec": {"webhookOptions": []}})
    eventually(lambda: webhooks()["recording.spo.io"]["objectSelector"] == {}, what="defaults back")
    patch({"spec": {"enableJsonEnricher": True}})
    eventually(lambda: "execmetadata.spo.io" in webhooks(), what="the exec webhooks")
    assert "nodedebuggingpod.spo.io" in webhooks()
