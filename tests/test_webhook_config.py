"""The desired webhook configurations (pure): registration choices and the spod's webhookOptions."""

from __future__ import annotations

from typing import Any

import pytest

from api.types import SPODSpec
from reconciler.webhook_config import (
    Endpoint,
    desired_mutating_configuration,
    desired_validating_configuration,
    endpoint_form_changes,
)
from tests.docs_examples import default_spod_dict, merge_patch, spod_patches

LOCAL = Endpoint(url="https://127.0.0.1:9443")
BUNDLE = "Q0E="


def webhooks(spec: SPODSpec, endpoint: Endpoint = LOCAL) -> dict[str, dict[str, Any]]:
    configuration = desired_mutating_configuration(spec, endpoint, BUNDLE)
    assert configuration["metadata"]["name"] == "spo-mutating-webhook-configuration"
    return {w["name"]: w for w in configuration["webhooks"]}


def spec_from_docs(section: str) -> SPODSpec:
    patch = next(e["patch"] for e in spod_patches() if e["section"] == section)
    return SPODSpec.model_validate(merge_patch(default_spod_dict(), patch)["spec"])


def test_default_spod_registers_binding_and_recording_only() -> None:
    assert list(webhooks(SPODSpec())) == ["binding.spo.io", "recording.spo.io"]


OUTSIDE_OPERATOR_NAMESPACE = {
    "key": "kubernetes.io/metadata.name",
    "operator": "NotIn",
    "values": ["security-profiles-operator"],
}


def test_binding_sees_creations_and_image_changes_only_in_opted_in_namespaces() -> None:
    binding = webhooks(SPODSpec())["binding.spo.io"]
    assert binding["rules"] == [
        {"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE", "UPDATE"], "resources": ["pods"]},
        {
            "apiGroups": [""],
            "apiVersions": ["v1"],
            "operations": ["UPDATE"],
            "resources": ["pods/ephemeralcontainers"],
        },
    ]
    (condition,) = binding["matchConditions"]
    assert condition["expression"].startswith("request.operation == 'CREATE' || ")
    assert "ephemeralContainers" in condition["expression"]
    assert binding["namespaceSelector"] == {
        "matchExpressions": [
            {"key": "spo.x-k8s.io/enable-binding", "operator": "Exists"},
            OUTSIDE_OPERATOR_NAMESPACE,
        ]
    }
    # No label exclusion that a pod author could put on their own pod.
    assert binding["objectSelector"] == {}
    assert binding["sideEffects"] == "None"
    assert binding["failurePolicy"] == "Fail"
    assert binding["timeoutSeconds"] == 10
    assert binding["clientConfig"] == {
        "url": "https://127.0.0.1:9443/mutate-v1-pod-binding",
        "caBundle": BUNDLE,
    }


def test_operator_namespace_stays_excluded_whatever_the_options_say() -> None:
    spec = SPODSpec.model_validate(
        {"webhookOptions": [{"name": "binding.spo.io", "namespaceSelector": {"matchLabels": {"a": "b"}}}]}
    )
    configuration = desired_mutating_configuration(spec, LOCAL, BUNDLE, "my-operator")
    selectors = {w["name"]: w["namespaceSelector"] for w in configuration["webhooks"]}
    excluded = {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["my-operator"]}
    assert selectors["binding.spo.io"] == {"matchLabels": {"a": "b"}, "matchExpressions": [excluded]}
    assert excluded in selectors["recording.spo.io"]["matchExpressions"]


def test_recording_fails_closed_in_labelled_namespaces_also_with_memory_optimization() -> None:
    recording = webhooks(SPODSpec())["recording.spo.io"]
    opt_in = {"key": "spo.x-k8s.io/enable-recording", "operator": "Exists"}
    assert recording["namespaceSelector"]["matchExpressions"] == [opt_in, OUTSIDE_OPERATOR_NAMESPACE]
    assert recording["objectSelector"] == {}
    assert set(recording["rules"][0]["operations"]) == {"CREATE", "UPDATE"}
    assert recording["failurePolicy"] == "Fail"
    assert "annotations" in recording["matchConditions"][0]["expression"]
    optimized = webhooks(spec_from_docs("7.8.3"))["recording.spo.io"]
    assert optimized["namespaceSelector"] == recording["namespaceSelector"]
    assert optimized["objectSelector"] == {"matchExpressions": [opt_in]}


KUBECTL_DEBUG_CEL = (
    '("app.kubernetes.io/managed-by" in object.metadata.?labels.orValue({}) && '
    'object.metadata.?labels.orValue({})["app.kubernetes.io/managed-by"] in ["kubectl-debug"])'
)


def test_json_enricher_adds_the_exec_webhooks() -> None:
    hooks = webhooks(spec_from_docs("7.9.6"))
    assert list(hooks) == [
        "binding.spo.io",
        "recording.spo.io",
        "execmetadata.spo.io",
        "nodedebuggingpod.spo.io",
    ]
    exec_hook = hooks["execmetadata.spo.io"]
    assert exec_hook["failurePolicy"] == "Ignore"
    assert {r["resources"][0]: r["operations"] for r in exec_hook["rules"]} == {
        "pods/exec": ["CONNECT"],
        "pods/ephemeralcontainers": ["UPDATE"],
    }
    debug = hooks["nodedebuggingpod.spo.io"]
    assert debug["objectSelector"] == {}
    assert debug["matchConditions"] == [{"name": "debug-pod", "expression": KUBECTL_DEBUG_CEL}]
    assert debug["clientConfig"]["url"].endswith("/mutate-v1-exec-metadata")


