"""`spo reconciler` against the real apiserver: the docs' `kubectl patch spod` commands change the
DaemonSet and the MutatingWebhookConfiguration, the exec webhooks follow the JSON enricher, a
platform's extra selector term causes no writes, and `spo uninstall` leaves nothing that blocks pods.

Each test runs its own reconciler with a fresh namespace as the operator namespace; the webhook
configurations are cluster-wide, so the session's registration is restored afterwards."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

import certs
from api import constants, kinds
from api.baseprofiles import BUILTIN_SYSCALLS
from api.nodepaths import NodePaths
from api.types import SPODSpec
from reconciler import spod as spod_config
from reconciler.cli import build_manager
from reconciler.drift import needs_apply
from reconciler.runtime import Manager
from reconciler.webhook_config import Endpoint, desired_mutating_configuration
from spo import localcluster
from spo.cli import build_parser
from tests.conftest import WebhookServer
from tests.docs_examples import default_spod_dict, merge_patch, spod_patches, without_nulls
from tests.e2e.leftovers import hand_back_session
from tests.eventually import eventually
from tests.kubectl import kubectl

pytestmark = pytest.mark.e2e
# A node that keeps its files elsewhere (as `spo up --in-cluster`'s): the DaemonSet must carry them.
NODE_PATHS = NodePaths(kubelet_dir="/srv/node/kubelet", audit_log="/srv/node/audit/audit.log")


class Reconciler:
    def __init__(self, cluster: localcluster.ControlPlane, kube: client.ApiClient, namespace: str, url: str):
        self.cluster, self.kube, self.namespace, self.url = cluster, kube, namespace, url
        args = build_parser().parse_args(
            [
                "reconciler",
                "--kubeconfig", str(cluster.kubeconfig),
                "--namespace", namespace,
                "--webhook-url", url,
                "--ca-file", str(cluster.pki.ca_cert),
                "--node-kubelet-dir", NODE_PATHS.kubelet_dir,
                "--node-audit-log", NODE_PATHS.audit_log,
            ]
        )  # fmt: skip
        self.manager: Manager = build_manager(args)
        self.objects = client.CustomObjectsApi(kube)

    def reconciles(self) -> float:
        total = 0.0
        for result in ("success", "error", "requeue_after"):
            value = self.manager.registry.get_sample_value(
                "controller_runtime_reconcile_total", {"controller": "spod", "result": result}
            )
            total += value or 0.0
        return total

    def spod(self) -> dict[str, Any] | None:
        try:
            found: Any = self.objects.get_namespaced_custom_object(
                kinds.SPOD.group, kinds.SPOD.version, self.namespace, kinds.SPOD.plural, constants.SPOD_NAME
            )
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        return dict(found)

    def mutating(self) -> dict[str, Any] | None:
        try:
            found: Any = self.objects.get_cluster_custom_object(
                "admissionregistration.k8s.io",
                "v1",
                kinds.MUTATING_WEBHOOK_CONFIGURATION.plural,
                constants.MUTATING_WEBHOOK_CONFIGURATION,
            )
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        return dict(found)

    def expected_mutating(self, spec: SPODSpec) -> dict[str, Any]:
        bundle = certs.ca_bundle(certs.load_pair(self.cluster.pki.directory, "ca.crt", "ca.key"))
        return desired_mutating_configuration(spec, Endpoint(url=self.url), bundle, self.namespace)

    def daemonset_hash(self) -> str | None:
        try:
            found = client.AppsV1Api(self.kube).read_namespaced_daemon_set(
                constants.SPOD_NAME, self.namespace
            )
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        assert found.spec is not None and found.spec.template.metadata is not None
        return (found.spec.template.metadata.annotations or {}).get(constants.ANNOTATION_SPOD_CONFIG_HASH)

    def expected_hash(self, spec: SPODSpec) -> str:
        image = os.environ.get(constants.ENV_OPERATOR_IMAGE, constants.DEFAULT_IMAGE)
        rendered = spod_config.desired_daemonset(spec, self.namespace, image, NODE_PATHS)
        value: str = rendered["spec"]["template"]["metadata"]["annotations"][
            constants.ANNOTATION_SPOD_CONFIG_HASH
        ]
        return value

    def patch(self, patch: dict[str, Any]) -> None:
        kubectl(
            self.cluster.kubeconfig,
            "-n", self.namespace,
            "patch", "spod", "spod", "--type=merge", "-p", json.dumps(patch),
        )  # fmt: skip

    def wait_configured(self, spec: SPODSpec) -> None:
        expected = self.expected_mutating(spec)
        eventually(lambda: not needs_apply(expected, self.mutating()), what="the mutating configuration")
        want = self.expected_hash(spec)
        eventually(lambda: self.daemonset_hash() == want, what="the DaemonSet")


@pytest.fixture
def reconciler(
    control_plane: localcluster.ControlPlane,
    kube: client.ApiClient,
    namespace: str,
    webhook_server: WebhookServer,
) -> Iterator[Reconciler]:
    running = Reconciler(control_plane, kube, namespace, webhook_server.url)
    running.manager.start()
    try:
        eventually(lambda: running.manager.ready() and running.manager.leading, what="ready")
        eventually(running.spod, what="the default spod")
        yield running
    finally:
        running.manager.stop()
        hand_back_session(control_plane, kube, webhook_server.url)


def _docs_spec(section: str) -> SPODSpec:
    patch = next(e["patch"] for e in spod_patches() if e["section"] == section)
    return SPODSpec.model_validate(without_nulls(merge_patch(default_spod_dict(), patch))["spec"])


def test_default_spod_is_created_configured_and_running(reconciler: Reconciler) -> None:
    reconciler.wait_configured(SPODSpec.model_validate(default_spod_dict()["spec"]))
    mutating = reconciler.mutating()
    assert mutating is not None
    assert [w["name"] for w in mutating["webhooks"]] == ["binding.spo.io", "recording.spo.io"]

    def state() -> str | None:
        spod = reconciler.spod() or {}
        found: str | None = spod.get("status", {}).get("state")
        return found

    # The light control plane has no node, and its DaemonSet controller never reports on the DaemonSet.
    eventually(lambda: state() == "CREATING", what="spod CREATING")
    spod = reconciler.spod()
    assert spod is not None
    assert constants.FINALIZER_SPOD in spod["metadata"]["finalizers"]
    (ready,) = spod["status"]["conditions"]
    assert (ready["type"], ready["status"], ready["reason"]) == ("Ready", "False", "Creating")


def test_the_builtin_base_profiles_are_created_and_a_users_own_is_kept(
    request: pytest.FixtureRequest, kube: client.ApiClient
) -> None:
    """The docs' 7.8.2 `baseProfileName: runc-v1.0.0` works out of the box; a user's own `runc-v1.0.0`
    (created before the reconciler starts) is not replaced."""
    sp = kinds.SECCOMP_PROFILE
    objects = client.CustomObjectsApi(kube)
    own = "runc-v1.0.0"
    try:
        objects.delete_cluster_custom_object(sp.group, sp.version, sp.plural, own)
    except ApiException as error:
        if error.status != 404:
            raise
    eventually(lambda: own not in _seccomp_profiles(kube), what="no runc-v1.0.0 before the test")
    users = {"defaultAction": "SCMP_ACT_LOG"}
    body = {"apiVersion": sp.api_version, "kind": sp.kind, "metadata": {"name": own}, "spec": users}
    objects.create_cluster_custom_object(sp.group, sp.version, sp.plural, body)

    request.getfixturevalue("reconciler")
    names = set(BUILTIN_SYSCALLS)
    eventually(lambda: names <= set(_seccomp_profiles(kube)), what="every built-in base profile")
    found = _seccomp_profiles(kube)
    assert found[own]["spec"]["defaultAction"] == "SCMP_ACT_LOG" and "syscalls" not in found[own]["spec"]
    assert constants.LABEL_BUILTIN_BASE_PROFILE not in (found[own]["metadata"].get("labels") or {})
    for name in names - {own}:
        assert found[name]["metadata"]["labels"][constants.LABEL_BUILTIN_BASE_PROFILE] == "true"
        assert found[name]["spec"]["syscalls"][0]["action"] == "SCMP_ACT_ALLOW"


def test_the_log_enricher_brings_its_trace_profile(reconciler: Reconciler, kube: client.ApiClient) -> None:
    """Docs 7.6.3: with `enableLogEnricher: true` the recording webhook's `log-enricher-trace` profile
    exists (everything logged), and it comes back if deleted."""
    sp = kinds.SECCOMP_PROFILE
    trace = constants.LOG_ENRICHER_TRACE_PROFILE
    objects = client.CustomObjectsApi(kube)
    try:
        objects.delete_cluster_custom_object(sp.group, sp.version, sp.plural, trace)
    except ApiException as error:
        if error.status != 404:
            raise
    reconciler.patch({"spec": {"enableLogEnricher": True}})
    eventually(lambda: trace in _seccomp_profiles(kube), what="the trace profile")
    found = _seccomp_profiles(kube)[trace]
    assert found["spec"]["defaultAction"] == "SCMP_ACT_LOG" and "syscalls" not in found["spec"]
    objects.delete_cluster_custom_object(sp.group, sp.version, sp.plural, trace)
    # No agent runs here: a node finalizer an earlier test's agent left must not keep it Terminating.
    if trace in _seccomp_profiles(kube):
        objects.patch_cluster_custom_object(
            sp.group, sp.version, sp.plural, trace, {"metadata": {"finalizers": None}}
        )
    reconciler.patch({"spec": {"verbosity": 1}})
    eventually(
        lambda: (_seccomp_profiles(kube).get(trace) or found)["metadata"]["uid"] != found["metadata"]["uid"],
        timeout=90,
        what="a new trace profile",
    )


def _seccomp_profiles(kube: client.ApiClient) -> dict[str, dict[str, Any]]:
    sp = kinds.SECCOMP_PROFILE
    listing: Any = client.CustomObjectsApi(kube).list_cluster_custom_object(sp.group, sp.version, sp.plural)
    return {item["metadata"]["name"]: item for item in listing["items"]}


@pytest.mark.parametrize("entry", spod_patches(), ids=lambda e: e["section"])
def test_docs_spod_patch_reaches_the_daemonset_and_the_webhooks(
    reconciler: Reconciler, entry: dict[str, Any]
) -> None:
    reconciler.patch(entry["patch"])
    reconciler.wait_configured(_docs_spec(entry["section"]))


def test_recording_object_selector_and_its_removal(reconciler: Reconciler) -> None:
    """Docs 7.8.8 step 3, then `webhookOptions: []` brings the defaults back."""
    patch = next(e["patch"] for e in spod_patches() if e["section"] == "7.8.8")
    reconciler.patch(patch)

    def recording() -> dict[str, Any]:
        mutating = reconciler.mutating()
        assert mutating is not None
        webhook: dict[str, Any] = next(w for w in mutating["webhooks"] if w["name"] == "recording.spo.io")
        return webhook

    selector = {"matchExpressions": [{"key": "spo-record", "operator": "In", "values": ["true"]}]}
    eventually(lambda: recording()["objectSelector"] == selector, what="the docs' objectSelector")
    reconciler.patch({"spec": {"webhookOptions": []}})
    eventually(lambda: recording()["objectSelector"] == {}, what="the default objectSelector")
    reconciler.wait_configured(SPODSpec.model_validate(default_spod_dict()["spec"]))


def test_json_enricher_adds_and_removes_the_exec_webhooks(reconciler: Reconciler) -> None:
    def names() -> list[str]:
        mutating = reconciler.mutating()
        return [w["name"] for w in mutating["webhooks"]] if mutating else []

    reconciler.patch({"spec": {"enableJsonEnricher": True}})
    exec_on = ["binding.spo.io", "recording.spo.io", "execmetadata.spo.io", "nodedebuggingpod.spo.io"]
    eventually(lambda: names() == exec_on, what="exec webhooks added")
    reconciler.patch({"spec": {"enableJsonEnricher": False}})
    eventually(lambda: names() == ["binding.spo.io", "recording.spo.io"], what="exec webhooks removed")


def test_every_container_at_once_is_a_daemonset_the_apiserver_accepts(reconciler: Reconciler) -> None:
    """The privileged SELinux container, both enrichers on the host's namespaces and a host /proc
    elsewhere: beyond the docs' patches, validated by the apiserver as the reconciler applies it."""
    patch: dict[str, Any] = {
        "enableSelinux": True,
        "enableLogEnricher": True,
        "enableJsonEnricher": True,
        "hostProcVolumePath": "/proc/host",
    }
    reconciler.patch({"spec": patch})
    reconciler.wait_configured(SPODSpec.model_validate({**default_spod_dict()["spec"], **patch}))


