"""Least privilege, proven (issue 12, acceptance 4): on a control plane of its own, each component runs
with a token of its own service account only, bound by the rendered RBAC (manifests.deploy), and does
its work: the reconciler keeps the webhook's certificates, the webhook configurations, the spod's
DaemonSet and status, profile, binding and recording statuses and the recording merge; the webhook
mutates a pod from its caches; the agent installs profiles and reports its node's statuses. The
apiserver's audit log then shows that none of their requests was refused and that every one is an
access declared for that component in api.access (which the roles are rendered from)."""

from __future__ import annotations

import ssl
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

import certs
import manifests.crds
from agent.selinux import SELINUX_MODE_COMPILE_ONLY
from api import access, constants, kinds
from api.access import Grant
from api.kube import api_client
from api.types import (
    heartbeat_lease_name,
    log_enricher_trace_profile,
    node_status_name,
    seccomp_localhost_profile,
)
from manifests.deploy import deployment_objects
from spo import localcluster
from spo.processes import stop_process
from tests.audit_requests import Request, covering, requests_of
from tests.kubectl import kubectl

pytestmark = pytest.mark.e2e

NS = constants.DEFAULT_NAMESPACE
WORKLOADS = "rbac-workloads"
NODE = "rbac-node"
PROFILE = "rbac-profile"
RECORDING = "rbac-recording"
IMAGE = "registry.example/rbac:1"
TOKEN_SECONDS = 3600
# What an RBAC test applies of the rendered objects: who may do what, and the ConfigMap the reconciler reads.
RBAC_SETUP_KINDS = {
    "Namespace",
    "ServiceAccount",
    "ClusterRole",
    "ClusterRoleBinding",
    "Role",
    "RoleBinding",
    "ConfigMap",
}
# Unauthenticated, forbidden.
_REFUSED = (401, 403)
SP, PB, PR, SPOD = kinds.SECCOMP_PROFILE, kinds.PROFILE_BINDING, kinds.PROFILE_RECORDING, kinds.SPOD
SELINUX, RAW_SELINUX = kinds.SELINUX_PROFILE, kinds.RAW_SELINUX_PROFILE


@dataclass(frozen=True)
class Component:
    service_account: str
    accesses: tuple[access.Access, ...]

    @property
    def username(self) -> str:
        return f"{constants.SERVICE_ACCOUNT_USER_PREFIX}{NS}:{self.service_account}"


COMPONENTS = {
    "reconciler": Component(constants.RECONCILER_SERVICE_ACCOUNT, access.RECONCILER),
    "webhook": Component(constants.WEBHOOK_SERVICE_ACCOUNT, access.WEBHOOK),
    "agent": Component(constants.SPOD_SERVICE_ACCOUNT, access.AGENT),
}


@dataclass
class Cluster:
    """A control plane with the CRDs and the rendered RBAC, and the components started as processes."""

    plane: localcluster.ControlPlane
    kube: client.ApiClient
    work: Path
    running: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def kubeconfig_of(self, service_account: str) -> Path:
        """A kubeconfig holding only a token of the service account (TokenRequest API)."""
        request = client.AuthenticationV1TokenRequest(
            spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=TOKEN_SECONDS)
        )
        answer = client.CoreV1Api(self.kube).create_namespaced_service_account_token(
            service_account, NS, request
        )
        assert answer.status is not None
        token = answer.status.token
        path = self.work / f"{service_account}.kubeconfig"
        cluster = {"server": self.plane.url, "certificate-authority": str(self.plane.pki.ca_cert)}
        path.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [{"name": "rbac", "cluster": cluster}],
                    "users": [{"name": service_account, "user": {"token": token}}],
                    "contexts": [{"name": "rbac", "context": {"cluster": "rbac", "user": service_account}}],
                    "current-context": "rbac",
                }
            )
        )
        return path

    def start(self, name: str, component: str, *args: str) -> None:
        kubeconfig = self.kubeconfig_of(COMPONENTS[component].service_account)
        argv = localcluster.python_module("spo.cli", component, "--kubeconfig", str(kubeconfig), *args)
        self.running[name] = self.plane.spawn(name, argv)

    def stop(self, name: str) -> None:
        process = self.running.pop(name)
        stop_process(process.pid, process)
        self.plane.processes.pop(name, None)

    def wait(self, condition: Callable[[], object], what: str) -> None:
        self.plane.wait_until(lambda: bool(condition()), what)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    work = tmp_path_factory.mktemp("rbac")
    plane = localcluster.ControlPlane(
        work / "controlplane",
        localcluster.binaries_dir(),
        webhook_dns_names=certs.webhook_dns_names(constants.WEBHOOK_SERVICE, NS),
    )
    try:
        plane.start()
        kube = api_client(str(plane.kubeconfig))
        localcluster.install_crds(kube, manifests.crds.all_crds())
        setup = [o for o in deployment_objects(NS, constants.DEFAULT_IMAGE) if o["kind"] in RBAC_SETUP_KINDS]
        kubectl(plane.kubeconfig, "apply", "-f", "-", stdin=yaml.safe_dump_all(setup))
        running = Cluster(plane, kube, work)
        yield running
    finally:
        plane.destroy()


