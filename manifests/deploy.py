"""The operator's static deployment objects, as Python data built from api.constants.

Namespace, service accounts, least-privilege RBAC for the three processes (rendered from what their code
does, api.access), the reconciler and webhook Deployments, their Services, the webhook's disruption budget and
the profile ConfigMap. Objects the reconciler renders at run time (spod DaemonSet, webhook configurations,
the webhook's serving-certificate Secret unless cert-manager issues it) are deliberately absent.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from importlib.resources import files
from typing import Any, Final

from api import access, constants, nodepaths
from api.access import VERB_ORDER, Access, Scope, grants
from api.nodepaths import NodePaths

_RBAC: Final = "rbac.authorization.k8s.io"
# The spod pods use the host's PID and network namespaces and its directories (and, with enableSelinux,
# a privileged container).
_POD_SECURITY_LEVEL: Final = "privileged"
_JSON_ENRICHER_LOG_VOLUME_SIZE: Final = "500Mi"
_WEBHOOK_DRAIN_SECONDS: Final = 5
_BPF_RECORDER_EXTRA_SYSCALLS: Final = ("bpf", "perf_event_open", "setrlimit")
_SECCOMP_ARCHITECTURES: Final = (
    "SCMP_ARCH_X86_64",
    "SCMP_ARCH_X86",
    "SCMP_ARCH_X32",
    "SCMP_ARCH_AARCH64",
    "SCMP_ARCH_ARM",
)


def deployment_objects(
    namespace: str, image: str, *, cert_manager: bool = False, node_paths: NodePaths | None = None
) -> list[dict[str, Any]]:
    """Every static object but the CRDs, in apply order (Namespace first, workloads after what they use)."""
    objects: list[dict[str, Any]] = [
        _namespace(namespace),
        *(
            _object("v1", "ServiceAccount", name, namespace)
            for name in (
                constants.RECONCILER_SERVICE_ACCOUNT,
                constants.WEBHOOK_SERVICE_ACCOUNT,
                constants.SPOD_SERVICE_ACCOUNT,
            )
        ),
        *_rbac(namespace),
        *_metrics_client_rbac(namespace),
        _profile_configmap(namespace),
        _service(constants.WEBHOOK_SERVICE, namespace, _webhook_labels(), "https"),
        _service(constants.METRICS_SERVICE, namespace, _labels(constants.SPOD_NAME_LABEL_VALUE), "http"),
    ]
    if cert_manager:
        objects.extend(_cert_manager_objects(namespace))
    objects.extend(
        [
            _reconciler_deployment(
                namespace, image, cert_manager=cert_manager, node_paths=node_paths or NodePaths()
            ),
            _webhook_deployment(namespace, image),
            _webhook_disruption_budget(namespace),
        ]
    )
    return objects


# --- generic object shapes ------------------------------------------------------------------------------


def _object(
    api_version: str, kind: str, name: str, namespace: str | None = None, **fields: Any
) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name}
    if namespace is not None:
        metadata["namespace"] = namespace
    metadata["labels"] = {constants.LABEL_APP: constants.APP_LABEL_VALUE}
    return {"apiVersion": api_version, "kind": kind, "metadata": metadata, **fields}


def _labels(name: str) -> dict[str, str]:
    return {constants.LABEL_APP: constants.APP_LABEL_VALUE, constants.LABEL_NAME: name}


def _webhook_labels() -> dict[str, str]:
    return _labels(constants.WEBHOOK_NAME_LABEL_VALUE)


def _namespace(name: str) -> dict[str, Any]:
    namespace = _object("v1", "Namespace", name)
    namespace["metadata"]["labels"].update(
        {
            f"{constants.LABEL_POD_SECURITY_PREFIX}{mode}": _POD_SECURITY_LEVEL
            for mode in ("enforce", "audit", "warn")
        }
    )
    return namespace


# --- RBAC -----------------------------------------------------------------------------------------------


def _rules(accesses: Sequence[Access], scope: Scope) -> list[dict[str, Any]]:
    """RBAC rules granting exactly the accesses of `scope`, merged into as few rules as say it plainly:
    one per api group, verbs and object names. ValueError for a verb RBAC does not know."""
    verbs: dict[tuple[str, str, str], set[str]] = {}
    for grant in grants(accesses):
        if grant.scope == scope:
            verbs.setdefault((grant.group, grant.resource, grant.name), set()).add(grant.verb)
    names: dict[tuple[str, str, tuple[str, ...]], list[str]] = {}
    for (group, resource, name), found in sorted(verbs.items()):
        unknown = found - set(VERB_ORDER)
        if unknown:
            raise ValueError(f"{resource}: {sorted(unknown)} not among the RBAC verbs {VERB_ORDER}")
        in_order = tuple(verb for verb in VERB_ORDER if verb in found)
        names.setdefault((group, resource, in_order), []).append(name)
    resources: dict[tuple[str, tuple[str, ...], tuple[str, ...]], list[str]] = {}
    for (group, resource, in_order), named in names.items():
        resources.setdefault((group, in_order, tuple(named)), []).append(resource)
    rules = []
    for (group, in_order, only), listed in sorted(resources.items()):
        rule: dict[str, Any] = {"apiGroups": [group], "resources": listed, "verbs": list(in_order)}
        if only != ("",):
            rule["resourceNames"] = list(only)
        rules.append(rule)
    return rules


def _grant(
    kind: str, name: str, namespace: str, rules: list[dict[str, Any]], service_account: str | None = None
) -> list[dict[str, Any]]:
    """A (Cluster)Role and its binding to a service account of the operator's namespace (default: `name`)."""
    scoped = namespace if kind == "Role" else None
    binding = _object(
        f"{_RBAC}/v1",
        f"{kind}Binding",
        name,
        scoped,
        roleRef={"apiGroup": _RBAC, "kind": kind, "name": name},
        subjects=[{"kind": "ServiceAccount", "name": service_account or name, "namespace": namespace}],
    )
    return [_object(f"{_RBAC}/v1", kind, name, scoped, rules=rules), binding]


