"""The desired admission webhook configurations (pure), and the step that applies them.

Choices that differ from upstream:
- binding sees pod CREATE and, through `matchConditions`, only those pod UPDATEs and
  `pods/ephemeralcontainers` updates that change a container image: an image is mutable, so a binding
  enforced at creation only could be escaped with `kubectl set image`; every other update (labels,
  finalizers, termination) never waits on the webhook, so an outage cannot wedge pods.
- our own pods are left out by the namespace they run in, not by a label: any user can put
  `name: spod` on a pod, but only the apiserver sets `kubernetes.io/metadata.name` on a namespace.
- recording fails closed (see desired_mutating_configuration) and keeps its opt-in namespace selector
  with memory optimisation too.
- the node-debugging-pod webhook is one entry whatever extra debug labels are configured (an
  objectSelector cannot OR two labels, `matchConditions` can), so the apiserver records its audit
  annotation under `nodedebuggingpod.spo.io/`, the key the docs show.
- every webhook has an explicit timeout; both AdmissionReview versions are accepted; ProfileBindings
  and RawSelinuxProfiles are validated.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from api import constants, kinds
from api.types import KubernetesObject, LabelSelector, LabelSelectorRequirement, SPODSpec, WebhookOptions
from reconciler.runtime import apply, guarded_patch

REVIEW_VERSIONS = ["v1", "v1beta1"]
# Docs 7.9.17.1 spell the node-debugging webhook this way; users copying it mean that webhook.
_NAME_ALIASES = {"nodedebuggingpodmetada.spo.io": constants.WEBHOOK_NODE_DEBUGGING_POD}


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


def _outside(namespace: str, selector: dict[str, Any]) -> dict[str, Any]:
    """`selector`, narrowed to namespaces other than the operator's (where its own pods run)."""
    expression = {"key": constants.LABEL_NAMESPACE_NAME, "operator": "NotIn", "values": [namespace]}
    return {**selector, "matchExpressions": [*selector.get("matchExpressions", []), expression]}


def _pod_rule(operations: list[str], resource: str = "pods") -> dict[str, Any]:
    return {"apiGroups": [""], "apiVersions": ["v1"], "operations": operations, "resources": [resource]}


# --- matchConditions (CEL, evaluated by the apiserver before it calls the webhook) ----------------------

_CREATE = "request.operation == 'CREATE'"


def _images(pod: str) -> str:
    """The images of every container of `pod`, in order; absent fields read as empty, so a malformed pod
    is left to the webhook (or to validation) rather than to a CEL error."""
    lists = [
        f"{pod}.spec.?{field}.orValue([])"
        for field in ("initContainers", "containers", "ephemeralContainers")
    ]
    return " + ".join(f"{items}.map(c, c.?image.orValue(''))" for items in lists)


# Creations, and updates that change an image or add an ephemeral container (which adds an image).
_IMAGE_CHANGES = {
    "name": "image-change",
    "expression": f"{_CREATE} || {_images('object')} != {_images('oldObject')}",
}
# Creations, and updates that change an annotation (where a forged recording annotation could come in).
_ANNOTATION_CHANGES = {
    "name": "annotation-change",
    "expression": f"{_CREATE} || object.metadata.?annotations.orValue({{}}) != "
    "oldObject.metadata.?annotations.orValue({})",
}
_LABELS = "object.metadata.?labels.orValue({})"


def _cel_string(value: str) -> str:
    # JSON's string escapes (\\, \", \n, \uXXXX) are valid in CEL string literals; other characters stay
    # as they are, since CEL has no surrogate pairs for the \uXXXX escapes of characters beyond U+FFFF.
    return json.dumps(value, ensure_ascii=False)


def _requirement_cel(requirement: LabelSelectorRequirement) -> str:
    key = _cel_string(requirement.key)
    values = "[" + ", ".join(_cel_string(v) for v in requirement.values or []) + "]"
    present = f"{key} in {_LABELS}"
    return {
        "In": f"({present} && {_LABELS}[{key}] in {values})",
        "NotIn": f"(!({present}) || !({_LABELS}[{key}] in {values}))",
        "Exists": f"({present})",
        "DoesNotExist": f"!({present})",
    }[requirement.operator]


def _selector_cel(selector: LabelSelector) -> str:
    """A CEL test of the pod's labels that is true exactly when the label selector matches them."""
    requirements = [
        LabelSelectorRequirement(key=key, operator="In", values=[value])
        for key, value in (selector.match_labels or {}).items()
    ] + list(selector.match_expressions or [])
    if not requirements:
        return "true"
    tests = [_requirement_cel(r) for r in requirements]
    return tests[0] if len(tests) == 1 else "(" + " && ".join(tests) + ")"


