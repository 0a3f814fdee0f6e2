"""The spod configuration, pure: its validation, the `spod` DaemonSet rendered from it, and its status.

Where we differ from upstream (inventory §3):
- an invalid spod (an option naming no webhook, a stored value the model rejects) changes nothing:
  the reconciler reports it (Ready=False, an Event) and keeps the last good configuration live,
  instead of applying the parts it understood;
- the DaemonSet runs our agent, one container per part (`spo agent --role`, agent/roles.py) under the
  docs' container names, each with only the host paths and privileges its part needs: no init
  containers, no selinuxd (the agent loads SELinux policies itself), no eBPF recorder (we have none:
  `unsupported` names what a spod asks for in vain, and nothing is rendered for it);
- the enrichers follow the spod's filters and jsonEnricherOptions at run time, so those are no
  arguments (upstream kept enricher arguments in a base template until the manager restarted);
- the pod template carries a hash of what it was rendered from (and of what the agent reads only at
  start), so every change that alters the pods rolls them, and changes the agents follow live
  (filters, allowedSyscalls) or that are not theirs (webhookOptions) leave the pods alone;
- the host paths come from `NodePaths` (api/nodepaths.py), mounted at the same path in the container.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
from dataclasses import dataclass
from typing import Any

from api import constants
from api.nodepaths import NodePaths
from api.types import SPODSpec, SPODStatus
from reconciler.webhook_config import known_webhook_names, webhook_name

_NODE_NAME_ENV = "NODE_NAME"
_LABEL_OS = "kubernetes.io/os"
_PROFILES_CONTAINER = "security-profiles-operator"  # the docs' name of the daemon container
_DEFAULT_DAEMON_RESOURCES = {
    "requests": {"memory": "64Mi", "cpu": "100m", "ephemeral-storage": "50Mi"},
    "limits": {"memory": "128Mi", "ephemeral-storage": "200Mi"},
}
_ENRICHER_RESOURCES = {"requests": {"memory": "64Mi", "cpu": "50m"}, "limits": {"memory": "256Mi"}}
# Each container's metrics and /healthz port, and its name (unique in the pod, at most 15 characters).
_PORTS = {
    constants.AGENT_ROLE_PROFILES: (constants.SPOD_METRICS_PORT, "metrics"),
    constants.AGENT_ROLE_LOG_ENRICHER: (constants.LOG_ENRICHER_METRICS_PORT, "log-metrics"),
    constants.AGENT_ROLE_JSON_ENRICHER: (constants.JSON_ENRICHER_METRICS_PORT, "json-metrics"),
}
_TMP_DIR = "/tmp"  # noqa: S108 - an emptyDir, not the host's /tmp
# The probes' patience: the agent answers /healthz once its caches synced, within SYNC_TIMEOUT_SECONDS.
_STARTUP_PERIOD_SECONDS = 3
_STARTUP_FAILURES = 40
_LIVENESS_PERIOD_SECONDS = 10
_LIVENESS_FAILURES = 3


@dataclass(frozen=True)
class JsonEnricherVolume:
    """Where the JSON enricher writes its log (docs 7.9.7): a volume source and its mount path, from
    the `security-profiles-operator-profile` ConfigMap."""

    source: dict[str, Any]
    mount_path: str


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


def unsupported(spec: SPODSpec) -> list[str]:
    """What the spod asks for that this operator does not run (yet): nothing is rendered for it."""
    found: list[str] = []
    if spec.enable_bpf_recorder:
        found.append("enableBpfRecorder: there is no eBPF recorder yet, nothing runs for it")
    if spec.log_enricher_source == constants.LOG_ENRICHER_SOURCE_BPF:
        found.append("logEnricherSource bpf: the log enricher follows the node's audit log")
    if spec.enable_app_armor:
        found.append("enableAppArmor: AppArmor profiles are not supported yet")
    if spec.enable_profiling:
        found.append("enableProfiling: the agent serves no profiling endpoint")
    return found


# --- DaemonSet --------------------------------------------------------------------------------------


def _env(name: str, value: str) -> dict[str, Any]:
    return {"name": name, "value": value}


def _field_env(name: str, path: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}}


def _host_path(name: str, path: str, kind: str = "Directory") -> dict[str, Any]:
    return {"name": name, "hostPath": {"path": path, "type": kind}}


def _mount(name: str, path: str, *, read_only: bool = False) -> dict[str, Any]:
    mount: dict[str, Any] = {"name": name, "mountPath": path}
    if read_only:
        mount["readOnly"] = True
    return mount


def _security(*, add: tuple[str, ...] = (), privileged: bool = False) -> dict[str, Any]:
    """Root, because every part reads or writes root-owned host files (the kubelet's seccomp directory,
    the 0600 audit log, the recorder's state): uid 0 owns them, so no capability is needed for that."""
    if privileged:
        return {"privileged": True, "runAsUser": 0, "runAsGroup": 0, "readOnlyRootFilesystem": True}
    capabilities: dict[str, list[str]] = {"drop": ["ALL"]}
    if add:
        capabilities["add"] = list(add)
    return {
        "runAsUser": 0,
        "runAsGroup": 0,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": capabilities,
    }


def _agent(
    role: str,
    image: str,
    args: list[str],
    *,
    mounts: list[dict[str, Any]],
    security: dict[str, Any],
    resources: dict[str, Any],
) -> dict[str, Any]:
    """A container running `spo agent --role=<role>` (the image's entrypoint is `spo`), probed on the
    port it serves its metrics and /healthz on."""
    port, port_name = _PORTS[role]
    probe = {"httpGet": {"path": constants.PATH_HEALTHZ, "port": port_name}}
    return {
        "name": _PROFILES_CONTAINER if role == constants.AGENT_ROLE_PROFILES else role,
        "image": image,
        "args": [
            "agent",
            f"--role={role}",
            f"--node-name=$({_NODE_NAME_ENV})",
            f"--namespace=$({constants.ENV_OPERATOR_NAMESPACE})",
            f"--metrics-port={port}",
            *args,
        ],
        "env": [
            _field_env(_NODE_NAME_ENV, "spec.nodeName"),
            _field_env(constants.ENV_OPERATOR_NAMESPACE, "metadata.namespace"),
        ],
        "ports": [{"name": port_name, "containerPort": port, "protocol": "TCP"}],
        "startupProbe": {
            **probe,
            "periodSeconds": _STARTUP_PERIOD_SECONDS,
            "failureThreshold": _STARTUP_FAILURES,
        },
        "livenessProbe": {
            **probe,
            "periodSeconds": _LIVENESS_PERIOD_SECONDS,
            "failureThreshold": _LIVENESS_FAILURES,
        },
        "resources": resources,
        "securityContext": security,
        "volumeMounts": mounts,
    }


def _profiles(spec: SPODSpec, image: str, paths: NodePaths) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The profiles container and its volumes: the kubelet's seccomp directory, where the agent writes
    `operator/<name>.json`, and with enableSelinux what semodule reads and writes."""
    seccomp_dir = posixpath.join(paths.kubelet_dir, "seccomp")
    volumes = [_host_path("host-seccomp-volume", seccomp_dir, "DirectoryOrCreate")]
    mounts = [_mount("host-seccomp-volume", seccomp_dir)]
    args = [f"--kubelet-dir={paths.kubelet_dir}"]
    if spec.enable_selinux:
        args.append(f"--selinux-dir={paths.selinux_dir}")
        # Policies are checked in a temporary directory.
        volumes.append({"name": "tmp-volume", "emptyDir": {}})
        mounts.append(_mount("tmp-volume", _TMP_DIR))
        selinux = [
            ("host-selinux-policy-volume", paths.selinux_dir, "DirectoryOrCreate"),
            ("host-etcselinux-volume", constants.SELINUX_CONFIG_DIR, "Directory"),
            ("host-varlibselinux-volume", constants.SELINUX_STORE_DIR, "Directory"),
            ("host-fsselinux-volume", constants.SELINUXFS, "Directory"),
        ]
        volumes += [_host_path(name, path, kind) for name, path, kind in selinux]
        mounts += [_mount(name, path) for name, path, _ in selinux]
    else:
        args.append("--no-selinux")
    if spec.enable_log_enricher:
        # The metrics Service reaches this container: it serves the log enricher's audit counters too.
        args.append(f"--metrics-from=http://127.0.0.1:{_PORTS[constants.AGENT_ROLE_LOG_ENRICHER][0]}")
    container = _agent(
        constants.AGENT_ROLE_PROFILES,
        image,
        args,
        mounts=mounts,
        # semodule loads policies into the kernel through selinuxfs, which the runtime gives an
        # unprivileged container read-only: with enableSelinux the container must be privileged.
        security=_security(privileged=bool(spec.enable_selinux)),
        resources=spec.daemon_resource_requirements or _DEFAULT_DAEMON_RESOURCES,
    )
    return container, volumes


def _enrichers(
    spec: SPODSpec, image: str, paths: NodePaths, log_volume: JsonEnricherVolume | None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The enricher containers the spod enables and their volumes: the audit log's directory (read
    only), the recorder's state (log enricher) and the JSON enricher's log volume (docs 7.9.7)."""
    if not (spec.enable_log_enricher or spec.enable_json_enricher):
        return [], []
    audit_dir = posixpath.dirname(paths.audit_log)
    volumes = [_host_path("host-auditlog-volume", audit_dir, "DirectoryOrCreate")]
    mounts = [_mount("host-auditlog-volume", audit_dir, read_only=True)]
    args = [f"--audit-log={paths.audit_log}"]
    if spec.host_proc_volume_path not in {None, "", constants.PROC_DIR}:
        volumes.append(_host_path("host-proc-volume", spec.host_proc_volume_path or ""))
        mounts.append(_mount("host-proc-volume", constants.SPOD_HOST_PROC_MOUNT, read_only=True))
        args.append(f"--proc={constants.SPOD_HOST_PROC_MOUNT}")
    # The kernel announces forks (attribution of processes already gone: agent/lineage.py) only to
    # sockets of the host's network namespace that hold NET_ADMIN.
    fork_events = "NET_ADMIN"
    containers = []
    if spec.enable_log_enricher:
        volumes.append(_host_path("host-state-volume", paths.state_dir, "DirectoryOrCreate"))
        containers.append(
            _agent(
                constants.AGENT_ROLE_LOG_ENRICHER,
                image,
                [*args, f"--state-dir={paths.state_dir}"],
                mounts=[*mounts, _mount("host-state-volume", paths.state_dir)],
                security=_security(add=(fork_events,)),
                resources=_ENRICHER_RESOURCES,
            )
        )
    if spec.enable_json_enricher:
        json_mounts = list(mounts)
        if log_volume is not None:
            volumes.append({"name": "json-enricher-log-output-volume", **log_volume.source})
            json_mounts.append(_mount("json-enricher-log-output-volume", log_volume.mount_path))
        containers.append(
            _agent(
                constants.AGENT_ROLE_JSON_ENRICHER,
                image,
                args,
                mounts=json_mounts,
                # SYS_PTRACE: a process's environ (its exec request's uid) and exe are readable only
                # with it, whoever runs the process.
                security=_security(add=(fork_events, "SYS_PTRACE")),
                resources=_ENRICHER_RESOURCES,
            )
        )
    return containers, volumes


def _set_common(spec: SPODSpec, containers: list[dict[str, Any]]) -> None:
    """What every container gets from the spod: its verbosity (`spo` logs at debug level from 1, docs
    7.5.3) and the SELinux type tag."""
    for container in containers:
        container["env"].append(_env(constants.ENV_VERBOSITY, str(spec.verbosity)))
        if not spec.enable_app_armor:
            container["securityContext"]["seLinuxOptions"] = {"type": spec.selinux_type_tag}


def config_hash(rendered_from: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(rendered_from, sort_keys=True).encode()).hexdigest()[:16]


def desired_daemonset(
    spec: SPODSpec,
    namespace: str,
    image: str,
    paths: NodePaths,
    log_volume: JsonEnricherVolume | None = None,
) -> dict[str, Any]:
    """The `spod` DaemonSet for this spod: one container per part of the agent (agent/roles.py),
    each with the host paths and privileges its part needs and no others."""
    labels = {
        constants.LABEL_APP: constants.APP_LABEL_VALUE,
        constants.LABEL_NAME: constants.SPOD_NAME_LABEL_VALUE,
    }
    profiles, volumes = _profiles(spec, image, paths)
    enrichers, enricher_volumes = _enrichers(spec, image, paths, log_volume)
    containers = [profiles, *enrichers]
    _set_common(spec, containers)
    pod: dict[str, Any] = {
        "serviceAccountName": constants.SPOD_SERVICE_ACCOUNT,
        "nodeSelector": {_LABEL_OS: "linux"},
        "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
        "priorityClassName": spec.priority_class_name,
        "tolerations": spec.tolerations or [],
        "containers": containers,
        "volumes": volumes + enricher_volumes,
    }
    if enrichers:
        # Attribution reads the host's /proc (pid -> cgroup -> container); fork events reach only the
        # host's network namespace.
        pod["hostPID"] = True
        pod["hostNetwork"] = True
        pod["dnsPolicy"] = "ClusterFirstWithHostNet"
    if spec.affinity:
        pod["affinity"] = spec.affinity
    if spec.image_pull_secrets:
        pod["imagePullSecrets"] = spec.image_pull_secrets
    # The enrichers read memory optimisation once, at start (agent/cli.py): a change must roll them.
    read_at_start = {"enableMemoryOptimization": bool(spec.enable_memory_optimization)}
    annotations = {
        constants.ANNOTATION_SCC: "privileged",
        constants.ANNOTATION_SPOD_CONFIG_HASH: config_hash({"pod": pod, "readAtStart": read_at_start}),
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