# --- reading the cluster as an admin --------------------------------------------------------------


def _get(kube: client.ApiClient, kind: kinds.ResourceKind, name: str, namespace: str = "") -> dict[str, Any]:
    """The object, or {} when there is none."""
    objects = client.CustomObjectsApi(kube)
    try:
        if kind.namespaced:
            found: Any = objects.get_namespaced_custom_object(
                kind.group, kind.version, namespace, kind.plural, name
            )
        else:
            found = objects.get_cluster_custom_object(kind.group, kind.version, kind.plural, name)
    except ApiException as error:
        if error.status == 404:
            return {}
        raise
    return dict(found)


def _exists(read: Any, *args: str) -> bool:
    try:
        read(*args)
    except ApiException as error:
        if error.status == 404:
            return False
        raise
    return True


def _create(kube: client.ApiClient, kind: kinds.ResourceKind, body: dict[str, Any]) -> None:
    objects = client.CustomObjectsApi(kube)
    body = {"apiVersion": kind.api_version, "kind": kind.kind, **body}
    if kind.namespaced:
        objects.create_namespaced_custom_object(
            kind.group, kind.version, body["metadata"]["namespace"], kind.plural, body
        )
    else:
        objects.create_cluster_custom_object(kind.group, kind.version, kind.plural, body)


def _delete(kube: client.ApiClient, kind: kinds.ResourceKind, name: str, namespace: str = "") -> None:
    objects = client.CustomObjectsApi(kube)
    if kind.namespaced:
        objects.delete_namespaced_custom_object(kind.group, kind.version, namespace, kind.plural, name)
    else:
        objects.delete_cluster_custom_object(kind.group, kind.version, kind.plural, name)


def _patch_spod(kube: client.ApiClient, spec: dict[str, Any]) -> None:
    client.CustomObjectsApi(kube).patch_namespaced_custom_object(
        SPOD.group, SPOD.version, NS, SPOD.plural, constants.SPOD_NAME, {"spec": spec}
    )


def _node_status(kube: client.ApiClient, profile: str) -> str:
    return str(_get(kube, kinds.NODE_STATUS, node_status_name(profile, NODE)).get("status", ""))


def _mutating_url(kube: client.ApiClient) -> str:
    admission = client.AdmissionregistrationV1Api(kube)
    try:
        configuration = admission.read_mutating_webhook_configuration(
            constants.MUTATING_WEBHOOK_CONFIGURATION
        )
    except ApiException as error:
        if error.status == 404:
            return ""
        raise
    webhooks = configuration.webhooks or []
    return str(webhooks[0].client_config.url or "") if webhooks else ""


# --- the exercise -----------------------------------------------------------------------------------