def _webhook(
    name: str,
    path: str,
    endpoint: Endpoint,
    ca_bundle: str,
    rules: list[dict[str, Any]],
    *,
    timeout_seconds: int,
    namespace_selector: dict[str, Any] | None = None,
    object_selector: dict[str, Any] | None = None,
    match_conditions: list[dict[str, str]] | None = None,
) -> dict[str, Any]:
    webhook = {
        "name": name,
        "admissionReviewVersions": REVIEW_VERSIONS,
        "clientConfig": endpoint.client_config(path, ca_bundle),
        "rules": rules,
        "failurePolicy": constants.DEFAULT_FAILURE_POLICIES[name],
        "sideEffects": "None",
        "timeoutSeconds": timeout_seconds,
        "matchPolicy": "Equivalent",
        "namespaceSelector": namespace_selector or {},
        "objectSelector": object_selector or {},
    }
    if match_conditions:
        webhook["matchConditions"] = match_conditions
    return webhook


def webhook_name(option_name: str) -> str:
    """The webhook a webhookOptions entry means (the docs' misspelling resolved)."""
    return _NAME_ALIASES.get(option_name, option_name)


def known_webhook_names() -> frozenset[str]:
    """The mutating webhooks a webhookOptions entry may name."""
    return frozenset(
        {
            constants.WEBHOOK_BINDING,
            constants.WEBHOOK_RECORDING,
            constants.WEBHOOK_EXEC_METADATA,
            constants.WEBHOOK_NODE_DEBUGGING_POD,
        }
    )


def _options_by_name(spec: SPODSpec) -> dict[str, list[WebhookOptions]]:
    grouped: dict[str, list[WebhookOptions]] = {}
    for option in spec.webhook_options or []:
        grouped.setdefault(webhook_name(option.name), []).append(option)
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


def desired_mutating_configuration(
    spec: SPODSpec,
    endpoint: Endpoint,
    ca_bundle: str,
    operator_namespace: str = constants.DEFAULT_NAMESPACE,
) -> dict[str, Any]:
    options = _options_by_name(spec)
    # Recording fails closed (constants.DEFAULT_FAILURE_POLICIES); the blast radius of an outage stays what
    # the admin opted into: pods of namespaces labelled for recording (and, with memory optimisation,
    # only the labelled pods there).
    recording_pods = _exists(constants.LABEL_ENABLE_RECORDING) if spec.enable_memory_optimization else {}
    webhooks = [
        _webhook(
            constants.WEBHOOK_BINDING,
            constants.PATH_BINDING,
            endpoint,
            ca_bundle,
            [_pod_rule(["CREATE", "UPDATE"]), _pod_rule(["UPDATE"], "pods/ephemeralcontainers")],
            timeout_seconds=10,
            namespace_selector=_exists(constants.LABEL_ENABLE_BINDING),
            match_conditions=[_IMAGE_CHANGES],
        ),
        _webhook(
            constants.WEBHOOK_RECORDING,
            constants.PATH_RECORDING,
            endpoint,
            ca_bundle,
            [_pod_rule(["CREATE", "UPDATE"])],
            timeout_seconds=10,
            namespace_selector=_exists(constants.LABEL_ENABLE_RECORDING),
            object_selector=recording_pods,
            match_conditions=[_ANNOTATION_CHANGES],
        ),
    ]
    for webhook in webhooks:
        _apply_options(webhook, options.get(webhook["name"], []))
        # After the options, so that a namespaceSelector from the spod cannot bring our own pods (the
        # webhook's among them) under a webhook that fails closed.
        webhook["namespaceSelector"] = _outside(operator_namespace, webhook["namespaceSelector"])
    if spec.enable_json_enricher:
        webhooks.append(
            _apply_options(
                _webhook(
                    constants.WEBHOOK_EXEC_METADATA,
                    constants.PATH_EXEC_METADATA,
                    endpoint,
                    ca_bundle,
                    [_pod_rule(["CONNECT"], "pods/exec"), _pod_rule(["UPDATE"], "pods/ephemeralcontainers")],
                    timeout_seconds=5,
                ),
                options.get(constants.WEBHOOK_EXEC_METADATA, []),
            )
        )
        webhooks.append(_node_debugging_webhook(endpoint, ca_bundle, options))
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {
            "name": constants.MUTATING_WEBHOOK_CONFIGURATION,
            "labels": {constants.LABEL_APP: constants.APP_LABEL_VALUE},
        },
        "webhooks": webhooks,
    }