def test_the_bpf_recorder_is_said_to_be_unsupported_once_and_rendered_as_nothing(
    reconciler: Reconciler,
) -> None:
    core = client.CoreV1Api(reconciler.kube)

    def warnings() -> list[str]:
        events = core.list_namespaced_event(reconciler.namespace).items
        return [e.message or "" for e in events if e.reason == constants.EVENT_REASON_UNSUPPORTED_FEATURE]

    reconciler.patch({"spec": {"enableBpfRecorder": True}})
    spec = SPODSpec.model_validate({**default_spod_dict()["spec"], "enableBpfRecorder": True})
    reconciler.wait_configured(spec)
    eventually(lambda: len(warnings()) == 1, what="the UnsupportedFeature event")
    assert "enableBpfRecorder" in warnings()[0]
    # A further pass (a change that alters the pods) does not say it again.
    reconciler.patch({"spec": {"verbosity": 1}})
    reconciler.wait_configured(spec.model_copy(update={"verbosity": 1}))
    assert len(warnings()) == 1
    daemonset = client.AppsV1Api(reconciler.kube).read_namespaced_daemon_set(
        constants.SPOD_NAME, reconciler.namespace
    )
    assert daemonset.spec is not None and daemonset.spec.template.spec is not None
    containers = daemonset.spec.template.spec.containers
    assert [c.name for c in containers] == ["security-profiles-operator"]


