"""The node agent (`spo agent`, a real process) against the real apiserver, writing into a temporary
kubelet directory: the docs' profile install and deletion, base profiles, the spod's allowedSyscalls,
metrics and heartbeat, and a SIGKILL in the middle of a burst of creations."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from agent.seccomp_logic import render
from agent.selinux import COMPILED_NOT_LOADED, SELINUX_MODE_COMPILE_ONLY
from api import constants
from api.kinds import NODE_STATUS, RAW_SELINUX_PROFILE, SECCOMP_PROFILE, SELINUX_PROFILE, SPOD, ResourceKind
from api.types import (
    SeccompProfileSpec,
    SelinuxProfile,
    default_spod,
    heartbeat_lease_name,
    node_finalizer,
)
from spo import localcluster
from spo.bringup import start_agent
from spo.processes import stop_process
from tests.docs_examples import docs_objects
from tests.kubectl import KUBECTL, kubectl
from tests.test_selinux_cil import DOCS_NGINX_SECURE_CIL

WAIT_SECONDS = 120.0


@dataclass
class RunningAgent:
    cluster: localcluster.ControlPlane
    kube: client.ApiClient
    node: str
    kubelet_dir: Path
    port: int
    process: subprocess.Popen[bytes] | None = None

    @property
    def operator_dir(self) -> Path:
        return self.kubelet_dir / "seccomp" / constants.SECCOMP_OPERATOR_DIR

    @property
    def selinux_dir(self) -> Path:
        return self.kubelet_dir.parent / "selinux.d"

    @property
    def process_name(self) -> str:
        return f"agent-{self.node}"

    def start(self) -> None:
        self.process = start_agent(
            self.cluster,
            self.node,
            self.kubelet_dir,
            constants.DEFAULT_NAMESPACE,
            self.port,
            name=self.process_name,
            selinux_dir=self.selinux_dir,
            # This machine has no SELinux: the agent compiles policies with secilc, loads none.
            selinux_mode=SELINUX_MODE_COMPILE_ONLY,
            # No node here: nothing is audited; what the recorder keeps stays in the test's directory.
            audit_log=self.kubelet_dir.parent / "audit.log",
            state_dir=self.kubelet_dir.parent / "recordings",
        )

    def kill(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)
        self.cluster.processes.pop(self.process_name, None)
        self.process = None

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process.pid, self.process)
            self.cluster.processes.pop(self.process_name, None)
            self.process = None

    def get(self, path: str) -> str:
        url = f"http://127.0.0.1:{self.port}{path}"
        with urllib.request.urlopen(url, timeout=10) as response:
            return str(response.read().decode())


def custom(kube: client.ApiClient) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(kube)


def get_profile(
    kube: client.ApiClient, name: str, kind: ResourceKind = SECCOMP_PROFILE
) -> dict[str, Any] | None:
    try:
        found: dict[str, Any] = custom(kube).get_cluster_custom_object(  # type: ignore[assignment]
            constants.GROUP, kind.version, kind.plural, name
        )
        return found
    except ApiException as error:
        if error.status == 404:
            return None
        raise


def node_status(kube: client.ApiClient, profile: str, node: str) -> dict[str, Any] | None:
    try:
        found: dict[str, Any] = custom(kube).get_cluster_custom_object(  # type: ignore[assignment]
            constants.GROUP, NODE_STATUS.version, NODE_STATUS.plural, f"{profile}-{node}"
        )
        return found
    except ApiException as error:
        if error.status == 404:
            return None
        raise


def wait_for(probe: Any, what: str) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        if probe():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def wait_state(kube: client.ApiClient, profile: str, node: str, state: str) -> dict[str, Any]:
    found: dict[str, Any] = {}

    def probe() -> bool:
        status = node_status(kube, profile, node)
        found["status"] = status
        return status is not None and status.get("status") == state

    wait_for(probe, f"node status of {profile} to be {state} (last: {found})")
    return dict(found["status"])


def apply(kubeconfig: Path, manifest: dict[str, Any]) -> None:
    kubectl(kubeconfig, "apply", "-f", "-", stdin=json.dumps(manifest))


def seccomp_profile(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": SECCOMP_PROFILE.api_version,
        "kind": "SeccompProfile",
        "metadata": {"name": name},
        "spec": spec,
    }


def release_node(kube: client.ApiClient, node: str) -> None:
    """What the reconciler does for a node that is gone: drop its finalizer from every profile of every
    kind the agent installs, so profiles of other tests in this session can still be deleted."""
    finalizer = node_finalizer(node)
    for kind in (SECCOMP_PROFILE, SELINUX_PROFILE, RAW_SELINUX_PROFILE):
        listing: dict[str, Any] = custom(kube).list_cluster_custom_object(  # type: ignore[assignment]
            constants.GROUP, kind.version, kind.plural
        )
        for item in listing["items"]:
            finalizers = item["metadata"].get("finalizers") or []
            if finalizer in finalizers:
                index = finalizers.index(finalizer)
                custom(kube).patch_cluster_custom_object(
                    constants.GROUP,
                    kind.version,
                    kind.plural,
                    item["metadata"]["name"],
                    [
                        {"op": "test", "path": f"/metadata/finalizers/{index}", "value": finalizer},
                        {"op": "remove", "path": f"/metadata/finalizers/{index}"},
                    ],
                    _content_type="application/json-patch+json",
                )


@pytest.fixture
def agent(
    control_plane: localcluster.ControlPlane, kube: client.ApiClient, tmp_path: Path
) -> Iterator[RunningAgent]:
    running = RunningAgent(
        control_plane, kube, f"node-{uuid.uuid4().hex[:8]}", tmp_path / "kubelet", localcluster.free_port()
    )
    running.start()
    try:
        yield running
    finally:
        running.stop()
        release_node(kube, running.node)
        # Shown by pytest when the test failed.
        print(control_plane.log_file(running.process_name).read_text(errors="replace")[-5000:])


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def test_docs_profile1_is_installed_and_removed(agent: RunningAgent) -> None:
    """Docs 7.6.1: the profile becomes operator/<name>.json on the node, Installed; deleting it removes
    the file, the node status and (with this node's finalizer gone) the profile."""
    name = unique("profile1")
    apply(agent.cluster.kubeconfig, seccomp_profile(name, {"defaultAction": "SCMP_ACT_LOG"}))
    status = wait_state(agent.kube, name, agent.node, "Installed")
    assert status["nodeName"] == agent.node
    labels = status["metadata"]["labels"]
    assert labels[constants.LABEL_PROFILE_STATE] == "Installed"
    assert labels[constants.LABEL_NODE_NAME] == agent.node
    assert labels[constants.LABEL_PROFILE_KIND] == "SeccompProfile"
    assert status["metadata"]["ownerReferences"][0]["name"] == name
    assert (agent.operator_dir / f"{name}.json").read_bytes() == b'{"defaultAction":"SCMP_ACT_LOG"}'
    profile = get_profile(agent.kube, name)
    assert profile is not None
    assert node_finalizer(agent.node) in profile["metadata"]["finalizers"]
    assert profile["metadata"]["labels"][constants.LABEL_PROFILE_ID] == f"SeccompProfile-{name}"

    kubectl(agent.cluster.kubeconfig, "delete", "sp", name, "--wait=false")
    wait_for(lambda: get_profile(agent.kube, name) is None, f"{name} to be deleted")
    assert not (agent.operator_dir / f"{name}.json").exists()
    assert node_status(agent.kube, name, agent.node) is None


def test_deletion_waits_while_pods_use_the_profile(agent: RunningAgent) -> None:
    name = unique("in-use")
    manifest = seccomp_profile(name, {"defaultAction": "SCMP_ACT_LOG"})
    manifest["metadata"]["finalizers"] = [constants.FINALIZER_IN_USE]  # as the reconciler sets it
    apply(agent.cluster.kubeconfig, manifest)
    wait_state(agent.kube, name, agent.node, "Installed")
    kubectl(agent.cluster.kubeconfig, "delete", "sp", name, "--wait=false")
    wait_state(agent.kube, name, agent.node, "Terminating")
    assert (agent.operator_dir / f"{name}.json").exists()
    kubectl(agent.cluster.kubeconfig, "patch", "sp", name, "--type=json", "-p",
            json.dumps([{"op": "remove", "path": "/metadata/finalizers/0"}]))  # fmt: skip
    wait_for(lambda: get_profile(agent.kube, name) is None, f"{name} to be deleted")
    assert not (agent.operator_dir / f"{name}.json").exists()


def test_docs_base_profile_example_and_base_errors(agent: RunningAgent) -> None:
    """Docs 7.8.2 with the built-in runc-v1.0.0; a cycle and an OCI base are reported, not written."""
    example = unique("example-name")
    spec = {
        "defaultAction": "SCMP_ACT_ERRNO",
        "baseProfileName": "runc-v1.0.0",
        "syscalls": [{"action": "SCMP_ACT_ALLOW", "names": ["exit_group"]}],
    }
    apply(agent.cluster.kubeconfig, seccomp_profile(example, spec))
    wait_state(agent.kube, example, agent.node, "Installed")
    written = json.loads((agent.operator_dir / f"{example}.json").read_bytes())
    names = [entry["names"][0] for entry in written["syscalls"]]
    assert "exit_group" in names and "capset" in names and names == sorted(names)
    profile = get_profile(agent.kube, example)
    assert profile is not None
    assert (
        json.loads(profile["metadata"]["annotations"][constants.ANNOTATION_SYSCALLS]) == written["syscalls"]
    )

    first, second = unique("cycle-a"), unique("cycle-b")
    apply(
        agent.cluster.kubeconfig,
        seccomp_profile(first, {"defaultAction": "SCMP_ACT_LOG", "baseProfileName": second}),
    )
    apply(
        agent.cluster.kubeconfig,
        seccomp_profile(second, {"defaultAction": "SCMP_ACT_LOG", "baseProfileName": first}),
    )
    status = wait_state(agent.kube, first, agent.node, "Error")
    assert "cycle" in status["message"]
    oci = unique("oci")
    apply(
        agent.cluster.kubeconfig,
        seccomp_profile(
            oci,
            {
                "defaultAction": "SCMP_ACT_LOG",
                "baseProfileName": "oci://ghcr.io/security-profiles/runc:v1.4.2",
            },
        ),
    )
    status = wait_state(agent.kube, oci, agent.node, "Error")
    assert "OCI base profiles are not supported yet" in status["message"]
    assert not any((agent.operator_dir / f"{n}.json").exists() for n in (first, second, oci))


@pytest.fixture
def spod(kube: client.ApiClient) -> Iterator[None]:
    """The default spod, put back as it was after the test."""
    api = custom(kube)
    args = (constants.GROUP, SPOD.version, constants.DEFAULT_NAMESPACE, SPOD.plural)
    try:
        api.create_namespaced_custom_object(*args, default_spod().to_dict())
    except ApiException as error:
        if error.status != 409:
            raise
    yield
    api.patch_namespaced_custom_object(
        *args, constants.SPOD_NAME, {"spec": {"allowedSyscalls": None, "allowedSeccompActions": None}}
    )


@pytest.mark.usefixtures("spod")
def test_docs_allowed_syscalls(agent: RunningAgent) -> None:
    """Docs 7.8.1: after the patch, a profile allowing bpf is never written and says why; a compliant
    one is Installed; an installed profile that no longer complies is removed from the node."""
    earlier = unique("earlier")
    apply(agent.cluster.kubeconfig, seccomp_profile(earlier, {"defaultAction": "SCMP_ACT_ALLOW"}))
    wait_state(agent.kube, earlier, agent.node, "Installed")

    patch = '{"spec":{"allowedSyscalls": ["exit", "exit_group", "futex", "nanosleep"]}}'
    kubeconfig = agent.cluster.kubeconfig
    kubectl(
        kubeconfig, "-n", constants.DEFAULT_NAMESPACE, "patch", "spod", "spod", "--type", "merge", "-p", patch
    )
    denied, compliant = unique("allows-bpf"), unique("compliant")
    for name, syscalls in ((denied, ["exit", "bpf"]), (compliant, ["exit", "futex"])):
        allowing = [{"action": "SCMP_ACT_ALLOW", "names": syscalls}]
        apply(kubeconfig, seccomp_profile(name, {"defaultAction": "SCMP_ACT_ERRNO", "syscalls": allowing}))
    status = wait_state(agent.kube, denied, agent.node, "Error")
    assert "syscall not allowed: bpf" in status["message"]
    wait_state(agent.kube, compliant, agent.node, "Installed")
    assert not (agent.operator_dir / f"{denied}.json").exists()
    assert (agent.operator_dir / f"{compliant}.json").exists()
    status = wait_state(agent.kube, earlier, agent.node, "Error")
    assert "seccomp profile not allowed" in status["message"]
    assert not (agent.operator_dir / f"{earlier}.json").exists()
    metrics = agent.get(constants.PATH_METRICS_SPOD)
    assert 'security_profiles_operator_seccomp_profile_error_total{reason="ProfileNotAllowed"}' in metrics
    described = kubectl(kubeconfig, "describe", "sp", denied).stdout
    assert "ProfileNotAllowed" in described and "syscall not allowed: bpf" in described
    described = kubectl(kubeconfig, "describe", "sp", compliant).stdout
    assert f"Successfully saved profile to disk on {agent.node}" in described


def test_health_metrics_and_heartbeat(agent: RunningAgent) -> None:
    assert agent.get(constants.PATH_HEALTHZ) == "ok"
    name = unique("counted")
    apply(agent.cluster.kubeconfig, seccomp_profile(name, {"defaultAction": "SCMP_ACT_LOG"}))
    wait_state(agent.kube, name, agent.node, "Installed")
    metrics = agent.get(constants.PATH_METRICS_SPOD)
    assert (
        "# HELP security_profiles_operator_seccomp_profile_total Counter about seccomp profile operations."
        in metrics
    )
    assert 'security_profiles_operator_seccomp_profile_total{operation="update"}' in metrics
    lease = client.CoordinationV1Api(agent.kube).read_namespaced_lease(
        heartbeat_lease_name(agent.node), constants.DEFAULT_NAMESPACE
    )
    assert lease.spec is not None
    assert lease.spec.holder_identity == agent.node
    assert lease.spec.renew_time is not None


BURST = 200


def test_sigkill_during_a_burst_converges_on_restart(agent: RunningAgent) -> None:
    """Acceptance 5: kill -9 the agent while 200 profiles are being created, and while some are
    deleted; started again, the directory holds exactly the right files with the right bytes."""
    prefix = unique("burst")
    names = [f"{prefix}-{i:03d}" for i in range(BURST)]
    specs = {
        name: {
            "defaultAction": "SCMP_ACT_ERRNO",
            "syscalls": [{"action": "SCMP_ACT_ALLOW", "names": ["read", "write"]}],
        }
        if i % 2
        else {"defaultAction": "SCMP_ACT_LOG"}
        for i, name in enumerate(names)
    }
    manifests = "\n---\n".join(json.dumps(seccomp_profile(name, spec)) for name, spec in specs.items())
    creation = subprocess.Popen(
        [str(KUBECTL), f"--kubeconfig={agent.cluster.kubeconfig}", "create", "-f", "-"],
        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    assert creation.stdin is not None
    creation.stdin.write(manifests.encode())
    creation.stdin.close()
    # Kill once the agent is busy writing: some files exist, not all.
    wait_for(lambda: len(list(agent.operator_dir.glob(f"{prefix}-*.json"))) >= 10, "the first files")
    agent.kill()
    assert creation.wait(timeout=120) == 0
    # While it is down: profiles deleted (their finalizer keeps them Terminating), one file corrupted.
    deleted = names[:20]
    kubectl(agent.cluster.kubeconfig, "delete", "sp", *deleted, "--wait=false")
    stale = agent.operator_dir / f"{names[-1]}.json"
    stale.write_bytes(b"{")
    orphan = agent.operator_dir / "no-such-profile.json"
    orphan.write_bytes(b"{}")

    agent.start()
    kept = names[20:]
    for name in kept:
        wait_state(agent.kube, name, agent.node, "Installed")
    wait_for(lambda: all(get_profile(agent.kube, n) is None for n in deleted), "deleted profiles to go")
    present = {
        p.name for p in agent.operator_dir.iterdir() if p.name.startswith(prefix) or p.name.startswith(".")
    }
    assert present == {f"{name}.json" for name in kept}
    assert not orphan.exists()
    for name in kept:
        expected = render(
            SeccompProfileSpec.model_validate(specs[name]),
            SeccompProfileSpec.model_validate(specs[name]).syscalls or [],
        )
        assert (agent.operator_dir / f"{name}.json").read_bytes() == expected
    kubectl(agent.cluster.kubeconfig, "delete", "sp", *kept, "--wait=false")


def test_a_file_the_node_cannot_save_is_an_error_then_retried(agent: RunningAgent) -> None:
    """CannotSaveSeccompProfile: the node status says why; once the node can hold it, Installed."""
    # Before the agent starts: it writes the files of other tests' profiles at once.
    agent.stop()
    shutil.rmtree(agent.kubelet_dir, ignore_errors=True)
    blocker = agent.kubelet_dir / "seccomp"
    blocker.parent.mkdir(parents=True)
    blocker.write_bytes(b"not a directory")
    agent.start()
    name = unique("unsaved")
    apply(agent.cluster.kubeconfig, seccomp_profile(name, {"defaultAction": "SCMP_ACT_LOG"}))
    status = wait_state(agent.kube, name, agent.node, "Error")
    assert f"cannot save {name}.json on {agent.node}" in status["message"]
    assert 'seccomp_profile_error_total{reason="CannotSaveSeccompProfile"}' in agent.get(
        constants.PATH_METRICS_SPOD
    )
    blocker.unlink()
    wait_state(agent.kube, name, agent.node, "Installed")
    assert (agent.operator_dir / f"{name}.json").exists()


def test_a_deleted_node_status_comes_back(agent: RunningAgent) -> None:
    name = unique("restored")
    apply(agent.cluster.kubeconfig, seccomp_profile(name, {"defaultAction": "SCMP_ACT_LOG"}))
    first = wait_state(agent.kube, name, agent.node, "Installed")
    kubectl(agent.cluster.kubeconfig, "delete", NODE_STATUS.plural, f"{name}-{agent.node}")
    wait_for(
        lambda: (
            (node_status(agent.kube, name, agent.node) or first)["metadata"]["uid"]
            != first["metadata"]["uid"]
        ),
        "a new node status",
    )
    wait_state(agent.kube, name, agent.node, "Installed")


def manifest(kind: ResourceKind, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": kind.api_version, "kind": kind.kind, "metadata": {"name": name}, "spec": spec}


def delete_and_wait_gone(agent: RunningAgent, kind: ResourceKind, name: str) -> None:
    """Deleting a SELinux profile removes its policy file, this node's status and (then) the profile."""
    kubectl(agent.cluster.kubeconfig, "delete", kind.plural, name, "--wait=false")
    wait_for(lambda: get_profile(agent.kube, name, kind) is None, f"{name} to be deleted")
    assert not (agent.selinux_dir / f"{name}.cil").exists()
    assert node_status(agent.kube, name, agent.node) is None


def test_docs_nginx_secure_is_compiled_not_loaded(agent: RunningAgent) -> None:
    """Docs 7.7.1 on a node without SELinux: the docs' CIL in <selinux-dir>, Installed, and the status
    says it was compiled, not loaded. The name is the docs' own: the CIL block is named after it."""
    docs = next(o for o in docs_objects() if o["kind"] == SelinuxProfile.KIND and "allow" in o["spec"])
    name = docs["metadata"]["name"]
    apply(agent.cluster.kubeconfig, docs)
    status = wait_state(agent.kube, name, agent.node, "Installed")
    assert status["message"] == COMPILED_NOT_LOADED and "not loaded" in status["message"]
    assert status["metadata"]["labels"][constants.LABEL_PROFILE_KIND] == SelinuxProfile.KIND
    # The docs' `cat /etc/selinux.d/nginx-secure.cil`, as committed (tests/test_selinux_cil.py keeps it
    # equal to the docs).
    assert (agent.selinux_dir / f"{name}.cil").read_text() == DOCS_NGINX_SECURE_CIL.read_text()
    profile = get_profile(agent.kube, name, SELINUX_PROFILE)
    assert profile is not None and node_finalizer(agent.node) in profile["metadata"]["finalizers"]
    metrics = agent.get(constants.PATH_METRICS_SPOD)
    assert 'security_profiles_operator_selinux_profile_total{operation="update"}' in metrics

    delete_and_wait_gone(agent, SELINUX_PROFILE, name)
    assert 'security_profiles_operator_selinux_profile_total{operation="delete"}' in agent.get(
        constants.PATH_METRICS_SPOD
    )


def test_an_unknown_permission_is_an_error_with_secilcs_message(agent: RunningAgent) -> None:
    name = unique("typo")
    typo = {"allow": {"@self": {"tcp_socket": ["frobnicate"]}}}
    apply(agent.cluster.kubeconfig, manifest(SELINUX_PROFILE, name, typo))
    status = wait_state(agent.kube, name, agent.node, "Error")
    assert "secilc failed" in status["message"]
    assert "Failed to resolve permission frobnicate" in status["message"]
    assert not (agent.selinux_dir / f"{name}.cil").exists()
    metrics = agent.get(constants.PATH_METRICS_SPOD)
    assert (
        'security_profiles_operator_selinux_profile_error_total{reason="CannotInstallSelinuxPolicy"}'
        in metrics
    )
    delete_and_wait_gone(agent, SELINUX_PROFILE, name)


def test_raw_selinux_profile_is_installed_and_removed(agent: RunningAgent) -> None:
    name = unique("raw")
    policy = f"(blockinherit container)\n(allow process {name}.process (tcp_socket (listen)))\n"
    apply(agent.cluster.kubeconfig, manifest(RAW_SELINUX_PROFILE, name, {"policy": policy}))
    status = wait_state(agent.kube, name, agent.node, "Installed")
    assert status["message"] == COMPILED_NOT_LOADED
    assert f"(block {name}" in (agent.selinux_dir / f"{name}.cil").read_text()
    delete_and_wait_gone(agent, RAW_SELINUX_PROFILE, name)


def test_restart_removes_the_policy_of_a_profile_deleted_meanwhile(agent: RunningAgent) -> None:
    """Restart safety for SELinux: a policy whose profile is gone is removed on start, and a profile
    of the other SELinux kind keeps its policy (both kinds share the directory)."""
    kept, gone = unique("kept"), unique("gone")
    raw_policy = "(blockinherit container)\n"
    apply(agent.cluster.kubeconfig, manifest(RAW_SELINUX_PROFILE, kept, {"policy": raw_policy}))
    apply(agent.cluster.kubeconfig, manifest(SELINUX_PROFILE, gone, {}))
    wait_state(agent.kube, kept, agent.node, "Installed")
    wait_state(agent.kube, gone, agent.node, "Installed")
    agent.stop()
    release_node(agent.kube, agent.node)
    kubectl(agent.cluster.kubeconfig, "delete", SELINUX_PROFILE.plural, gone)
    assert (agent.selinux_dir / f"{gone}.cil").exists()

    agent.start()
    wait_for(lambda: not (agent.selinux_dir / f"{gone}.cil").exists(), f"{gone}.cil to be removed")
    assert (agent.selinux_dir / f"{kept}.cil").exists()
    # release_node took the finalizer off `kept` too; deleting it before the agent puts it back would
    # race the agent's cleanup with the assertions.
    finalizer = node_finalizer(agent.node)

    def finalized() -> bool:
        found = get_profile(agent.kube, kept, RAW_SELINUX_PROFILE)
        return found is not None and finalizer in (found["metadata"].get("finalizers") or [])

    wait_for(finalized, f"{kept} to carry {finalizer} again")
    delete_and_wait_gone(agent, RAW_SELINUX_PROFILE, kept)