def test_docs_webhook_options_override_the_named_webhook_only() -> None:
    hooks = webhooks(spec_from_docs("7.8.8"))
    assert hooks["recording.spo.io"]["objectSelector"] == {
        "matchExpressions": [{"key": "spo-record", "operator": "In", "values": ["true"]}]
    }
    assert hooks["binding.spo.io"]["objectSelector"] != hooks["recording.spo.io"]["objectSelector"]


def test_failure_policy_option() -> None:
    spec = SPODSpec.model_validate(
        {"webhookOptions": [{"name": "binding.spo.io", "failurePolicy": "Ignore"}]}
    )
    hooks = webhooks(spec)
    assert hooks["binding.spo.io"]["failurePolicy"] == "Ignore"
    assert hooks["recording.spo.io"]["failurePolicy"] == "Fail"


def test_docs_oc_debug_selector_joins_kubectl_debug_in_the_one_entry() -> None:
    """Docs 7.9.17.1 spell the webhook `nodedebuggingpodmetada.spo.io` and mean an extra selector; one
    entry keeps the audit annotation key `nodedebuggingpod.spo.io/...` for both kinds of debug pods."""
    spec = spec_from_docs("7.9.17.1").model_copy(update={"enable_json_enricher": True})
    debug_hooks = [w for name, w in webhooks(spec).items() if name.startswith("nodedebuggingpod")]
    (debug,) = debug_hooks
    assert debug["name"] == "nodedebuggingpod.spo.io"
    (condition,) = debug["matchConditions"]
    labels = "object.metadata.?labels.orValue({})"
    assert condition["expression"] == KUBECTL_DEBUG_CEL + (
        f' || ("debug.openshift.io/managed-by" in {labels} && '
        f'{labels}["debug.openshift.io/managed-by"] in ["oc-debug"])'
    )


def test_selector_expressions_become_cel() -> None:
    spec = SPODSpec.model_validate(
        {
            "enableJsonEnricher": True,
            "webhookOptions": [
                {
                    "name": "nodedebuggingpod.spo.io",
                    "objectSelector": {
                        "matchExpressions": [
                            {"key": "a", "operator": "NotIn", "values": ["é", 'q"uote']},
                            {"key": "b", "operator": "Exists"},
                            {"key": "c", "operator": "DoesNotExist"},
                        ]
                    },
                },
            ],
        }
    )
    (condition,) = webhooks(spec)["nodedebuggingpod.spo.io"]["matchConditions"]
    labels = "object.metadata.?labels.orValue({})"
    assert condition["expression"] == KUBECTL_DEBUG_CEL + (
        f' || ((!("a" in {labels}) || !({labels}["a"] in ["é", "q\\"uote"])) && ("b" in {labels}) && '
        f'!("c" in {labels}))'
    )


def test_unknown_option_names_are_ignored_by_the_builder() -> None:
    """The spod controller never gets here with such a name: reconciler.spod.problems refuses it."""
    spec = SPODSpec.model_validate({"webhookOptions": [{"name": "nope.spo.io", "failurePolicy": "Ignore"}]})
    assert webhooks(spec) == webhooks(SPODSpec())


@pytest.mark.parametrize("section", ["7.8.8", "7.9.17.1"])
def test_removing_the_options_restores_the_defaults(section: str) -> None:
    """`webhookOptions: []` (docs 7.8.8) or removing the field gives back the default configuration."""
    with_options = spec_from_docs(section).model_copy(update={"enable_json_enricher": True})
    defaults = with_options.model_copy(update={"webhook_options": None})
    assert webhooks(with_options) != webhooks(defaults)
    emptied = with_options.model_copy(update={"webhook_options": []})
    assert webhooks(emptied) == webhooks(defaults)


@pytest.mark.parametrize("endpoint", [LOCAL, Endpoint(service_namespace="spo")], ids=["url", "service"])
def test_validating_configuration_covers_raw_selinux_profiles_and_bindings(endpoint: Endpoint) -> None:
    configuration = desired_validating_configuration(endpoint, BUNDLE)
    hooks = {w["name"]: w for w in configuration["webhooks"]}
    assert list(hooks) == ["rawselinuxprofile-validation.spo.io", "profilebinding-validation.spo.io"]
    for (name, webhook), (resource, path) in zip(
        hooks.items(),
        [
            ("rawselinuxprofiles", "/validate-rawselinuxprofile"),
            ("profilebindings", "/validate-profilebinding"),
        ],
        strict=True,
    ):
        assert webhook["rules"][0]["resources"] == [resource], name
        assert webhook["rules"][0]["operations"] == ["CREATE", "UPDATE"]
        assert webhook["failurePolicy"] == "Fail"
        client_config = webhook["clientConfig"]
        if endpoint.url:
            assert client_config["url"] == f"https://127.0.0.1:9443{path}"
        else:
            assert client_config["service"] == {
                "name": "webhook-service",
                "namespace": "spo",
                "path": path,
                "port": 443,
            }
        assert client_config["caBundle"] == BUNDLE


@pytest.mark.parametrize(
    ("registered", "wanted"),
    [
        (LOCAL, Endpoint(service_namespace="security-profiles-operator")),
        (Endpoint(service_namespace="security-profiles-operator"), LOCAL),
    ],
)
def test_a_switch_of_endpoint_form_replaces_each_client_config_whole(
    registered: Endpoint, wanted: Endpoint
) -> None:
    spec = SPODSpec.model_validate(default_spod_dict()["spec"])
    live = desired_mutating_configuration(spec, registered, BUNDLE)
    desired = desired_mutating_configuration(spec, wanted, BUNDLE)
    operations = endpoint_form_changes(desired, live)
    assert [op["path"] for op in operations] == [
        f"/webhooks/{i}/clientConfig" for i in range(len(live["webhooks"]))
    ]
    assert [op["value"] for op in operations] == [w["clientConfig"] for w in desired["webhooks"]]
    assert endpoint_form_changes(desired, desired) == []
