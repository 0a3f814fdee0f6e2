"""The spod configuration (pure): validation, the DaemonSet each docs patch renders, and the status."""

from __future__ import annotations

from typing import Any

import pytest

from api.types import SPODSpec, WebhookOptions
from reconciler.spod import (
    Images,
    JsonEnricherVolume,
    desired_daemonset,
    desired_status,
    json_enricher_volume,
    problems,
)
from tests.docs_examples import default_spod_dict, merge_patch, spod_patches

IMAGES = Images(operator="example.test/spo:1", selinuxd="example.test/selinuxd:1")
NAMESPACE = "security-profiles-operator"
KEYED = {"containers", "initContainers", "env", "volumes", "volumeMounts", "tolerations"}
HASH = "template.metadata.annotations.security-profiles-operator.x-k8s.io/config-hash"
ALL_CONTAINERS = ("initContainers[non-root-enabler]", "containers[security-profiles-operator]")


def changes(before: Any, after: Any, path: str = "") -> set[str]:
    """The shallowest paths where two rendered objects differ; named list items by `[name]`."""
    if isinstance(before, dict) and isinstance(after, dict):
        found: set[str] = set()
        for key in before.keys() | after.keys():
            child = f"{path}.{key}" if path else key
            if key not in before or key not in after:
                found.add(child)
            elif key in KEYED and isinstance(before[key], list):
                old = {item.get("name", item.get("key")): item for item in before[key]}
                new = {item.get("name", item.get("key")): item for item in after[key]}
                for name in old.keys() | new.keys():
                    item = f"{child}[{name}]"
                    found |= (
                        {item} if name not in old or name not in new else changes(old[name], new[name], item)
                    )
            else:
                found |= changes(before[key], after[key], child)
        return found
    return set() if before == after else {path}


def rendered(patch: dict[str, Any] | None = None) -> dict[str, Any]:
    spod = merge_patch(default_spod_dict(), patch or {})
    spec = SPODSpec.model_validate(spod["spec"])
    rendered_spec: dict[str, Any] = desired_daemonset(spec, NAMESPACE, IMAGES)["spec"]
    return rendered_spec


def docs_patch(section: str) -> dict[str, Any]:
    patch: dict[str, Any] = next(e["patch"] for e in spod_patches() if e["section"] == section)
    return patch


def _pod(field: str) -> str:
    return f"template.spec.{field}"


def _in(container: str, field: str) -> str:
    return f"template.spec.{container}.{field}"


JSON_ENRICHER_ON = {
    _pod("hostPID"),
    _pod("containers[json-enricher]"),
    _pod("volumes[host-auditlog-volume]"),
    _pod("volumes[host-syslog-volume]"),
    _pod("volumes[sys-kernel-debug-volume]"),
    _pod("volumes[sys-kernel-tracing-volume]"),
    _in("containers[security-profiles-operator]", "args"),
    HASH,
}

EXPECTED_CHANGES: dict[str, set[str]] = {
    "7.5.3": {_in(c, "env[SPO_VERBOSITY].value") for c in ALL_CONTAINERS} | {HASH},
    # allowedSyscalls and webhook options are the reconciler's and the agents' business: no restart.
    "7.8.1": set(),
    "7.8.3": {_in("containers[security-profiles-operator]", "args"), HASH},
    "7.8.4": {_in("containers[security-profiles-operator]", "resources"), HASH},
    "7.8.5": {_pod("priorityClassName"), HASH},
    "7.8.7": {
        _pod("hostPID"),
        _pod("containers[log-enricher]"),
        _pod("volumes[host-auditlog-volume]"),
        _pod("volumes[host-syslog-volume]"),
        _in("containers[security-profiles-operator]", "args"),
        HASH,
    },
    "7.8.8": set(),
    "7.9.6": JSON_ENRICHER_ON,
    "7.9.7 interval": JSON_ENRICHER_ON,
    "7.9.7 path": JSON_ENRICHER_ON,
    "7.9.8 rotation": JSON_ENRICHER_ON,
    "7.9.8 verbosity": JSON_ENRICHER_ON | {_in(c, "env[SPO_VERBOSITY].value") for c in ALL_CONTAINERS},
    "7.9.16": set(),
    "7.9.17.1": set(),
    "7.9.18": set(),
}


