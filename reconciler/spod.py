"""The spod configuration, pure: its validation, the `spod` DaemonSet rendered from it, and its status.

Where we differ from upstream (inventory §3):
- an invalid spod (an option naming no webhook, a stored value the model rejects) changes nothing:
  the reconciler reports it (Ready=False, an Event) and keeps the last good configuration live,
  instead of applying the parts it understood;
- the DaemonSet is rendered from the spod alone on every pass, so removing an option removes its
  argument (upstream kept enricher arguments in a base template until the manager restarted);
- the pod template carries a hash of what it was rendered from, so every change that alters the
  DaemonSet rolls it, and changes that do not (webhookOptions) leave the pods alone.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
from dataclasses import dataclass
from typing import Any

from api import constants
from api.types import SPODSpec, SPODStatus
from reconciler.webhook_config import known_webhook_names, webhook_name

_VERBOSITY_ENV = "SPO_VERBOSITY"
_PROFILING_ENV = "SPO_PROFILING"
_PROFILING_PORT_ENV = "SPO_PROFILING_PORT"
_PROFILING_BASE_PORT = 6060
_LABEL_OS = "kubernetes.io/os"
_DAEMON_CONTAINER = "security-profiles-operator"
_DEFAULT_DAEMON_RESOURCES = {
    "requests": {"memory": "64Mi", "cpu": "100m", "ephemeral-storage": "50Mi"},
    "limits": {"memory": "128Mi", "ephemeral-storage": "200Mi"},
}
# The operator's own directories on the node, shared by its containers through these volumes.
_GRPC_DIR = "/var/run/grpc"
_AUDIT_DIR = posixpath.dirname(constants.AUDIT_LOG_PATH)
_SYSLOG_DIR = posixpath.dirname(constants.SYSLOG_PATH)
_SELINUXD_DIR = "/var/run/selinuxd"


@dataclass(frozen=True)
class JsonEnricherVolume:
    """Where the JSON enricher writes its log (docs 7.9.7): a volume source and its mount path, from
    the `security-profiles-operator-profile` ConfigMap."""

    source: dict[str, Any]
    mount_path: str


@dataclass(frozen=True)
class Images:
    operator: str
    selinuxd: str = constants.DEFAULT_SELINUXD_IMAGE


def problems(spec: SPODSpec) -> list[str]:
    """What makes a spod unusable beyond what its schema rejects; empty when it may be applied."""
    known = known_webhook_names()
    found: list[str] = []
    for option in spec.webhook_options or []:
        if webhook_name(option.name) not in known:
            found.append(
                f"webhookOptions: no webhook is named {option.name!r} (known: {', '.join(sorted(known))})"
            )
    return found


def json_enricher_volume(data: dict[str, str]) -> JsonEnricherVolume | None:
    """The two ConfigMap keys of docs 7.9.7 (both needed, as upstream); ValueError if unreadable."""
    source = data.get(constants.PROFILE_KEY_JSON_ENRICHER_VOLUME_SOURCE)
    mount_path = data.get(constants.PROFILE_KEY_JSON_ENRICHER_MOUNT_PATH)
    if not source or not mount_path:
        return None
    try:
        parsed = json.loads(source)
    except json.JSONDecodeError as error:
        raise ValueError(f"{constants.PROFILE_KEY_JSON_ENRICHER_VOLUME_SOURCE}: not JSON: {error}") from error
    if not isinstance(parsed, dict) or len(parsed) != 1:
        raise ValueError(f"{constants.PROFILE_KEY_JSON_ENRICHER_VOLUME_SOURCE}: must be one volume source")
    return JsonEnricherVolume(parsed, mount_path.strip())


def recording_enabled(spec: SPODSpec) -> bool:
    return bool(spec.enable_log_enricher or spec.enable_bpf_recorder or spec.enable_json_enricher)


# --- DaemonSet --------------------------------------------------------------------------------------


def _env(name: str, value: str) -> dict[str, Any]:
    return {"name": name, "value": value}


def _field_env(name: str, path: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}}


def _host_path(name: str, path: str, kind: str = "Directory") -> dict[str, Any]:
    return {"name": name, "hostPath": {"path": path, "type": kind}}


def _empty_dir(name: str) -> dict[str, Any]:
    return {"name": name, "emptyDir": {}}


def _mount(name: str, path: str, *, read_only: bool = False) -> dict[str, Any]:
    mount: dict[str, Any] = {"name": name, "mountPath": path}
    if read_only:
        mount["readOnly"] = True
    return mount


_PRIVILEGED = {"privileged": True, "runAsUser": 0}


def _container(
    name: str,
    image: str,
    args: list[str],
    mounts: list[dict[str, Any]],
    security: dict[str, Any],
    *,
    resources: dict[str, Any] | None = None,
) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": name,
        "image": image,
        "args": args,
        "env": [
            _field_env("NODE_NAME", "spec.nodeName"),
            _field_env(constants.ENV_OPERATOR_NAMESPACE, "metadata.namespace"),
            _env("KUBELET_DIR", constants.KUBELET_DIR),
        ],
        "securityContext": dict(security),
        "volumeMounts": mounts,
    }
    if resources:
        container["resources"] = resources
    return container


def _flag(name: str, value: object) -> str:
    return f"--{name}={str(value).lower() if isinstance(value, bool) else value}"


def _json_enricher_args(spec: SPODSpec) -> list[str]:
    options = spec.json_enricher_options
    args = ["agent", "json-enricher"]
    if options is not None:
        # 0 and "" mean "the enricher's default" (docs 7.9.18 resets them so): no flag at all.
        for flag, value in (
            ("audit-log-interval-seconds", options.audit_log_interval_seconds),
            ("audit-log-path", options.audit_log_path),
            ("audit-log-maxsize", options.audit_log_max_size),
            ("audit-log-maxbackup", options.audit_log_max_backups),
            ("audit-log-maxage", options.audit_log_max_age),
        ):
            if value:
                args.append(_flag(flag, value))
    if spec.json_enricher_filters:
        args.append(_flag("enricher-filters-json", spec.json_enricher_filters))
    return args


def _containers(
    spec: SPODSpec, images: Images, log_volume: JsonEnricherVolume | None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """(init containers, containers, volumes) for the features that are on."""
    image = images.operator
    seccomp_dir = f"{constants.KUBELET_DIR}/seccomp/{constants.SECCOMP_OPERATOR_DIR}"
    volumes = [
        _host_path("host-varlib-volume", "/var/lib"),
        _host_path("host-operator-volume", constants.OPERATOR_ROOT, "DirectoryOrCreate"),
        {"name": "profile-configmap-volume", "configMap": {"name": constants.PROFILE_CONFIGMAP}},
        _host_path("host-root-volume", "/"),
        _empty_dir("selinux-drop-dir"),
        _empty_dir("selinuxd-private-volume"),
        _host_path("profile-recording-output-volume", constants.RECORDINGS_DIR, "DirectoryOrCreate"),
        _empty_dir("grpc-server-volume"),
        _empty_dir("home-volume"),
        _empty_dir("tmp-volume"),
    ]
    init = [
        _container(
            "non-root-enabler",
            image,
            ["agent", "non-root-enabler"],
            [
                _mount("host-varlib-volume", "/var/lib"),
                _mount("profile-configmap-volume", "/opt/spo-profiles", read_only=True),
                _mount("host-root-volume", "/host"),
            ],
            {
                "runAsUser": 0,
                "readOnlyRootFilesystem": True,
                "capabilities": {"drop": ["ALL"], "add": ["CHOWN", "FOWNER", "FSETID", "DAC_OVERRIDE"]},
            },
        )
    ]
    daemon_args = ["agent", "daemon", _flag("with-recording", recording_enabled(spec))]
    if spec.enable_selinux:
        daemon_args.append(_flag("with-selinux", True))
    if spec.enable_app_armor:
        daemon_args.append(_flag("with-apparmor", True))
    if spec.enable_memory_optimization:
        daemon_args.append(_flag("with-mem-optim", True))
    daemon = _container(
        _DAEMON_CONTAINER,
        image,
        daemon_args,
        [
            _mount("host-operator-volume", seccomp_dir),
            _mount("selinux-drop-dir", constants.SELINUX_POLICY_DIR),
            _mount("selinuxd-private-volume", _SELINUXD_DIR),
            _mount("profile-recording-output-volume", constants.RECORDINGS_DIR),
            _mount("grpc-server-volume", _GRPC_DIR),
            _mount("home-volume", "/home"),
            _mount("tmp-volume", "/tmp"),  # noqa: S108 - an emptyDir, not the host's /tmp
        ],
        {
            "runAsUser": constants.ROOTLESS_UID,
            "runAsGroup": constants.ROOTLESS_UID,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "Localhost", "localhostProfile": constants.PROFILE_KEY_DAEMON_SECCOMP},
        },
        resources=spec.daemon_resource_requirements or _DEFAULT_DAEMON_RESOURCES,
    )
    daemon["env"] += [_field_env("POD_NAME", "metadata.name"), _env("HOME", "/home")]
    daemon["ports"] = [{"name": "liveness-port", "containerPort": constants.SPOD_HEALTH_PORT}]
    probe = {"httpGet": {"path": constants.PATH_HEALTHZ, "port": "liveness-port"}}
    daemon["startupProbe"] = {**probe, "failureThreshold": 10, "periodSeconds": 3}
    daemon["livenessProbe"] = {**probe, "failureThreshold": 1, "periodSeconds": 10}
    containers = [daemon]
    if spec.enable_selinux:
        _add_selinux(spec, images, init, containers, volumes)
    _add_recorders(spec, image, log_volume, containers, volumes)
    if spec.host_proc_volume_path != "/proc" and recording_enabled(spec):
        volumes.append(_host_path("host-proc-volume", spec.host_proc_volume_path))
        for container in containers[1:]:
            if container["name"] != "selinuxd":
                container["volumeMounts"].append(_mount("host-proc-volume", "/proc", read_only=True))
    _set_common(spec, init + containers)
    return init, containers, volumes


def _add_selinux(
    spec: SPODSpec,
    images: Images,
    init: list[dict[str, Any]],
    containers: list[dict[str, Any]],
    volumes: list[dict[str, Any]],
) -> None:
    """selinuxd and the init container that installs the shared policies it builds on."""
    volumes += [
        _host_path("host-fsselinux-volume", "/sys/fs/selinux"),
        _host_path("host-etcselinux-volume", "/etc/selinux"),
        _host_path("host-varlibselinux-volume", "/var/lib/selinux"),
    ]
    selinux_mounts = [
        _mount("host-fsselinux-volume", "/sys/fs/selinux"),
        _mount("host-etcselinux-volume", "/etc/selinux"),
        _mount("host-varlibselinux-volume", "/var/lib/selinux"),
    ]
    init.append(
        _container(
            "selinux-shared-policies-copier",
            images.selinuxd,
            ["selinux-shared-policies-copier"],
            [_mount("selinux-drop-dir", constants.SELINUX_POLICY_DIR), *selinux_mounts],
            _PRIVILEGED,
        )
    )
    selinuxd_args = [
        "daemon",
        "--datastore-path", f"{_SELINUXD_DIR}/selinuxd.db",
        "--socket-path", f"{_SELINUXD_DIR}/selinuxd.sock",
        "--socket-uid", "0",
        "--socket-gid", str(constants.ROOTLESS_UID),
    ]  # fmt: skip
    if spec.enable_profiling:
        selinuxd_args.append(_flag("enable-profiling", True))
    containers.append(
        _container(
            "selinuxd",
            images.selinuxd,
            selinuxd_args,
            [
                _mount("selinux-drop-dir", constants.SELINUX_POLICY_DIR, read_only=True),
                _mount("selinuxd-private-volume", _SELINUXD_DIR),
                *selinux_mounts,
            ],
            {
                "runAsUser": 0,
                "capabilities": {"drop": ["ALL"], "add": ["CHOWN", "FOWNER", "FSETID", "DAC_OVERRIDE"]},
            },
            resources={"requests": {"memory": "512Mi"}, "limits": {"memory": "1024Mi"}},
        )
    )


def _add_recorders(
    spec: SPODSpec,
    image: str,
    log_volume: JsonEnricherVolume | None,
    containers: list[dict[str, Any]],
    volumes: list[dict[str, Any]],
) -> None:
    """The log enricher, the eBPF recorder and the JSON enricher, with the host views they need."""
    audit_mounts = [
        _mount("host-auditlog-volume", _AUDIT_DIR, read_only=True),
        _mount("host-syslog-volume", _SYSLOG_DIR, read_only=True),
        _mount("grpc-server-volume", _GRPC_DIR),
    ]
    if spec.enable_log_enricher or spec.enable_json_enricher:
        volumes += [
            _host_path("host-auditlog-volume", _AUDIT_DIR, "DirectoryOrCreate"),
            _host_path("host-syslog-volume", _SYSLOG_DIR, "DirectoryOrCreate"),
        ]
    tracing_mounts = [
        _mount("sys-kernel-debug-volume", "/sys/kernel/debug", read_only=True),
        _mount("sys-kernel-tracing-volume", "/sys/kernel/tracing", read_only=True),
    ]
    if spec.enable_bpf_recorder or spec.enable_json_enricher:
        volumes += [
            _host_path("sys-kernel-debug-volume", "/sys/kernel/debug"),
            _host_path("sys-kernel-tracing-volume", "/sys/kernel/tracing"),
        ]
    if spec.enable_log_enricher:
        args = ["agent", "log-enricher"]
        if spec.log_enricher_filters:
            args.append(_flag("enricher-filters-json", spec.log_enricher_filters))
        if spec.log_enricher_source:
            args.append(_flag("enricher-log-source", spec.log_enricher_source))
        containers.append(
            _container(
                "log-enricher",
                image,
                args,
                list(audit_mounts),
                _PRIVILEGED,
                resources={"requests": {"memory": "64Mi", "cpu": "50m"}, "limits": {"memory": "256Mi"}},
            )
        )
    if spec.enable_bpf_recorder:
        volumes.append(_host_path("sys-kernel-security-volume", "/sys/kernel/security"))
        bpf_security = {
            **_PRIVILEGED,
            "seccompProfile": {
                "type": "Localhost",
                "localhostProfile": constants.PROFILE_KEY_BPF_RECORDER_SECCOMP,
            },
        }
        containers.append(
            _container(
                "bpf-recorder",
                image,
                ["agent", "bpf-recorder"],
                [
                    *tracing_mounts,
                    _mount("sys-kernel-security-volume", "/sys/kernel/security", read_only=True),
                    _mount("grpc-server-volume", _GRPC_DIR),
                ],
                bpf_security,
            )
        )
    if spec.enable_json_enricher:
        mounts = [*audit_mounts, *tracing_mounts]
        if log_volume is not None:
            volumes.append({"name": "json-enricher-log-output-volume", **log_volume.source})
            mounts.append(_mount("json-enricher-log-output-volume", log_volume.mount_path))
        json_security = {
            **_PRIVILEGED,
            "capabilities": {"add": ["SYS_PTRACE", "SYS_RESOURCE", "BPF", "PERFMON"]},
        }
        containers.append(
            _container("json-enricher", image, _json_enricher_args(spec), mounts, json_security)
        )


def _set_common(spec: SPODSpec, containers: list[dict[str, Any]]) -> None:
    """What every container gets from the spod: verbosity, profiling, the SELinux type tag."""
    for index, container in enumerate(containers):
        container["env"].append(_env(_VERBOSITY_ENV, str(spec.verbosity)))
        if spec.enable_profiling and container["name"] != "selinuxd":
            container["env"] += [
                _env(_PROFILING_ENV, "true"),
                _env(_PROFILING_PORT_ENV, str(_PROFILING_BASE_PORT + index)),
            ]
        if not spec.enable_app_armor:
            container["securityContext"]["seLinuxOptions"] = {"type": spec.selinux_type_tag}


def config_hash(template: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:16]


def desired_daemonset(
    spec: SPODSpec, namespace: str, images: Images, log_volume: JsonEnricherVolume | None = None
) -> dict[str, Any]:
    """The `spod` DaemonSet for this spod (inventory §3.4), as we apply it."""
    labels = {
        constants.LABEL_APP: constants.APP_LABEL_VALUE,
        constants.LABEL_NAME: constants.SPOD_NAME_LABEL_VALUE,
    }
    init, containers, volumes = _containers(spec, images, log_volume)
    pod: dict[str, Any] = {
        "serviceAccountName": constants.SPOD_SERVICE_ACCOUNT,
        "nodeSelector": {_LABEL_OS: "linux"},
        "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}, "fsGroup": constants.ROOTLESS_UID},
        "priorityClassName": spec.priority_class_name,
        "tolerations": spec.tolerations or [],
        "initContainers": init,
        "containers": containers,
        "volumes": volumes,
    }
    if recording_enabled(spec) or spec.enable_app_armor:
        pod["hostPID"] = True
    if spec.affinity:
        pod["affinity"] = spec.affinity
    if spec.image_pull_secrets:
        pod["imagePullSecrets"] = spec.image_pull_secrets
    annotations = {
        constants.ANNOTATION_SCC: "privileged",
        constants.ANNOTATION_SPOD_CONFIG_HASH: config_hash(pod),
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {"name": constants.SPOD_NAME, "namespace": namespace, "labels": dict(labels)},
        "spec": {
            "selector": {"matchLabels": dict(labels)},
            "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "100%"}},
            "template": {"metadata": {"labels": dict(labels), "annotations": annotations}, "spec": pod},
        },
    }


# --- status -----------------------------------------------------------------------------------------


def desired_status(
    found: list[str],
    *,
    manages_daemonset: bool,
    daemonset_status: dict[str, Any] | None,
    generation: int | None,
) -> SPODStatus:
    """status.state per inventory §3.3 (ERROR for an unusable spod) and the Ready condition.

    ``daemonset_status`` is the live DaemonSet's status (None: not created yet)."""
    if found:
        return _status("ERROR", "False", constants.EVENT_REASON_INVALID_SPOD, "; ".join(found))
    if not manages_daemonset:
        return _status("RUNNING", "True", "Configured", "the agents run outside the cluster")
    if daemonset_status is None or "observedGeneration" not in daemonset_status:
        # Not created yet, or the DaemonSet controller has not looked at it yet.
        return _status("CREATING", "False", "Creating", "the spod DaemonSet is being created")
    desired = daemonset_status.get("desiredNumberScheduled", 0)
    updated = daemonset_status.get("updatedNumberScheduled", 0)
    ready = daemonset_status.get("numberReady", 0)
    current = daemonset_status.get("observedGeneration") == generation
    if current and updated == desired and ready == desired:
        return _status("RUNNING", "True", "Running", f"{ready} of {desired} nodes ready")
    return _status("UPDATING", "False", "Updating", f"{ready} of {desired} nodes ready")


def _status(state: str, ready: str, reason: str, message: str) -> SPODStatus:
    return SPODStatus.model_validate(
        {
            "state": state,
            "conditions": [
                {
                    "type": constants.SPOD_CONDITION_READY,
                    "status": ready,
                    "reason": reason,
                    "message": message,
                }
            ],
        }
    )