def _component_rbac(service_account: str, namespace: str, accesses: Sequence[Access]) -> list[dict[str, Any]]:
    """The component's ClusterRole and Role (each only when it grants something), from api.access."""
    found: list[dict[str, Any]] = []
    for kind, scope in (("ClusterRole", Scope.CLUSTER), ("Role", Scope.NAMESPACE)):
        rules = _rules(accesses, scope)
        if rules:
            found += _grant(kind, service_account, namespace, rules)
    return found


def _rbac(namespace: str) -> list[dict[str, Any]]:
    return [
        *_component_rbac(constants.RECONCILER_SERVICE_ACCOUNT, namespace, access.RECONCILER),
        *_component_rbac(constants.WEBHOOK_SERVICE_ACCOUNT, namespace, access.WEBHOOK),
        *_component_rbac(constants.SPOD_SERVICE_ACCOUNT, namespace, access.AGENT),
    ]


def _metrics_client_rbac(namespace: str) -> list[dict[str, Any]]:
    rule = {"nonResourceURLs": list(constants.METRICS_PATHS), "verbs": ["get"]}
    return _grant(
        "ClusterRole",
        constants.METRICS_CLIENT_ROLE,
        namespace,
        [rule],
        constants.METRICS_CLIENT_SERVICE_ACCOUNT,
    )


# --- workloads ------------------------------------------------------------------------------------------


def _reconciler_deployment(
    namespace: str, image: str, *, cert_manager: bool, node_paths: NodePaths
) -> dict[str, Any]:
    # With cert-manager, the reconciler leaves the webhook's Secret and the CA to it.
    container = _container(
        image,
        [
            "reconciler",
            "--leader-elect",
            *(["--cert-manager"] if cert_manager else []),
            *nodepaths.arguments(node_paths),
        ],
        port=("health", constants.HEALTH_PORT, "HTTP"),
        resources=_resources(cpu="100m", memory="128Mi", memory_limit="512Mi"),
        env=[{"name": constants.ENV_OPERATOR_IMAGE, "value": image}],
    )
    # One replica; `--leader-elect` makes a second one (e.g. during a rollout) a safe standby.
    return _deployment(
        constants.RECONCILER_DEPLOYMENT,
        namespace,
        _labels(constants.RECONCILER_NAME_LABEL_VALUE),
        constants.RECONCILER_SERVICE_ACCOUNT,
        replicas=1,
        container=container,
    )