def _node_debugging_webhook(
    endpoint: Endpoint, ca_bundle: str, options: dict[str, list[WebhookOptions]]
) -> dict[str, Any]:
    """kubectl's debug pods are always selected; an option's objectSelector selects more debug pods
    (e.g. `oc debug`'s label, docs 7.9.17.1) as an alternative in the match condition."""
    kubectl_debug = LabelSelector(match_labels={constants.LABEL_KUBECTL_DEBUG: constants.KUBECTL_DEBUG_VALUE})
    node_options = options.get(constants.WEBHOOK_NODE_DEBUGGING_POD, [])
    selectors = [kubectl_debug, *(o.object_selector for o in node_options if o.object_selector is not None)]
    debug_pods = {"name": "debug-pod", "expression": " || ".join(_selector_cel(s) for s in selectors)}
    shared = [o.model_copy(update={"object_selector": None}) for o in node_options]
    return _apply_options(
        _webhook(
            constants.WEBHOOK_NODE_DEBUGGING_POD,
            constants.PATH_EXEC_METADATA,
            endpoint,
            ca_bundle,
            [_pod_rule(["CREATE"])],
            timeout_seconds=5,
            match_conditions=[debug_pods],
        ),
        shared,
    )


def _our_rule(resource: str) -> dict[str, Any]:
    return {
        "apiGroups": [constants.GROUP],
        "apiVersions": ["*"],
        "operations": ["CREATE", "UPDATE"],
        "resources": [resource],
    }


def desired_validating_configuration(endpoint: Endpoint, ca_bundle: str) -> dict[str, Any]:
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {
            "name": constants.VALIDATING_WEBHOOK_CONFIGURATION,
            "labels": {constants.LABEL_APP: constants.APP_LABEL_VALUE},
        },
        "webhooks": [
            _webhook(
                name,
                path,
                endpoint,
                ca_bundle,
                [_our_rule(kind.plural)],
                timeout_seconds=10,
            )
            for name, path, kind in _VALIDATED
        ],
    }


_VALIDATED = [
    (constants.WEBHOOK_RAW_SELINUX, constants.PATH_RAW_SELINUX, kinds.RAW_SELINUX_PROFILE),
    (constants.WEBHOOK_PROFILE_BINDING, constants.PATH_PROFILE_BINDING, kinds.PROFILE_BINDING),
]


_ENDPOINT_FORMS = ("url", "service")
_KINDS = {
    kinds.MUTATING_WEBHOOK_CONFIGURATION.kind: kinds.MUTATING_WEBHOOK_CONFIGURATION,
    kinds.VALIDATING_WEBHOOK_CONFIGURATION.kind: kinds.VALIDATING_WEBHOOK_CONFIGURATION,
}


def endpoint_form_changes(desired: dict[str, Any], live: dict[str, Any]) -> list[dict[str, Any]]:
    """JSON patch operations that give our webhooks the endpoint form we register them with where the
    live one has the other (a `url` where we want a `service`, or the reverse: `spo up` on a state
    directory an in-cluster install used). Server-side apply would keep a field another manager set,
    and a clientConfig with both is invalid; one `replace` per webhook is valid at every step."""
    wanted = {webhook["name"]: webhook["clientConfig"] for webhook in desired.get("webhooks", [])}
    operations = []
    for index, webhook in enumerate(live.get("webhooks") or []):
        target = wanted.get(webhook.get("name"))
        current = webhook.get("clientConfig") or {}
        if target is not None and any(form in current and form not in target for form in _ENDPOINT_FORMS):
            operations.append({"op": "replace", "path": f"/webhooks/{index}/clientConfig", "value": target})
    return operations


def kind_of(configuration: dict[str, Any]) -> kinds.BuiltinKind:
    return _KINDS[configuration["kind"]]


def apply_webhook_configurations(api: client.ApiClient, *configurations: dict[str, Any]) -> None:
    """Apply each configuration as ours (server-side apply: fields others added are kept), switching
    the endpoint form first where the live one has the other (see endpoint_form_changes)."""
    for configuration in configurations:
        kind = kind_of(configuration)
        try:
            live = client.CustomObjectsApi(api).get_cluster_custom_object(
                kind.group, kind.version, kind.plural, configuration["metadata"]["name"]
            )
        except ApiException as error:
            if error.status != HTTPStatus.NOT_FOUND:
                raise
        else:
            switch_endpoint_form(api, configuration, KubernetesObject.model_validate(live))
        apply(api, kind, configuration)


def switch_endpoint_form(api: client.ApiClient, desired: dict[str, Any], live: KubernetesObject) -> bool:
    """Replace the clientConfig of the live configuration's webhooks whose endpoint has the other form
    than `desired`'s; False when none has. Whoever applies a webhook configuration calls this first: a
    replace works whoever owns the fields, where an apply keeps fields another manager set."""
    operations = endpoint_form_changes(desired, live.model_dump(by_alias=True, exclude_none=True))
    if operations:
        guarded_patch(api, kind_of(desired), live, operations)
    return bool(operations)
