"""The spod configuration (pure): validation, the DaemonSet each docs patch renders, and the status."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from api.nodepaths import NodePaths
from api.types import SPODSpec, WebhookOptions
from reconciler.spod import (
    JsonEnricherVolume,
    desired_daemonset,
    desired_status,
    json_enricher_volume,
    problems,
    unsupported,
)
from spo.cli import build_parser
from tests.docs_examples import default_spod_dict, merge_patch, spod_patches

IMAGE = "example.test/spo:1"
NAMESPACE = "security-profiles-operator"
# A node that keeps its files elsewhere, as `spo up --in-cluster`'s does.
PATHS = NodePaths(
    kubelet_dir="/srv/node/kubelet",
    audit_log="/srv/node/audit/audit.log",
    selinux_dir="/srv/node/selinux.d",
    state_dir="/srv/node/recordings",
)
KEYED = {"containers", "env", "volumes", "volumeMounts", "tolerations", "ports"}
HASH = "template.metadata.annotations.security-profiles-operator.x-k8s.io/config-hash"
PROFILES = "security-profiles-operator"


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


def spod_spec(patch: dict[str, Any] | None = None) -> SPODSpec:
    return SPODSpec.model_validate(merge_patch(default_spod_dict(), patch or {})["spec"])


def rendered(
    patch: dict[str, Any] | None = None, log_volume: JsonEnricherVolume | None = None
) -> dict[str, Any]:
    rendered_spec: dict[str, Any] = desired_daemonset(spod_spec(patch), NAMESPACE, IMAGE, PATHS, log_volume)[
        "spec"
    ]
    return rendered_spec


def pod_of(
    patch: dict[str, Any] | None = None, log_volume: JsonEnricherVolume | None = None
) -> dict[str, Any]:
    pod: dict[str, Any] = rendered(patch, log_volume)["template"]["spec"]
    return pod


def docs_patch(section: str) -> dict[str, Any]:
    patch: dict[str, Any] = next(e["patch"] for e in spod_patches() if e["section"] == section)
    return patch


def _pod(field: str) -> str:
    return f"template.spec.{field}"


def _in(container: str, field: str) -> str:
    return f"template.spec.{container}.{field}"


ENRICHER_POD = {
    _pod("hostPID"),
    _pod("hostNetwork"),
    _pod("dnsPolicy"),
    _pod("volumes[host-auditlog-volume]"),
}
JSON_ENRICHER_ON = ENRICHER_POD | {_pod("containers[json-enricher]"), HASH}
VERBOSITY = _in(f"containers[{PROFILES}]", "env[SPO_VERBOSITY].value")

EXPECTED_CHANGES: dict[str, set[str]] = {
    "7.5.3": {VERBOSITY, HASH},
    # allowedSyscalls and webhook options are the reconciler's and the agents' business: no restart.
    "7.8.1": set(),
    # The enrichers read memory optimisation at start: the pods roll, nothing else changes.
    "7.8.3": {HASH},
    "7.8.4": {_in(f"containers[{PROFILES}]", "resources"), HASH},
    "7.8.5": {_pod("priorityClassName"), HASH},
    "7.8.7": ENRICHER_POD
    | {
        _pod("containers[log-enricher]"),
        _pod("volumes[host-state-volume]"),
        _in(f"containers[{PROFILES}]", "args"),
        HASH,
    },
    "7.8.8": set(),
    # jsonEnricherOptions are followed at run time: enabling the enricher is the only change.
    "7.9.6": JSON_ENRICHER_ON,
    "7.9.7 interval": JSON_ENRICHER_ON,
    "7.9.7 path": JSON_ENRICHER_ON,
    "7.9.8 rotation": JSON_ENRICHER_ON,
    "7.9.8 verbosity": JSON_ENRICHER_ON | {VERBOSITY},
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


# --- per spod feature: the containers, their arguments, mounts, volumes and privileges ------------------

AGENT = ["agent", "--node-name=$(NODE_NAME)", "--namespace=$(OPERATOR_NAMESPACE)"]
SECCOMP_DIR = "/srv/node/kubelet/seccomp"
AUDIT_DIR = "/srv/node/audit"


@dataclass(frozen=True)
class Expected:
    """A container: its role and arguments after the common ones, its mounts (path: read-only), the
    capabilities it adds (None: privileged)."""

    role: str
    args: list[str]
    mounts: dict[str, bool]
    capabilities: list[str] | None = field(default_factory=list)


def profiles(*args: str, mounts: dict[str, bool] | None = None, privileged: bool = False) -> Expected:
    return Expected(
        "profiles",
        ["--metrics-port=9443", "--kubelet-dir=/srv/node/kubelet", *args],
        {SECCOMP_DIR: False, **(mounts or {})},
        None if privileged else [],
    )


LOG_ENRICHER = Expected(
    "log-enricher",
    ["--metrics-port=9444", "--audit-log=/srv/node/audit/audit.log", "--state-dir=/srv/node/recordings"],
    {AUDIT_DIR: True, "/srv/node/recordings": False},
    ["NET_ADMIN"],
)
JSON_ENRICHER = Expected(
    "json-enricher",
    ["--metrics-port=9445", "--audit-log=/srv/node/audit/audit.log"],
    {AUDIT_DIR: True},
    ["NET_ADMIN", "SYS_PTRACE"],
)
SELINUX_MOUNTS = {
    "/tmp": False,
    "/srv/node/selinux.d": False,
    "/etc/selinux": False,
    "/var/lib/selinux": False,
    "/sys/fs/selinux": False,
}
NO_SELINUX = profiles("--no-selinux")
# The metrics Service reaches the profiles container: it serves the log enricher's families too.
WITH_LOG_METRICS = profiles("--no-selinux", "--metrics-from=http://127.0.0.1:9444")
DIR = "Directory"
CREATE = "DirectoryOrCreate"
BASE_VOLUMES: dict[str, tuple[str, str] | None] = {"host-seccomp-volume": (SECCOMP_DIR, CREATE)}
AUDIT_VOLUME = {"host-auditlog-volume": (AUDIT_DIR, CREATE)}
STATE_VOLUME = {"host-state-volume": ("/srv/node/recordings", CREATE)}

FEATURES: dict[str, tuple[dict[str, Any], list[Expected], dict[str, tuple[str, str] | None]]] = {
    "default": ({}, [NO_SELINUX], BASE_VOLUMES),
    "enableSelinux": (
        {"enableSelinux": True},
        [profiles("--selinux-dir=/srv/node/selinux.d", mounts=SELINUX_MOUNTS, privileged=True)],
        {
            **BASE_VOLUMES,
            "tmp-volume": None,
            "host-selinux-policy-volume": ("/srv/node/selinux.d", CREATE),
            "host-etcselinux-volume": ("/etc/selinux", DIR),
            "host-varlibselinux-volume": ("/var/lib/selinux", DIR),
            "host-fsselinux-volume": ("/sys/fs/selinux", DIR),
        },
    ),
    "enableLogEnricher": (
        {"enableLogEnricher": True},
        [WITH_LOG_METRICS, LOG_ENRICHER],
        {**BASE_VOLUMES, **AUDIT_VOLUME, **STATE_VOLUME},
    ),
    "enableJsonEnricher": (
        {"enableJsonEnricher": True},
        [NO_SELINUX, JSON_ENRICHER],
        {**BASE_VOLUMES, **AUDIT_VOLUME},
    ),
    "hostProcVolumePath": (
        {"enableLogEnricher": True, "enableJsonEnricher": True, "hostProcVolumePath": "/proc/host"},
        [
            WITH_LOG_METRICS,
            Expected(
                LOG_ENRICHER.role,
                [*LOG_ENRICHER.args[:2], "--proc=/host/proc", LOG_ENRICHER.args[2]],
                {**LOG_ENRICHER.mounts, "/host/proc": True},
                LOG_ENRICHER.capabilities,
            ),
            Expected(
                JSON_ENRICHER.role,
                [*JSON_ENRICHER.args, "--proc=/host/proc"],
                {**JSON_ENRICHER.mounts, "/host/proc": True},
                JSON_ENRICHER.capabilities,
            ),
        ],
        {**BASE_VOLUMES, **AUDIT_VOLUME, **STATE_VOLUME, "host-proc-volume": ("/proc/host", DIR)},
    ),
    # No eBPF recorder and no AppArmor yet: nothing runs for them (unsupported() says so).
    "enableBpfRecorder": ({"enableBpfRecorder": True}, [NO_SELINUX], BASE_VOLUMES),
    "enableAppArmor": ({"enableAppArmor": True}, [NO_SELINUX], BASE_VOLUMES),
}


def _summary(container: dict[str, Any]) -> Expected:
    args = container["args"]
    assert args[:1] == ["agent"] and args[2:4] == AGENT[1:]
    security = container["securityContext"]
    capabilities = None if security.get("privileged") else security["capabilities"].get("add", [])
    mounts = {m["mountPath"]: m.get("readOnly", False) for m in container["volumeMounts"]}
    return Expected(args[1].removeprefix("--role="), args[4:], mounts, capabilities)


@pytest.mark.parametrize("feature", sorted(FEATURES))
def test_each_feature_renders_its_containers_mounts_and_volumes(feature: str) -> None:
    spec_patch, containers, volumes = FEATURES[feature]
    pod = pod_of({"spec": spec_patch})
    assert [_summary(c) for c in pod["containers"]] == containers
    assert [c["name"] for c in pod["containers"]] == [
        PROFILES if c.role == "profiles" else c.role for c in containers
    ]
    found = {
        v["name"]: (v["hostPath"]["path"], v["hostPath"]["type"]) if "hostPath" in v else None
        for v in pod["volumes"]
    }
    assert found == volumes
    assert ("hostPID" in pod, "hostNetwork" in pod) == (len(containers) > 1, len(containers) > 1)
    assert "initContainers" not in pod


@pytest.mark.parametrize("feature", sorted(FEATURES))
def test_every_container_is_hardened_and_probed_on_its_own_port(feature: str) -> None:
    pod = pod_of({"spec": FEATURES[feature][0]})
    assert pod["securityContext"] == {"seccompProfile": {"type": "RuntimeDefault"}}
    ports = [port for c in pod["containers"] for port in c["ports"]]
    assert len({p["name"] for p in ports}) == len({p["containerPort"] for p in ports}) == len(ports)
    for container in pod["containers"]:
        security = container["securityContext"]
        assert (security["runAsUser"], security["readOnlyRootFilesystem"]) == (0, True)
        if not security.get("privileged"):
            assert security["allowPrivilegeEscalation"] is False
            assert security["capabilities"]["drop"] == ["ALL"]
        (port,) = container["ports"]
        assert f"--metrics-port={port['containerPort']}" in container["args"]
        for probe in ("startupProbe", "livenessProbe"):
            assert container[probe]["httpGet"] == {"path": "/healthz", "port": port["name"]}


@pytest.mark.parametrize("feature", sorted(FEATURES))
def test_every_rendered_command_line_is_one_the_agent_accepts(feature: str) -> None:
    """The agent parses each container's arguments, and every host path it is given is mounted at
    the same path from the same path of the host."""
    pod = pod_of({"spec": FEATURES[feature][0]})
    host_paths = {v["name"]: v["hostPath"]["path"] for v in pod["volumes"] if "hostPath" in v}
    for container in pod["containers"]:
        args = build_parser().parse_args(container["args"])
        assert (args.command, args.node_name, args.namespace) == (
            "agent",
            "$(NODE_NAME)",
            "$(OPERATOR_NAMESPACE)",
        )
        same = {
            m["mountPath"] for m in container["volumeMounts"] if host_paths.get(m["name"]) == m["mountPath"]
        }
        given = {
            "profiles": [args.kubelet_dir / "seccomp", *([args.selinux_dir] if args.selinux else [])],
            "log-enricher": [args.audit_log.parent, args.state_dir],
            "json-enricher": [args.audit_log.parent],
        }[args.role]
        assert {str(path) for path in given} <= same


def test_the_default_paths_are_upstreams() -> None:
    pod = desired_daemonset(spod_spec({"spec": {"enableLogEnricher": True}}), NAMESPACE, IMAGE, NodePaths())[
        "spec"
    ]["template"]["spec"]
    args = [arg for c in pod["containers"] for arg in c["args"]]
    assert "--kubelet-dir=/var/lib/kubelet" in args
    assert "--audit-log=/var/log/audit/audit.log" in args
    assert "--state-dir=/var/lib/security-profiles-operator/recordings" in args


@pytest.mark.parametrize(
    "patch",
    [
        {"enableLogEnricher": True},
        {"enableJsonEnricher": True},
        {"enableSelinux": True},
        {"enableMemoryOptimization": True},
        {"verbosity": 1},
        {"hostProcVolumePath": "/proc/host", "enableLogEnricher": True},
    ],
)
def test_a_change_that_alters_the_pods_changes_the_template_hash(patch: dict[str, Any]) -> None:
    def hash_of(spec: dict[str, Any]) -> str:
        value: str = rendered({"spec": spec})["template"]["metadata"]["annotations"][
            "security-profiles-operator.x-k8s.io/config-hash"
        ]
        return value

    assert hash_of(patch) != hash_of({})


def test_daemon_resources_default_and_from_the_spod() -> None:
    (default,) = pod_of()["containers"]
    assert default["resources"]["limits"]["memory"] == "128Mi"
    (patched,) = pod_of(docs_patch("7.8.4"))["containers"]
    assert patched["resources"] == docs_patch("7.8.4")["spec"]["daemonResourceRequirements"]


def test_defaults_priority_class_tolerations_and_no_host_namespaces() -> None:
    pod = pod_of()
    assert pod["priorityClassName"] == "system-node-critical"
    assert [t["key"] for t in pod["tolerations"]] == [
        "node-role.kubernetes.io/master",
        "node-role.kubernetes.io/control-plane",
        "node.kubernetes.io/not-ready",
    ]
    assert not {"hostPID", "hostNetwork"} & set(pod)


def test_the_selinux_type_tag_is_on_every_container() -> None:
    pod = pod_of(
        {"spec": {"enableSelinux": True, "enableLogEnricher": True, "selinuxTypeTag": "container_t"}}
    )
    assert [c["securityContext"]["seLinuxOptions"]["type"] for c in pod["containers"]] == ["container_t"] * 2


@pytest.mark.parametrize(
    ("patch", "named"),
    [
        ({}, []),
        ({"enableLogEnricher": True, "enableSelinux": True}, []),
        ({"enableBpfRecorder": True}, ["enableBpfRecorder"]),
        ({"logEnricherSource": "bpf"}, ["logEnricherSource"]),
        ({"enableAppArmor": True, "enableBpfRecorder": True}, ["enableBpfRecorder", "enableAppArmor"]),
        ({"enableProfiling": True}, ["enableProfiling"]),
    ],
)
def test_unsupported_features_are_named(patch: dict[str, Any], named: list[str]) -> None:
    assert [note.split()[0].rstrip(":") for note in unsupported(spod_spec({"spec": patch}))] == named


def test_json_enricher_log_volume_from_the_configmap_keys() -> None:
    volume = json_enricher_volume(
        {
            "json-enricher-log-volume-source.json": '{"emptyDir": {"sizeLimit": "500Mi"}}',
            "json-enricher-log-volume-mount-path": "/data/logs/jsonenricher",
        }
    )
    assert volume == JsonEnricherVolume({"emptyDir": {"sizeLimit": "500Mi"}}, "/data/logs/jsonenricher")
    pod = pod_of({"spec": {"enableJsonEnricher": True}}, volume)
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