def test_a_foreign_selector_term_is_kept_and_causes_no_writes(reconciler: Reconciler) -> None:
    reconciler.wait_configured(SPODSpec.model_validate(default_spod_dict()["spec"]))
    mutating = reconciler.mutating()
    assert mutating is not None
    index = [w["name"] for w in mutating["webhooks"]].index("binding.spo.io")
    term = {"key": "control-plane", "operator": "DoesNotExist"}
    before = reconciler.reconciles()
    # What AKS's admissions enforcer does to every webhook: narrow its namespaceSelector.
    admission = client.AdmissionregistrationV1Api(reconciler.kube)
    admission.patch_mutating_webhook_configuration(
        constants.MUTATING_WEBHOOK_CONFIGURATION,
        [{"op": "add", "path": f"/webhooks/{index}/namespaceSelector/matchExpressions/-", "value": term}],
    )
    version = (reconciler.mutating() or {})["metadata"]["resourceVersion"]
    eventually(lambda: reconciler.reconciles() > before, what="a pass after the foreign change")
    # A further pass, from a spod change that does not touch the webhooks, writes nothing either.
    reconciler.patch({"spec": {"verbosity": 1}})
    eventually(lambda: reconciler.reconciles() > before + 1, what="a second pass")
    after = reconciler.mutating()
    assert after is not None
    assert after["metadata"]["resourceVersion"] == version
    assert term in after["webhooks"][index]["namespaceSelector"]["matchExpressions"]