def test_every_docs_patch_has_an_expectation() -> None:
    assert {e["section"] for e in spod_patches()} == set(EXPECTED_CHANGES)


@pytest.mark.parametrize("section", sorted(EXPECTED_CHANGES))
def test_docs_patch_changes_exactly_what_it_should(section: str) -> None:
    found = changes(rendered(), rendered(docs_patch(section)))
    expected = EXPECTED_CHANGES[section]
    outside = {path for path in found if not any(path.startswith(e) for e in expected)}
    unchanged = {e for e in expected if not any(path.startswith(e) for path in found)}
    assert (outside, unchanged) == (set(), set())


def _args(spec: dict[str, Any], container: str) -> list[str]:
    (found,) = [c for c in spec["template"]["spec"]["containers"] if c["name"] == container]
    args: list[str] = found["args"]
    return args


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        ("7.9.6", []),
        ("7.9.7 interval", ["--audit-log-interval-seconds=30"]),
        ("7.9.7 path", ["--audit-log-path=/tmp/logs/audit1.log"]),
        (
            "7.9.8 rotation",
            [
                "--audit-log-path=/tmp/logs/audit1.log",
                "--audit-log-maxsize=500",
                "--audit-log-maxbackup=2",
                "--audit-log-maxage=10",
            ],
        ),
    ],
)
def test_json_enricher_options_become_its_arguments(section: str, expected: list[str]) -> None:
    assert _args(rendered(docs_patch(section)), "json-enricher") == ["agent", "json-enricher", *expected]


def test_removing_an_option_removes_its_argument() -> None:
    with_path = docs_patch("7.9.7 path")
    spod = merge_patch(merge_patch(default_spod_dict(), with_path), {"spec": {"jsonEnricherOptions": None}})
    spec = desired_daemonset(SPODSpec.model_validate(spod["spec"]), NAMESPACE, IMAGES)["spec"]
    assert _args(spec, "json-enricher") == ["agent", "json-enricher"]


def test_verbosity_and_memory_optimisation_reach_the_daemon() -> None:
    spec = rendered({"spec": {"verbosity": 1, "enableMemoryOptimization": True}})
    daemon = spec["template"]["spec"]["containers"][0]
    assert {"name": "SPO_VERBOSITY", "value": "1"} in daemon["env"]
    assert daemon["args"] == ["agent", "daemon", "--with-recording=false", "--with-mem-optim=true"]


def test_defaults_priority_class_tolerations_and_no_host_pid() -> None:
    pod = rendered()["template"]["spec"]
    assert pod["priorityClassName"] == "system-node-critical"
    assert [t["key"] for t in pod["tolerations"]] == [
        "node-role.kubernetes.io/master",
        "node-role.kubernetes.io/control-plane",
        "node.kubernetes.io/not-ready",
    ]
    assert "hostPID" not in pod
    assert [c["name"] for c in pod["containers"]] == ["security-profiles-operator"]


def test_selinux_adds_selinuxd_and_the_policy_copier_with_the_type_tag() -> None:
    pod = rendered({"spec": {"enableSelinux": True, "selinuxTypeTag": "container_t"}})["template"]["spec"]
    assert [c["name"] for c in pod["initContainers"]] == [
        "non-root-enabler",
        "selinux-shared-policies-copier",
    ]
    assert [c["name"] for c in pod["containers"]] == ["security-profiles-operator", "selinuxd"]
    assert {c["securityContext"]["seLinuxOptions"]["type"] for c in pod["containers"]} == {"container_t"}


def test_host_proc_volume_for_the_enrichers_only() -> None:
    pod = rendered({"spec": {"enableLogEnricher": True, "hostProcVolumePath": "/proc/host"}})["template"][
        "spec"
    ]
    mounts = {c["name"]: [m["mountPath"] for m in c["volumeMounts"]] for c in pod["containers"]}
    assert "/proc" in mounts["log-enricher"]
    assert "/proc" not in mounts["security-profiles-operator"]


