"""The desired admission webhook configurations (pure), and the step that applies them.

Choices that differ from upstream: binding is registered for CREATE only (it never mutates on UPDATE
or DELETE, and has no side effects); every webhook has an explicit timeout; both AdmissionReview
versions are accepted; our own pods are excluded by an object selector; the raw SELinux validating
webhook is always registered.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from api import constants
from api.types import LabelSelector, SPODSpec, WebhookOptions

REVIEW_VERSIONS = ["v1", "v1beta1"]
# Docs 7.9.17.1 spell the node-debugging webhook this way; users copying it mean that webhook.
_NAME_ALIASES = {"nodedebuggingpodmetada.spo.io": constants.WEBHOOK_NODE_DEBUGGING_POD}
_OUR_POD_NAMES = [
    constants.RECONCILER_NAME_LABEL_VALUE,
    constants.WEBHOOK_NAME_LABEL_VALUE,
    constants.SPOD_NAME_LABEL_VALUE,
]


@dataclass(frozen=True)
class Endpoint:
    """Where the apiserver reaches the webhook: a URL base (local, tests) or the in-cluster Service."""

    url: str | None = None
    service_namespace: str | None = None
    service_name: str = constants.WEBHOOK_SERVICE
    service_port: int = 443

    def client_config(self, path: str, ca_bundle: str) -> dict[str, Any]:
        if self.url is not None:
            return {"url": f"{self.url.rstrip('/')}{path}", "caBundle": ca_bundle}
        service = {
            "name": self.service_name,
            "namespace": self.service_namespace,
            "path": path,
            "port": self.service_port,
        }
        return {"service": service, "caBundle": ca_bundle}


def _selector(selector: LabelSelector | None) -> dict[str, Any]:
    return selector.to_dict() if selector else {}


def _exists(key: str) -> dict[str, Any]:
    return {"matchExpressions": [{"key": key, "operator": "Exists"}]}


def _not_our_pods(extra: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    expressions = [{"key": constants.LABEL_NAME, "operator": "NotIn", "values": _OUR_POD_NAMES}]
    return {"matchExpressions": expressions + (extra or [])}


def _pod_rule(operations: list[str], resource: str = "pods") -> dict[str, Any]:
    return {"apiGroups": [""], "apiVersions": ["v1"], "operations": operations, "resources": [resource]}


def _webhook(
    name: str,
    path: str,
    endpoint: Endpoint,
    ca_bundle: str,
    rules: list[dict[str, Any]],
    *,
    failure_policy: str,
    timeout_seconds: int,
    namespace_selector: dict[str, Any] | None = None,
    object_selector: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "name": name,
        "admissionReviewVersions": REVIEW_VERSIONS,
        "clientConfig": endpoint.client_config(path, ca_bundle),
        "rules": rules,
        "failurePolicy": failure_policy,
        "sideEffects": "None",
        "timeoutSeconds": timeout_seconds,
        "matchPolicy": "Equivalent",
        "namespaceSelector": namespace_selector or {},
        "objectSelector": object_selector or {},
    }


def _options_by_name(spec: SPODSpec) -> dict[str, list[WebhookOptions]]:
    grouped: dict[str, list[WebhookOptions]] = {}
    for option in spec.webhook_options or []:
        grouped.setdefault(_NAME_ALIASES.get(option.name, option.name), []).append(option)
    return grouped


def _apply_options(webhook: dict[str, Any], options: list[WebhookOptions]) -> dict[str, Any]:
    """Each option overrides only the fields it sets, as upstream does."""
    for option in options:
        if option.failure_policy is not None:
            webhook["failurePolicy"] = option.failure_policy
        if option.namespace_selector is not None:
            webhook["namespaceSelector"] = _selector(option.namespace_selector)
        if option.object_selector is not None:
            webhook["objectSelector"] = _selector(option.object_selector)
    return webhook


def desired_mutating_configuration(spec: SPODSpec, endpoint: Endpoint, ca_bundle: str) -> dict[str, Any]:
    options = _options_by_name(spec)
    if spec.enable_memory_optimization:
        # Only pods labelled for recording reach the webhook, wherever they run (docs 7.8.3).
        recording_selectors: dict[str, Any] = {
            "object_selector": _not_our_pods(
                [{"key": constants.LABEL_ENABLE_RECORDING, "operator": "Exists"}]
            )
        }
    else:
        recording_selectors = {
            "namespace_selector": _exists(constants.LABEL_ENABLE_RECORDING),
            "object_selector": _not_our_pods(),
        }
    webhooks = [
        _webhook(
            constants.WEBHOOK_BINDING,
            constants.PATH_BINDING,
            endpoint,
            ca_bundle,
            [_pod_rule(["CREATE"])],
            failure_policy="Fail",
            timeout_seconds=10,
            namespace_selector=_exists(constants.LABEL_ENABLE_BINDING),
            object_selector=_not_our_pods(),
        ),
        _webhook(
            constants.WEBHOOK_RECORDING,
            constants.PATH_RECORDING,
            endpoint,
            ca_bundle,
            [_pod_rule(["CREATE", "UPDATE"])],
            failure_policy="Fail",
            timeout_seconds=10,
            **recording_selectors,
        ),
    ]
    if spec.enable_json_enricher:
        webhooks.append(
            _webhook(
                constants.WEBHOOK_EXEC_METADATA,
                constants.PATH_EXEC_METADATA,
                endpoint,
                ca_bundle,
                [_pod_rule(["CONNECT"], "pods/exec"), _pod_rule(["UPDATE"], "pods/ephemeralcontainers")],
                failure_policy="Ignore",
                timeout_seconds=5,
            )
        )
        webhooks.extend(_node_debugging_webhooks(endpoint, ca_bundle, options))
    for webhook in webhooks:
        if webhook["name"] != constants.WEBHOOK_NODE_DEBUGGING_POD:
            _apply_options(webhook, options.get(webhook["name"], []))
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {
            "name": constants.MUTATING_WEBHOOK_CONFIGURATION,
            "labels": {constants.LABEL_APP: constants.APP_LABEL_VALUE},
        },
        "webhooks": webhooks,
    }


def _node_debugging_webhooks(
    endpoint: Endpoint, ca_bundle: str, options: dict[str, list[WebhookOptions]]
) -> list[dict[str, Any]]:
    """kubectl's debug pods are always selected; an option's objectSelector selects more debug pods
    (e.g. `oc debug`'s label) in an entry of its own, since one label selector cannot OR two keys."""
    selectors = [{"matchLabels": {constants.LABEL_KUBECTL_DEBUG: constants.KUBECTL_DEBUG_VALUE}}]
    node_options = options.get(constants.WEBHOOK_NODE_DEBUGGING_POD, [])
    selectors += [_selector(o.object_selector) for o in node_options if o.object_selector is not None]
    shared = [o.model_copy(update={"object_selector": None}) for o in node_options]
    name_prefix, _, domain = constants.WEBHOOK_NODE_DEBUGGING_POD.partition(".")
    return [
        _apply_options(
            _webhook(
                constants.WEBHOOK_NODE_DEBUGGING_POD if index == 0 else f"{name_prefix}-{index}.{domain}",
                constants.PATH_EXEC_METADATA,
                endpoint,
                ca_bundle,
                [_pod_rule(["CREATE"])],
                failure_policy="Ignore",
                timeout_seconds=5,
                object_selector=selector,
            ),
            shared,
        )
        for index, selector in enumerate(selectors)
    ]


def desired_validating_configuration(endpoint: Endpoint, ca_bundle: str) -> dict[str, Any]:
    rule = {
        "apiGroups": [constants.GROUP],
        "apiVersions": ["*"],
        "operations": ["CREATE", "UPDATE"],
        "resources": ["rawselinuxprofiles"],
    }
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {
            "name": constants.VALIDATING_WEBHOOK_CONFIGURATION,
            "labels": {constants.LABEL_APP: constants.APP_LABEL_VALUE},
        },
        "webhooks": [
            _webhook(
                constants.WEBHOOK_RAW_SELINUX,
                constants.PATH_RAW_SELINUX,
                endpoint,
                ca_bundle,
                [rule],
                failure_policy="Fail",
                timeout_seconds=10,
            )
        ],
    }


_WEBHOOK_CONFIGURATION_MODELS = {
    "MutatingWebhookConfiguration": (client.V1MutatingWebhookConfiguration, "mutating_webhook_configuration"),
    "ValidatingWebhookConfiguration": (
        client.V1ValidatingWebhookConfiguration,
        "validating_webhook_configuration",
    ),
}


def apply_webhook_configurations(api: client.ApiClient, *configurations: dict[str, Any]) -> None:
    """Create each configuration, or replace the existing one with it."""
    admission = client.AdmissionregistrationV1Api(api)
    for configuration in configurations:
        name = configuration["metadata"]["name"]
        model, resource = _WEBHOOK_CONFIGURATION_MODELS[configuration["kind"]]
        body: Any = model.model_validate(configuration)
        try:
            getattr(admission, f"create_{resource}")(body)
        except ApiException as error:
            if error.status != 409:
                raise
            body.metadata = getattr(admission, f"read_{resource}")(name).metadata
            getattr(admission, f"replace_{resource}")(name, body)