def test_an_unknown_webhook_name_is_reported_and_nothing_is_applied(reconciler: Reconciler) -> None:
    reconciler.wait_configured(SPODSpec.model_validate(default_spod_dict()["spec"]))
    reconciler.patch(
        {
            "spec": {
                "enableJsonEnricher": True,
                "webhookOptions": [{"name": "recordings.spo.io", "failurePolicy": "Ignore"}],
            }
        }
    )

    def condition() -> dict[str, Any] | None:
        spod = reconciler.spod() or {}
        conditions = spod.get("status", {}).get("conditions") or [None]
        found: dict[str, Any] | None = conditions[0]
        return found

    eventually(lambda: (reconciler.spod() or {}).get("status", {}).get("state") == "ERROR", what="ERROR")
    ready = condition()
    assert ready is not None
    assert (ready["status"], ready["reason"]) == ("False", constants.EVENT_REASON_INVALID_SPOD)
    assert "recordings.spo.io" in ready["message"] and "recording.spo.io" in ready["message"]
    # Nothing half-applied: the JSON enricher's webhooks did not come.
    assert [w["name"] for w in (reconciler.mutating() or {})["webhooks"]] == [
        "binding.spo.io",
        "recording.spo.io",
    ]
    events = client.CoreV1Api(reconciler.kube).list_namespaced_event(reconciler.namespace).items
    assert any(
        e.reason == constants.EVENT_REASON_INVALID_SPOD and "recordings.spo.io" in (e.message or "")
        for e in events
    )


