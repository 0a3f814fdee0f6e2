"""The desired webhook configurations (pure): registration choices and the spod's webhookOptions."""

from __future__ import annotations

from typing import Any

import pytest

from api.types import SPODSpec
from reconciler.webhook_config import (
    Endpoint,
    desired_mutating_configuration,
    desired_validating_configuration,
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


def test_binding_is_create_only_opt_in_and_side_effect_free() -> None:
    binding = webhooks(SPODSpec())["binding.spo.io"]
    assert binding["rules"] == [
        {"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["pods"]}
    ]
    assert binding["namespaceSelector"] == {
        "matchExpressions": [{"key": "spo.x-k8s.io/enable-binding", "operator": "Exists"}]
    }
    assert binding["objectSelector"]["matchExpressions"][0]["operator"] == "NotIn"
    assert "security-profiles-operator-webhook" in binding["objectSelector"]["matchExpressions"][0]["values"]
    assert binding["sideEffects"] == "None"
    assert binding["failurePolicy"] == "Fail"
    assert binding["timeoutSeconds"] == 10
    assert binding["clientConfig"] == {
        "url": "https://127.0.0.1:9443/mutate-v1-pod-binding",
        "caBundle": BUNDLE,
    }


def test_recording_selects_labelled_namespaces_or_labelled_pods_with_memory_optimization() -> None:
    recording = webhooks(SPODSpec())["recording.spo.io"]
    assert recording["namespaceSelector"]["matchExpressions"][0]["key"] == "spo.x-k8s.io/enable-recording"
    assert set(recording["rules"][0]["operations"]) == {"CREATE", "UPDATE"}
    optimized = webhooks(spec_from_docs("7.8.3"))["recording.spo.io"]
    assert optimized["namespaceSelector"] == {}
    keys = {e["key"] for e in optimized["objectSelector"]["matchExpressions"]}
    assert "spo.x-k8s.io/enable-recording" in keys


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
    assert debug["objectSelector"] == {"matchLabels": {"app.kubernetes.io/managed-by": "kubectl-debug"}}
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


def test_docs_oc_debug_selector_is_added_next_to_kubectl_debug() -> None:
    """Docs 7.9.17.1 spell the webhook `nodedebuggingpodmetada.spo.io` and mean an extra selector."""
    spec = spec_from_docs("7.9.17.1").model_copy(update={"enable_json_enricher": True})
    debug_hooks = [w for name, w in webhooks(spec).items() if name.startswith("nodedebuggingpod")]
    assert [w["objectSelector"] for w in debug_hooks] == [
        {"matchLabels": {"app.kubernetes.io/managed-by": "kubectl-debug"}},
        {"matchLabels": {"debug.openshift.io/managed-by": "oc-debug"}},
    ]
    assert len({w["name"] for w in debug_hooks}) == 2


def test_unknown_option_names_are_ignored() -> None:
    spec = SPODSpec.model_validate({"webhookOptions": [{"name": "nope.spo.io", "failurePolicy": "Ignore"}]})
    assert webhooks(spec) == webhooks(SPODSpec())


@pytest.mark.parametrize("endpoint", [LOCAL, Endpoint(service_namespace="spo")], ids=["url", "service"])
def test_validating_configuration_covers_raw_selinux_profiles(endpoint: Endpoint) -> None:
    configuration = desired_validating_configuration(endpoint, BUNDLE)
    (webhook,) = configuration["webhooks"]
    assert webhook["rules"][0]["resources"] == ["rawselinuxprofiles"]
    assert webhook["rules"][0]["operations"] == ["CREATE", "UPDATE"]
    client_config = webhook["clientConfig"]
    if endpoint.url:
        assert client_config["url"] == "https://127.0.0.1:9443/validate-rawselinuxprofile"
    else:
        assert client_config["service"] == {
            "name": "webhook-service",
            "namespace": "spo",
            "path": "/validate-rawselinuxprofile",
            "port": 443,
        }
    assert client_config["caBundle"] == BUNDLE
