"""Control-plane acceptance: manifests, docs objects and schema validation against a real apiserver."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest
import yaml
from kubernetes import client

import manifests
from api import kinds
from spo import localcluster
from tests.docs_examples import default_spod_dict, docs_objects, object_id, spod_patches, without_nulls
from tests.kubectl import kubectl, kubectl_json

pytestmark = pytest.mark.e2e


def test_rendered_manifests_pass_server_side_dry_run(control_plane: localcluster.ControlPlane) -> None:
    rendered = manifests.to_yaml(manifests.render())
    result = kubectl(
        control_plane.kubeconfig, "apply", "--server-side", "--dry-run=server", "-f", "-", stdin=rendered
    )
    applied = [line for line in result.stdout.splitlines() if line.strip()]
    assert len(applied) == len(manifests.render())
    assert all("(server dry run)" in line for line in applied), result.stdout


@pytest.mark.parametrize("obj", docs_objects(), ids=object_id)
def test_docs_object_round_trips_unchanged(
    control_plane: localcluster.ControlPlane, obj: dict[str, Any]
) -> None:
    kind = kinds.BY_KIND[obj["kind"]]
    if kind.namespaced:
        kubectl(control_plane.kubeconfig, "create", "namespace", obj["metadata"]["namespace"], check=False)
    kubectl(control_plane.kubeconfig, "apply", "-f", "-", stdin=yaml.safe_dump(obj))
    name_args = [kind.plural, obj["metadata"]["name"]]
    if kind.namespaced:
        name_args += ["-n", obj["metadata"]["namespace"]]
    stored = kubectl_json(control_plane.kubeconfig, "get", *name_args)
    kubectl(control_plane.kubeconfig, "delete", *name_args)
    sent = json.loads(json.dumps(obj))
    if not kind.namespaced:
        # kubectl drops a namespace given to a cluster-scoped kind (docs 7.9.9 gives one).
        sent["metadata"].pop("namespace", None)
    assert _missing(sent, stored) == [], "fields pruned or changed by the apiserver"


def _missing(sent: Any, stored: Any, path: str = "") -> list[str]:
    if isinstance(sent, dict):
        if not isinstance(stored, dict):
            return [path]
        return [m for k, v in sent.items() for m in _missing(v, stored.get(k), f"{path}.{k}")]
    if isinstance(sent, list):
        if not isinstance(stored, list) or len(sent) != len(stored):
            return [path]
        return [
            m
            for i, (s, t) in enumerate(zip(sent, stored, strict=True))
            for m in _missing(s, t, f"{path}[{i}]")
        ]
    return [] if sent == stored else [f"{path}: sent {sent!r}, stored {stored!r}"]


@pytest.mark.parametrize("entry", spod_patches(), ids=lambda e: e["section"])
def test_docs_spod_patch_is_accepted(
    control_plane: localcluster.ControlPlane, namespace: str, entry: dict[str, Any]
) -> None:
    spod = default_spod_dict()
    spod["metadata"]["namespace"] = namespace
    kubectl(control_plane.kubeconfig, "apply", "-f", "-", stdin=yaml.safe_dump(spod))
    result = kubectl(
        control_plane.kubeconfig,
        "-n",
        namespace,
        "patch",
        "spod",
        "spod",
        "--type=merge",
        "-p",
        json.dumps(entry["patch"]),
    )
    assert "securityprofilesoperatordaemon.security-profiles-operator.x-k8s.io/spod patched" in result.stdout
    stored = kubectl_json(control_plane.kubeconfig, "-n", namespace, "get", "spod", "spod")
    assert _missing(without_nulls(entry["patch"]["spec"]), stored["spec"]) == []


def test_get_sp_wide_prints_the_localhost_profile(control_plane: localcluster.ControlPlane) -> None:
    profile = {
        "apiVersion": "security-profiles-operator.x-k8s.io/v1beta1",
        "kind": "SeccompProfile",
        "metadata": {"name": "wide-column"},
        "spec": {"defaultAction": "SCMP_ACT_LOG"},
    }
    kubectl(control_plane.kubeconfig, "apply", "-f", "-", stdin=yaml.safe_dump(profile))
    status = {"status": {"status": "Installed", "localhostProfile": "operator/wide-column.json"}}
    kubectl(
        control_plane.kubeconfig,
        "patch",
        "sp",
        "wide-column",
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps(status),
    )
    narrow = kubectl(control_plane.kubeconfig, "get", "sp", "wide-column").stdout
    wide = kubectl(control_plane.kubeconfig, "get", "sp", "wide-column", "-o", "wide").stdout
    assert narrow.split("\n")[0].split() == ["NAME", "STATUS", "AGE"]
    header, row = wide.splitlines()[:2]
    assert header.split() == ["NAME", "STATUS", "AGE", "LOCALHOSTPROFILE"]
    assert row.split()[1] == "Installed" and row.split()[-1] == "operator/wide-column.json"


def test_get_selinuxprofiles_prints_usage_and_state(control_plane: localcluster.ControlPlane) -> None:
    profile = {
        "apiVersion": "security-profiles-operator.x-k8s.io/v1alpha2",
        "kind": "SelinuxProfile",
        "metadata": {"name": "columns"},
        "spec": {},
    }
    kubectl(control_plane.kubeconfig, "apply", "-f", "-", stdin=yaml.safe_dump(profile))
    listing = kubectl(control_plane.kubeconfig, "get", "selinuxprofiles", "columns").stdout
    assert listing.splitlines()[0].split() == ["NAME", "USAGE", "STATE"]


INVALID = [
    pytest.param(
        {"kind": "SeccompProfile", "apiVersion": "security-profiles-operator.x-k8s.io/v1beta1",
         "metadata": {"name": "bad-action"}, "spec": {"defaultAction": "SCMP_ACT_NOPE"}},
        "spec.defaultAction",
        id="unknown-default-action",
    ),
    pytest.param(
        {"kind": "SeccompProfile", "apiVersion": "security-profiles-operator.x-k8s.io/v1beta1",
         "metadata": {"name": "bad-syscall"},
         "spec": {"defaultAction": "SCMP_ACT_ERRNO",
                  "syscalls": [{"action": "SCMP_ACT_ALLOW", "names": ["read write"]}]}},
        "spec.syscalls[0].names[0]",
        id="syscall-with-space",
    ),
    pytest.param(
        {"kind": "SelinuxProfile", "apiVersion": "security-profiles-operator.x-k8s.io/v1alpha2",
         "metadata": {"name": "bad-perm"},
         "spec": {"allow": {"@self": {"tcp_socket": ["listen)) (allow x"]}}}},
        "spec.allow.@self.tcp_socket[0]",
        id="cil-injection",
    ),
    pytest.param(
        {"kind": "ProfileRecording", "apiVersion": "security-profiles-operator.x-k8s.io/v1alpha1",
         "metadata": {"name": "bad-recorder", "namespace": "default"},
         "spec": {"kind": "SelinuxProfile", "recorder": "bpf", "podSelector": {}}},
        "spec",
        id="selinux-by-bpf",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("obj", "field"), INVALID)
def test_invalid_object_is_rejected_by_the_schema(
    control_plane: localcluster.ControlPlane, obj: dict[str, Any], field: str
) -> None:
    result = kubectl(control_plane.kubeconfig, "create", "-f", "-", stdin=yaml.safe_dump(obj), check=False)
    assert result.returncode != 0
    assert "is invalid" in result.stderr and field in result.stderr, result.stderr


def test_crds_are_established_with_short_names(control_plane: localcluster.ControlPlane) -> None:
    resources = kubectl(
        control_plane.kubeconfig, "api-resources", "--api-group=security-profiles-operator.x-k8s.io"
    ).stdout
    for kind in kinds.ALL_KINDS:
        line = next(line for line in resources.splitlines() if line.split()[0] == kind.plural)
        for short in kind.short_names:
            assert short in line.split()


def test_namespace_roundtrip(kube: client.ApiClient, namespace: str) -> None:
    """Also run by test_two_pytest_processes_do_not_collide in two concurrent pytest processes."""
    objects = client.CustomObjectsApi(kube)
    body = {
        "apiVersion": "security-profiles-operator.x-k8s.io/v1alpha1",
        "kind": "ProfileBinding",
        "metadata": {"name": "b", "namespace": namespace},
        "spec": {"profileRef": {"kind": "SeccompProfile", "name": "p"}, "image": "x"},
    }
    objects.create_namespaced_custom_object(
        "security-profiles-operator.x-k8s.io", "v1alpha1", namespace, "profilebindings", body
    )
    stored: Any = objects.get_namespaced_custom_object(
        "security-profiles-operator.x-k8s.io", "v1alpha1", namespace, "profilebindings", "b"
    )
    assert stored["spec"] == body["spec"]


def test_two_pytest_processes_do_not_collide(tmp_path: Any) -> None:
    node = f"{__file__}::test_namespace_roundtrip"
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    runs = [
        subprocess.Popen(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
             f"--basetemp={tmp_path / str(i)}", node],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
        )
        for i in range(2)
    ]  # fmt: skip
    outputs = [run.communicate(timeout=300)[0] for run in runs]
    for run, output in zip(runs, outputs, strict=True):
        assert run.returncode == 0, output
        assert "1 passed" in output
