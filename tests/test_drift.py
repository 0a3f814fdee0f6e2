"""Drift detection (pure): which differences between a live object and ours call for an apply."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from reconciler.drift import needs_apply, owned_paths

MANAGER = "security-profiles-operator"


def webhook(name: str, **fields: Any) -> dict[str, Any]:
    return {
        "name": name,
        "failurePolicy": "Fail",
        "namespaceSelector": {"matchExpressions": [{"key": "a", "operator": "Exists"}]},
        "objectSelector": {},
        **fields,
    }


def configuration(*webhooks: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": "c", "labels": {"app": "x"}},
        "webhooks": list(webhooks),
    }


def _fields(obj: Any) -> Any:
    """The fieldsV1 server-side apply records for an object applied whole (webhooks keyed by name)."""
    if not isinstance(obj, dict):
        return {}
    fields: dict[str, Any] = {}
    for key, value in obj.items():
        if key == "webhooks":
            fields["f:webhooks"] = {
                ".": {},
                **{f'k:{{"name":"{w["name"]}"}}': {".": {}, **_fields(w)} for w in value},
            }
        elif key in ("namespaceSelector", "objectSelector"):
            fields[f"f:{key}"] = {}  # atomic in the schema
        elif isinstance(value, dict) and value:
            fields[f"f:{key}"] = {".": {}, **_fields(value)}
        else:
            fields[f"f:{key}"] = {}
    return fields


def live(
    applied: dict[str, Any], actual: dict[str, Any] | None = None, taken: tuple[str, str] | None = None
) -> dict[str, Any]:
    """`actual` as stored, after we applied `applied`; `taken`: (webhook, field) another actor has
    since rewritten, which makes it the owner of that field."""
    stored = copy.deepcopy(actual if actual is not None else applied)
    # managedFields leave out the object's type and name: they identify it, nobody owns them.
    meta = {k: v for k, v in applied["metadata"].items() if k != "name"}
    owned = {k: v for k, v in applied.items() if k not in ("apiVersion", "kind")}
    fields = _fields({**owned, "metadata": meta})
    if taken is not None:
        del fields["f:webhooks"][f'k:{{"name":"{taken[0]}"}}'][f"f:{taken[1]}"]
    stored["metadata"]["managedFields"] = [{"manager": MANAGER, "operation": "Apply", "fieldsV1": fields}]
    return stored


DEFAULT = configuration(webhook("binding"), webhook("recording"))
FOREIGN_TERM = {"key": "control-plane", "operator": "DoesNotExist"}
WITH_FOREIGN_TERM = configuration(
    webhook(
        "binding",
        namespaceSelector={"matchExpressions": [{"key": "a", "operator": "Exists"}, FOREIGN_TERM]},
    ),
    webhook("recording"),
)
WITH_OPTION = configuration(
    webhook("binding"), webhook("recording", objectSelector={"matchLabels": {"r": "1"}})
)
WITH_IGNORE = configuration(webhook("binding", failurePolicy="Ignore"), webhook("recording"))
WITH_EXEC = configuration(webhook("binding"), webhook("recording"), webhook("exec"))
ONLY_BINDING = configuration(webhook("binding"))
WITH_SCOPE = configuration(
    webhook("binding", rules=[{"operations": ["CREATE"], "scope": "*"}]), webhook("recording")
)
WITH_OTHER_RULE = configuration(webhook("binding", rules=[{"operations": ["UPDATE"]}]), webhook("recording"))
WITH_RULES = configuration(webhook("binding", rules=[{"operations": ["CREATE"]}]), webhook("recording"))
WITH_THEIRS = configuration(webhook("binding"), webhook("recording"), webhook("theirs"))
WITHOUT_OUR_TERM = configuration(webhook("binding", namespaceSelector={}), webhook("recording"))
WITH_EXTRA_LABEL = configuration(
    webhook(
        "binding",
        namespaceSelector={
            "matchExpressions": [{"key": "a", "operator": "Exists"}],
            "matchLabels": {"t": "1"},
        },
    ),
    webhook("recording"),
)


AKS = ("binding", "namespaceSelector")


@pytest.mark.parametrize(
    ("desired", "applied", "actual", "taken", "expected"),
    [
        pytest.param(DEFAULT, None, None, None, True, id="missing"),
        pytest.param(DEFAULT, DEFAULT, None, None, False, id="as-applied"),
        pytest.param(DEFAULT, DEFAULT, WITH_FOREIGN_TERM, AKS, False, id="foreign-selector-term"),
        pytest.param(DEFAULT, DEFAULT, WITHOUT_OUR_TERM, AKS, True, id="foreign-selector-widened"),
        pytest.param(DEFAULT, DEFAULT, WITH_THEIRS, None, False, id="foreign-webhook"),
        pytest.param(DEFAULT, DEFAULT, WITH_IGNORE, None, True, id="our-field-changed"),
        pytest.param(DEFAULT, DEFAULT, ONLY_BINDING, None, True, id="our-webhook-removed"),
        pytest.param(WITH_OPTION, DEFAULT, None, None, True, id="option-added"),
        pytest.param(DEFAULT, WITH_OPTION, None, None, True, id="option-removed"),
        pytest.param(DEFAULT, WITH_EXTRA_LABEL, None, None, True, id="option-removed-that-only-added-a-key"),
        pytest.param(DEFAULT, WITH_EXEC, None, None, True, id="exec-webhooks-turned-off"),
        pytest.param(WITH_EXEC, DEFAULT, None, None, True, id="exec-webhooks-turned-on"),
        pytest.param(WITH_OPTION, WITH_OPTION, None, None, False, id="option-as-applied"),
        pytest.param(WITH_RULES, WITH_RULES, WITH_SCOPE, None, False, id="apiserver-defaulted-field"),
        pytest.param(WITH_RULES, WITH_RULES, WITH_OTHER_RULE, None, True, id="our-rule-changed"),
    ],
)  # fmt: skip
def test_drift_truth_table(
    desired: dict[str, Any],
    applied: dict[str, Any] | None,
    actual: dict[str, Any] | None,
    taken: tuple[str, str] | None,
    expected: bool,
) -> None:
    observed = None if applied is None else live(applied, actual, taken)
    assert needs_apply(desired, observed, MANAGER) is expected


def test_fields_owned_by_others_are_not_ours() -> None:
    observed = live(DEFAULT)
    observed["metadata"]["managedFields"][0]["manager"] = "someone-else"
    assert list(owned_paths(observed, MANAGER)) == []
    # Nothing of ours to remove, and every field we want is there: no apply.
    assert not needs_apply(DEFAULT, observed, MANAGER)


def test_owned_paths_read_keyed_list_items_by_name() -> None:
    paths = set(owned_paths(live(configuration(webhook("binding"))), MANAGER))
    assert ("webhooks", "binding", "failurePolicy") in paths
    assert ("webhooks", "binding", "namespaceSelector") in paths
    assert ("metadata", "labels", "app") in paths