def _webhook_deployment(namespace: str, image: str) -> dict[str, Any]:
    cert_volume = "cert"
    container = _container(
        image,
        ["webhook", "--port", str(constants.WEBHOOK_PORT), "--cert-dir", constants.WEBHOOK_CERT_DIR],
        port=("webhook", constants.WEBHOOK_PORT, "HTTPS"),
        resources=_resources(cpu="50m", memory="96Mi", memory_limit="256Mi"),
        volume_mounts=[{"name": cert_volume, "mountPath": constants.WEBHOOK_CERT_DIR, "readOnly": True}],
    )
    deployment = _deployment(
        constants.WEBHOOK_DEPLOYMENT,
        namespace,
        _webhook_labels(),
        constants.WEBHOOK_SERVICE_ACCOUNT,
        replicas=2,
        container=container,
        volumes=[{"name": cert_volume, "secret": {"secretName": constants.WEBHOOK_CERT_SECRET}}],
    )
    # Pod admission fails closed while no replica answers: never take one down before its successor is
    # ready, and keep the two replicas on different nodes when there are several.
    # The apiserver keeps sending admissions to a terminating replica until its endpoint is withdrawn:
    # the replica keeps answering that long before it is told to stop.
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["lifecycle"] = {"preStop": {"sleep": {"seconds": _WEBHOOK_DRAIN_SECONDS}}}
    deployment["spec"]["strategy"] = {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
    }
    deployment["spec"]["template"]["spec"]["topologySpreadConstraints"] = [
        {
            "maxSkew": 1,
            "topologyKey": constants.LABEL_HOSTNAME,
            "whenUnsatisfiable": "ScheduleAnyway",
            "labelSelector": {"matchLabels": _webhook_labels()},
        }
    ]
    return deployment