def test_uninstall_leaves_no_webhook_configuration_and_pods_can_be_created(
    reconciler: Reconciler, kube: client.ApiClient
) -> None:
    reconciler.wait_configured(SPODSpec.model_validate(default_spod_dict()["spec"]))
    labelled = f"{reconciler.namespace}-app"
    localcluster.ensure_namespace(kube, labelled)
    kubectl(
        reconciler.cluster.kubeconfig,
        "label",
        "namespace",
        labelled,
        f"{constants.LABEL_ENABLE_BINDING}=true",
    )
    done = subprocess.run(
        [sys.executable, "-m", "spo.cli", "uninstall", "--kubeconfig", str(reconciler.cluster.kubeconfig),
         "--namespace", reconciler.namespace],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    eventually(lambda: reconciler.spod() is None, what="the spod gone")
    admission = client.AdmissionregistrationV1Api(kube)
    names = [c.metadata.name for c in admission.list_mutating_webhook_configuration().items if c.metadata]
    names += [c.metadata.name for c in admission.list_validating_webhook_configuration().items if c.metadata]
    assert constants.MUTATING_WEBHOOK_CONFIGURATION not in names
    assert constants.VALIDATING_WEBHOOK_CONFIGURATION not in names
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "after-uninstall"},
        "spec": {"containers": [{"name": "c", "image": "nginx"}]},
    }
    kubectl(reconciler.cluster.kubeconfig, "-n", labelled, "create", "-f", "-", stdin=yaml.safe_dump(pod))


def test_deleting_the_spod_removes_the_webhook_configurations_and_it_stays_deleted(
    reconciler: Reconciler,
) -> None:
    reconciler.wait_configured(SPODSpec.model_validate(default_spod_dict()["spec"]))
    kubectl(
        reconciler.cluster.kubeconfig, "-n", reconciler.namespace, "delete", "spod", "spod", "--wait=false"
    )
    eventually(lambda: reconciler.spod() is None, what="the spod released by its finalizer")
    assert reconciler.mutating() is None
    before = reconciler.reconciles()
    reconciler.manager.controllers[0].enqueue(f"{reconciler.namespace}/spod")
    eventually(lambda: reconciler.reconciles() > before, what="another pass")
    assert reconciler.spod() is None, "a deleted spod was re-created"
    assert reconciler.mutating() is None