def _reconciler_in_cluster_mode(cluster: Cluster) -> None:
    """As its Deployment runs it: leader-elected, webhook by Service, the certificates its own."""
    kube, core = cluster.kube, client.CoreV1Api(cluster.kube)
    port = localcluster.free_port()
    cluster.start(
        "reconciler-in-cluster",
        "reconciler",
        "--namespace", NS,
        "--leader-elect",
        "--health-host", "127.0.0.1",
        "--health-port", str(port),
    )  # fmt: skip
    cluster.wait(
        lambda: all(
            _exists(core.read_namespaced_secret, name, NS)
            for name in (constants.WEBHOOK_CA_SECRET, constants.WEBHOOK_CERT_SECRET)
        ),
        "the webhook's certificate Secrets",
    )
    apps = client.AppsV1Api(kube)
    cluster.wait(
        lambda: _exists(apps.read_namespaced_daemon_set, constants.SPOD_NAME, NS), "the spod DaemonSet"
    )
    cluster.wait(
        lambda: _get(kube, SPOD, constants.SPOD_NAME, NS).get("status", {}).get("state"), "spod status"
    )
    admission = client.AdmissionregistrationV1Api(kube)
    cluster.wait(
        lambda: _exists(
            admission.read_validating_webhook_configuration, constants.VALIDATING_WEBHOOK_CONFIGURATION
        ),
        "the validating webhook configuration",
    )
    # Stopped, it gives the leader Lease up for the next one.
    cluster.stop("reconciler-in-cluster")


def _start_local_components(cluster: Cluster) -> None:
    """The webhook on loopback (registered by URL, as the apiserver cannot reach a Service here), the
    reconciler pointing the configurations at it, and the agent of one node without a kubelet."""
    webhook_port = localcluster.free_port()
    cluster.start(
        "webhook",
        "webhook",
        "--host", "127.0.0.1",
        "--port", str(webhook_port),
        "--cert-dir", str(cluster.plane.pki.webhook_dir),
        "--namespace", NS,
    )  # fmt: skip
    context = ssl.create_default_context(cafile=str(cluster.plane.pki.ca_cert))
    url = f"https://127.0.0.1:{webhook_port}"
    cluster.wait(lambda: localcluster.http_ok(f"{url}{constants.PATH_READYZ}", context), "webhook /readyz")
    cluster.start(
        "reconciler",
        "reconciler",
        "--namespace", NS,
        "--leader-elect",
        "--webhook-url", url,
        "--ca-file", str(cluster.plane.pki.ca_cert),
        "--health-host", "127.0.0.1",
        "--health-port", str(localcluster.free_port()),
    )  # fmt: skip
    cluster.wait(lambda: _mutating_url(cluster.kube).startswith(url), "the webhooks registered by URL")
    node_dir = cluster.work / "node"
    (node_dir / "audit.log").parent.mkdir(parents=True)
    (node_dir / "audit.log").touch()
    agent_port = localcluster.free_port()
    cluster.start(
        "agent",
        "agent",
        "--node-name", NODE,
        "--namespace", NS,
        "--kubelet-dir", str(node_dir / "kubelet"),
        "--selinux-dir", str(node_dir / "selinux.d"),
        "--selinux-mode", SELINUX_MODE_COMPILE_ONLY,
        "--audit-log", str(node_dir / "audit.log"),
        "--state-dir", str(node_dir / "recordings"),
        "--host", "127.0.0.1",
        "--metrics-port", str(agent_port),
    )  # fmt: skip
    cluster.wait(
        lambda: localcluster.http_ok(f"http://127.0.0.1:{agent_port}{constants.PATH_HEALTHZ}"),
        "agent /healthz",
    )


def _profile_bound_to_a_pod(cluster: Cluster) -> None:
    kube, core = cluster.kube, client.CoreV1Api(cluster.kube)
    _create(kube, SP, {"metadata": {"name": PROFILE}, "spec": {"defaultAction": "SCMP_ACT_LOG"}})
    _installed(cluster, SP, PROFILE)
    localcluster.ensure_namespace(kube, WORKLOADS, {constants.LABEL_ENABLE_BINDING: "true"})
    binding = {
        "metadata": {"name": "rbac-binding", "namespace": WORKLOADS},
        "spec": {"profileRef": {"kind": SP.kind, "name": PROFILE}, "image": IMAGE},
    }
    _create(kube, PB, binding)
    pod = client.V1Pod(
        metadata=client.V1ObjectMeta(name="rbac-pod"),
        spec=client.V1PodSpec(containers=[client.V1Container(name="app", image=IMAGE)]),
    )
    created = core.create_namespaced_pod(WORKLOADS, pod)
    # The webhook bound the profile, from what its caches read with its own role.
    assert _localhost_profiles(created) == {seccomp_localhost_profile(PROFILE)}
    cluster.wait(
        lambda: constants.FINALIZER_IN_USE in _get(kube, SP, PROFILE)["metadata"].get("finalizers", []),
        "the profile in use",
    )
    cluster.wait(
        lambda: _get(kube, PB, "rbac-binding", WORKLOADS).get("status", {}).get("activeWorkloads"),
        "the binding's active workloads",
    )
    core.delete_namespaced_pod("rbac-pod", WORKLOADS, grace_period_seconds=0)
    cluster.wait(
        lambda: constants.FINALIZER_IN_USE not in _get(kube, SP, PROFILE)["metadata"].get("finalizers", []),
        "the profile no longer in use",
    )