def _deployment(
    name: str,
    namespace: str,
    labels: dict[str, str],
    service_account: str,
    *,
    replicas: int,
    container: dict[str, Any],
    volumes: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    pod_spec: dict[str, Any] = {
        "serviceAccountName": service_account,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": constants.ROOTLESS_UID,
            "runAsGroup": constants.ROOTLESS_UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [{"name": name, **container}],
    }
    if volumes:
        pod_spec["volumes"] = volumes
    return _object(
        "apps/v1",
        "Deployment",
        name,
        namespace,
        spec={
            "replicas": replicas,
            "selector": {"matchLabels": dict(labels)},
            "template": {"metadata": {"labels": dict(labels)}, "spec": pod_spec},
        },
    )


def _container(
    image: str,
    args: list[str],
    *,
    port: tuple[str, int, str],
    resources: dict[str, Any],
    env: list[dict[str, Any]] | None = None,
    volume_mounts: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The operator container of a Deployment: `spo <args>`, hardened, probed on its one port."""
    port_name, port_number, scheme = port
    namespace_env = {
        "name": constants.ENV_OPERATOR_NAMESPACE,
        "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}},
    }
    container: dict[str, Any] = {
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["spo"],
        "args": args,
        "env": [namespace_env, *(env or [])],
        "ports": [{"name": port_name, "containerPort": port_number, "protocol": "TCP"}],
        "livenessProbe": _probe(constants.PATH_HEALTHZ, port_name, scheme, period=20),
        "readinessProbe": _probe(constants.PATH_READYZ, port_name, scheme, period=5),
        "resources": resources,
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
    }
    if volume_mounts:
        container["volumeMounts"] = volume_mounts
    return container


def _probe(path: str, port_name: str, scheme: str, *, period: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": port_name, "scheme": scheme},
        "initialDelaySeconds": 5,
        "periodSeconds": period,
    }


def _resources(*, cpu: str, memory: str, memory_limit: str) -> dict[str, Any]:
    # No CPU limit: throttling a webhook on the admission path only turns load into timeouts.
    return {"requests": {"cpu": cpu, "memory": memory}, "limits": {"memory": memory_limit}}


def _webhook_disruption_budget(namespace: str) -> dict[str, Any]:
    return _object(
        "policy/v1",
        "PodDisruptionBudget",
        constants.WEBHOOK_DEPLOYMENT,
        namespace,
        spec={"minAvailable": 1, "selector": {"matchLabels": _webhook_labels()}},
    )


def _service(name: str, namespace: str, selector: dict[str, str], port_name: str) -> dict[str, Any]:
    port = {"name": port_name, "port": 443, "targetPort": constants.WEBHOOK_PORT, "protocol": "TCP"}
    return _object("v1", "Service", name, namespace, spec={"selector": selector, "ports": [port]})


# --- profile ConfigMap and certificates -----------------------------------------------------------------


def _data_file(name: str) -> str:
    return files(__package__).joinpath("data", name).read_text(encoding="utf-8")


def _seccomp_profile(extra_syscalls: Sequence[str] = ()) -> str:
    """A runtime seccomp profile allowing what a Python daemon of the operator calls, and nothing else."""
    listed = (line.strip() for line in _data_file("python-daemon-syscalls.txt").splitlines())
    syscalls = sorted({name for name in listed if name and not name.startswith("#")} | set(extra_syscalls))
    profile = {
        "defaultAction": "SCMP_ACT_ERRNO",
        "architectures": list(_SECCOMP_ARCHITECTURES),
        "syscalls": [{"names": syscalls, "action": "SCMP_ACT_ALLOW"}],
    }
    return json.dumps(profile, indent=2) + "\n"


def _profile_configmap(namespace: str) -> dict[str, Any]:
    """Upstream's files (inventory section 3.5); the reconciler reads the JSON enricher's log volume."""
    data = {
        constants.PROFILE_KEY_DAEMON_SECCOMP: _seccomp_profile(),
        constants.PROFILE_KEY_BPF_RECORDER_SECCOMP: _seccomp_profile(_BPF_RECORDER_EXTRA_SYSCALLS),
        constants.PROFILE_KEY_SELINUXD_POLICY: _data_file(constants.PROFILE_KEY_SELINUXD_POLICY),
        constants.PROFILE_KEY_SELINUX_RECORDING_POLICY: _data_file(
            constants.PROFILE_KEY_SELINUX_RECORDING_POLICY
        ),
        constants.PROFILE_KEY_SELINUXD_IMAGE_MAPPING: _data_file(
            constants.PROFILE_KEY_SELINUXD_IMAGE_MAPPING
        ),
        constants.PROFILE_KEY_JSON_ENRICHER_VOLUME_SOURCE: json.dumps(
            {"emptyDir": {"sizeLimit": _JSON_ENRICHER_LOG_VOLUME_SIZE}}, separators=(",", ":")
        ),
        constants.PROFILE_KEY_JSON_ENRICHER_MOUNT_PATH: constants.JSON_ENRICHER_LOG_DIR,
    }
    return _object("v1", "ConfigMap", constants.PROFILE_CONFIGMAP, namespace, data=data)


def _cert_manager_objects(namespace: str) -> list[dict[str, Any]]:
    """A self-signed Issuer and the webhook's Certificate; cert-manager then writes the serving Secret."""
    service_dns = f"{constants.WEBHOOK_SERVICE}.{namespace}.svc"
    issuer = _object(
        "cert-manager.io/v1", "Issuer", constants.CERT_MANAGER_ISSUER, namespace, spec={"selfSigned": {}}
    )
    certificate = _object(
        "cert-manager.io/v1",
        "Certificate",
        constants.WEBHOOK_CERTIFICATE,
        namespace,
        spec={
            "secretName": constants.WEBHOOK_CERT_SECRET,
            "dnsNames": [service_dns, f"{service_dns}.cluster.local"],
            "issuerRef": {"kind": "Issuer", "name": constants.CERT_MANAGER_ISSUER},
        },
    )
    return [issuer, certificate]