def test_json_enricher_log_volume_from_the_configmap_keys() -> None:
    volume = json_enricher_volume(
        {
            "json-enricher-log-volume-source.json": '{"emptyDir": {"sizeLimit": "500Mi"}}',
            "json-enricher-log-volume-mount-path": "/data/logs/jsonenricher",
        }
    )
    assert volume == JsonEnricherVolume({"emptyDir": {"sizeLimit": "500Mi"}}, "/data/logs/jsonenricher")
    spec = SPODSpec(enable_json_enricher=True)
    pod = desired_daemonset(spec, NAMESPACE, IMAGES, volume)["spec"]["template"]["spec"]
    assert {"name": "json-enricher-log-output-volume", "emptyDir": {"sizeLimit": "500Mi"}} in pod["volumes"]
    (enricher,) = [c for c in pod["containers"] if c["name"] == "json-enricher"]
    assert {"name": "json-enricher-log-output-volume", "mountPath": "/data/logs/jsonenricher"} in enricher[
        "volumeMounts"
    ]


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (
            {"json-enricher-log-volume-source.json": "{", "json-enricher-log-volume-mount-path": "/x"},
            "not JSON",
        ),
        (
            {"json-enricher-log-volume-source.json": "[]", "json-enricher-log-volume-mount-path": "/x"},
            "one volume",
        ),
    ],
)
def test_unreadable_log_volume_keys_are_errors(data: dict[str, str], error: str) -> None:
    with pytest.raises(ValueError, match=error):
        json_enricher_volume(data)


def test_one_key_alone_means_no_log_volume() -> None:
    assert json_enricher_volume({"json-enricher-log-volume-mount-path": "/x"}) is None


@pytest.mark.parametrize(
    ("names", "unknown"),
    [
        (["recording.spo.io", "binding.spo.io", "execmetadata.spo.io", "nodedebuggingpod.spo.io"], []),
        # The docs' own misspelling (7.9.17.1) means the node-debugging webhook.
        (["nodedebuggingpodmetada.spo.io"], []),
        (["recordings.spo.io", "binding.spo.io"], ["recordings.spo.io"]),
    ],
)
def test_options_naming_no_webhook_are_problems_that_list_the_known_names(
    names: list[str], unknown: list[str]
) -> None:
    found = problems(SPODSpec(webhook_options=[WebhookOptions(name=n) for n in names]))
    assert len(found) == len(unknown)
    for name, problem in zip(unknown, found, strict=True):
        assert repr(name) in problem
        assert "binding.spo.io, execmetadata.spo.io, nodedebuggingpod.spo.io, recording.spo.io" in problem


def ds(*, ready: int, updated: int, observed: int) -> dict[str, int]:
    """A DaemonSet status on two nodes."""
    return {
        "desiredNumberScheduled": 2,
        "numberReady": ready,
        "updatedNumberScheduled": updated,
        "observedGeneration": observed,
    }


@pytest.mark.parametrize(
    ("found", "manages", "ds_status", "generation", "state", "ready"),
    [
        (["bad"], True, None, None, "ERROR", "False"),
        ([], False, None, None, "RUNNING", "True"),
        ([], True, None, None, "CREATING", "False"),
        ([], True, {"desiredNumberScheduled": 0, "numberReady": 0}, 1, "CREATING", "False"),
        ([], True, ds(ready=1, updated=2, observed=3), 3, "UPDATING", "False"),
        ([], True, ds(ready=2, updated=1, observed=3), 3, "UPDATING", "False"),
        ([], True, ds(ready=2, updated=2, observed=2), 3, "UPDATING", "False"),
        ([], True, ds(ready=2, updated=2, observed=3), 3, "RUNNING", "True"),
        ([], True, {"observedGeneration": 1}, 1, "RUNNING", "True"),
    ],
)  # fmt: skip
def test_status_state_machine(
    found: list[str],
    manages: bool,
    ds_status: dict[str, Any] | None,
    generation: int | None,
    state: str,
    ready: str,
) -> None:
    status = desired_status(
        found, manages_daemonset=manages, daemonset_status=ds_status, generation=generation
    )
    assert status.state == state
    assert status.conditions is not None
    assert [(c.type, c.status) for c in status.conditions] == [("Ready", ready)]
