"""profilebinding-validation.spo.io: a binding that conflicts with another, or that the model rejects,
is refused with a message naming what to fix; the docs' bindings are accepted."""

from __future__ import annotations

from typing import Any

import pytest

from api.types import ProfileBinding
from tests.docs_examples import docs_objects
from tests.test_decisions_support import NAMESPACE, NGINX, REDIS, admission, binding
from webhooks.decisions import decide_profile_binding
from webhooks.snapshot import StaticSnapshot

EXISTING = binding("nginx-binding", "SeccompProfile", "profile", NGINX)


def binding_request(obj: dict[str, Any], operation: str = "CREATE", old: Any = None) -> dict[str, Any]:
    return admission(obj, operation=operation, kind="ProfileBinding", old=old)


def new_binding(name: str, kind: str, image: str, profile: str = "other") -> dict[str, Any]:
    return binding(name, kind, profile, image).to_dict()


@pytest.mark.parametrize(
    "obj",
    [o for o in docs_objects() if o["kind"] == ProfileBinding.KIND],
    ids=lambda o: f"{o['metadata']['name']}-{o['spec']['profileRef']['kind']}",
)
def test_docs_bindings_are_accepted(obj: dict[str, Any]) -> None:
    decision = decide_profile_binding(binding_request(obj | {"metadata": {"name": "x"}}), StaticSnapshot())

    assert decision.allowed, decision.message


def test_second_binding_of_a_kind_for_an_image_is_refused_naming_the_first() -> None:
    decision = decide_profile_binding(
        binding_request(new_binding("another", "SeccompProfile", NGINX)), StaticSnapshot(bindings=[EXISTING])
    )

    assert not decision.allowed
    assert decision.code == 403
    assert decision.message.startswith(
        f"ProfileBinding {NAMESPACE}/nginx-binding already binds a SeccompProfile to image {NGINX}"
    )


@pytest.mark.parametrize(
    ("obj", "namespace"),
    [
        pytest.param(new_binding("another", "SelinuxProfile", NGINX), NAMESPACE, id="other-kind"),
        pytest.param(new_binding("another", "SeccompProfile", REDIS), NAMESPACE, id="other-image"),
        pytest.param(new_binding("another", "SeccompProfile", NGINX), "elsewhere", id="other-namespace"),
        pytest.param(new_binding("nginx-binding", "SeccompProfile", NGINX), NAMESPACE, id="itself-edited"),
    ],
)
def test_bindings_that_do_not_compete_are_accepted(obj: dict[str, Any], namespace: str) -> None:
    request = binding_request(obj) | {"namespace": namespace}

    assert decide_profile_binding(request, StaticSnapshot(bindings=[EXISTING])).allowed


def test_binding_the_model_rejects_is_refused_with_the_reason() -> None:
    obj = new_binding("bad", "SeccompProfile", REDIS)
    obj["spec"]["profileRef"]["name"] = "MyProfile"

    decision = decide_profile_binding(binding_request(obj), StaticSnapshot())

    assert not decision.allowed
    assert decision.code == 400
    assert "spec.profileRef.name" in decision.message and "'MyProfile'" in decision.message


def test_update_that_keeps_the_spec_is_accepted_even_if_it_conflicts() -> None:
    """A binding that conflicts already must still get its finalizers removed, or it cannot be deleted."""
    obj = new_binding("another", "SeccompProfile", NGINX)
    finalized = obj | {"metadata": obj["metadata"] | {"finalizers": []}}

    decision = decide_profile_binding(
        binding_request(finalized, "UPDATE", old=obj), StaticSnapshot(bindings=[EXISTING])
    )

    assert decision.allowed


@pytest.mark.parametrize(
    "request_",
    [
        admission(new_binding("x", "SeccompProfile", NGINX), operation="DELETE", kind="ProfileBinding"),
        admission({"kind": "Pod"}),
    ],
    ids=["delete", "not-a-binding"],
)
def test_other_requests_pass(request_: dict[str, Any]) -> None:
    assert decide_profile_binding(request_, StaticSnapshot(bindings=[EXISTING])).allowed


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"object": None}, "request.object must be an object, got null"),
        ({"namespace": None}, "request.namespace must be a non-empty string"),
    ],
)
def test_undecodable_request_is_a_bad_request(overrides: dict[str, Any], message: str) -> None:
    request = binding_request(new_binding("x", "SeccompProfile", NGINX)) | overrides

    decision = decide_profile_binding(request, StaticSnapshot())

    assert decision.code == 400
    assert message in decision.message