def _localhost_profiles(pod: client.V1Pod) -> set[str]:
    spec = pod.spec
    assert spec is not None
    contexts = [spec.security_context, *(container.security_context for container in spec.containers)]
    return {
        context.seccomp_profile.localhost_profile
        for context in contexts
        if context is not None
        and context.seccomp_profile is not None
        and context.seccomp_profile.localhost_profile
    }


def _recording_merged(cluster: Cluster) -> None:
    kube = cluster.kube
    recording = {
        # As the recorder of a node that recorded for it holds it until the merge.
        "metadata": {"name": RECORDING, "namespace": WORKLOADS, "finalizers": [constants.FINALIZER_UNMERGED]},
        "spec": {
            "kind": SP.kind,
            "recorder": "logs",
            "mergeStrategy": constants.MERGE_STRATEGY_CONTAINERS,
            "podSelector": {"matchLabels": {"app": "rbac"}},
        },
    }
    _create(kube, PR, recording)
    partials = {f"{RECORDING}-app-{suffix}": names for suffix, names in (("a", ["read"]), ("b", ["write"]))}
    for name, names in partials.items():
        labels = {
            constants.LABEL_RECORDING_ID: RECORDING,
            constants.LABEL_RECORDING_NAMESPACE: WORKLOADS,
            constants.LABEL_CONTAINER_ID: "app",
            constants.LABEL_PARTIAL: constants.LABEL_PARTIAL_VALUE,
        }
        spec = {"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"action": "SCMP_ACT_ALLOW", "names": names}]}
        _create(kube, SP, {"metadata": {"name": name, "labels": labels}, "spec": spec})
    cluster.wait(lambda: all(_node_status(kube, name) for name in partials), "the partials on the node")
    _delete(kube, PR, RECORDING, WORKLOADS)
    cluster.wait(lambda: _get(kube, SP, f"{RECORDING}-app"), "the merged profile")
    cluster.wait(lambda: not any(_get(kube, SP, name) for name in partials), "the partials deleted")
    cluster.wait(lambda: not _get(kube, PR, RECORDING, WORKLOADS), "the recording gone")


def _selinux_profiles_installed_and_deleted(cluster: Cluster) -> None:
    """Both SELinux kinds, compiled (not loaded) by the agent: this machine has no SELinux."""
    kube = cluster.kube
    profiles = {
        SELINUX: ("rbac-selinux", {}),
        RAW_SELINUX: ("rbac-raw-selinux", {"policy": "(blockinherit container)\n"}),
    }
    for kind, (name, spec) in profiles.items():
        _create(kube, kind, {"metadata": {"name": name}, "spec": spec})
    for kind, (name, _) in profiles.items():
        _installed(cluster, kind, name)
        _deleted(cluster, kind, name)


def _installed(cluster: Cluster, kind: kinds.ResourceKind, name: str) -> None:
    """Installed on the agent's node, as its node status and the profile's status (the reconciler's) say."""
    kube = cluster.kube
    cluster.wait(lambda: _node_status(kube, name) == "Installed", f"{name} Installed on the node")
    cluster.wait(
        lambda: _get(kube, kind, name).get("status", {}).get("status") == "Installed", f"{name} Installed"
    )


def _deleted(cluster: Cluster, kind: kinds.ResourceKind, name: str) -> None:
    kube = cluster.kube
    _delete(kube, kind, name)
    cluster.wait(lambda: not _get(kube, kind, name), f"{name} gone")
    cluster.wait(lambda: not _node_status(kube, name), f"the node status of {name} gone")


def _heartbeat(kube: client.ApiClient) -> str:
    """When the agent last renewed its node's heartbeat Lease ("" before it first did)."""
    try:
        lease = client.CoordinationV1Api(kube).read_namespaced_lease(heartbeat_lease_name(NODE), NS)
    except ApiException as error:
        if error.status == 404:
            return ""
        raise
    return str(lease.spec.renew_time) if lease.spec is not None else ""


def _spod_changed(cluster: Cluster) -> None:
    kube = cluster.kube
    trace = log_enricher_trace_profile().metadata.name or ""
    _patch_spod(kube, {"enableLogEnricher": True, "enableJsonEnricher": True})
    cluster.wait(lambda: _node_status(kube, trace) == "Installed", "the trace profile on the node")
    _patch_spod(kube, {"webhookOptions": [{"name": "no-such-webhook.spo.io"}]})
    core = client.CoreV1Api(kube)
    cluster.wait(
        lambda: any(
            event.reason == constants.EVENT_REASON_INVALID_SPOD
            for event in core.list_namespaced_event(NS).items
        ),
        "the invalid spod's event",
    )
    _patch_spod(kube, {"webhookOptions": None})


def _profile_and_spod_deleted(cluster: Cluster) -> None:
    kube = cluster.kube
    _deleted(cluster, SP, PROFILE)
    _delete(kube, SPOD, constants.SPOD_NAME, NS)
    cluster.wait(lambda: not _mutating_url(kube), "the webhook configurations removed")
    cluster.wait(lambda: not _get(kube, SPOD, constants.SPOD_NAME, NS), "the spod gone")


def test_each_component_works_with_only_its_own_role(cluster: Cluster) -> None:
    try:
        _reconciler_in_cluster_mode(cluster)
        _start_local_components(cluster)
        cluster.wait(lambda: _heartbeat(cluster.kube), "the agent's first heartbeat")
        first_heartbeat = _heartbeat(cluster.kube)
        _profile_bound_to_a_pod(cluster)
        _recording_merged(cluster)
        _selinux_profiles_installed_and_deleted(cluster)
        _spod_changed(cluster)
        cluster.wait(lambda: _heartbeat(cluster.kube) != first_heartbeat, "the heartbeat renewed")
        _profile_and_spod_deleted(cluster)
    except Exception as error:
        # A component that stalls on a refused request says so only in its log: name the refusals.
        error.add_note(f"refused: {_refused(cluster.plane.audit_log.read_text().splitlines())}")
        raise
    for name in list(cluster.running):
        cluster.stop(name)

    lines = cluster.plane.audit_log.read_text().splitlines()
    assert _refused(lines) == {}
    report = []
    for name, component in COMPONENTS.items():
        made = requests_of(lines, component.username)
        assert made, f"no request of {name} in the audit log"
        declared = access.grants(component.accesses)
        uncovered = sorted({_key(r) for r in made if not covering(r, declared, NS)})
        assert uncovered == [], f"{name}: requests outside its declared accesses"
        used = {grant for r in made for grant in covering(r, declared, NS)}
        report.append(f"{name}: {len(made)} requests; declared but not exercised: {_unused(declared - used)}")
    print("\n".join(report))


def _refused(lines: list[str]) -> dict[str, list[str]]:
    """The requests the apiserver refused, per component that had any."""
    found = {}
    for name, component in COMPONENTS.items():
        refused = sorted({r.describe() for r in requests_of(lines, component.username) if r.code in _REFUSED})
        if refused:
            found[name] = refused
    return found


def _key(request: Request) -> str:
    where = f" in {request.namespace}" if request.namespace else ""
    return f"{request.verb} {request.group or 'core'}/{request.resource}{where}"


def _unused(grants: set[Grant] | frozenset[Grant]) -> str:
    return ", ".join(
        f"{g.verb} {g.resource}{f' {g.name}' if g.name else ''} ({g.scope})" for g in sorted(grants)
    )
