"""Foundation acceptance 2 and 3: the docs' objects validate, invalid ones are rejected naming the field."""

import re
from typing import Any

import pydantic
import pytest

from api import kinds
from api.types import ProfileState, SecurityProfilesOperatorDaemon
from tests.docs_examples import (
    DOCS,
    default_spod_dict,
    docs_objects,
    merge_patch,
    object_id,
    spod_patches,
    without_nulls,
)

OUR_API = "security-profiles-operator.x-k8s.io/"


@pytest.mark.skipif(
    not DOCS.is_file(), reason=f"{DOCS} is absent (a clone with nothing beside it): examples/ is the source"
)
def test_examples_hold_every_docs_object() -> None:
    text = DOCS.read_text()
    documented = re.findall(r"^\s*apiVersion: " + re.escape(OUR_API), text, flags=re.MULTILINE)
    examples = docs_objects()
    assert len(examples) == len(documented)
    for obj in examples:
        assert f"name: {obj['metadata']['name']}" in text, object_id(obj)


@pytest.mark.parametrize("obj", docs_objects(), ids=object_id)
def test_docs_object_is_accepted(obj: dict[str, Any]) -> None:
    parsed = kinds.parse(obj)
    # Nothing the user wrote is lost on the way through the model.
    assert _is_subset(obj, parsed.to_dict()), parsed.to_dict()


@pytest.mark.parametrize("entry", spod_patches(), ids=lambda e: e["section"])
def test_docs_spod_patch_applies_to_default_spod(entry: dict[str, Any]) -> None:
    patched = merge_patch(default_spod_dict(), entry["patch"])
    spod = SecurityProfilesOperatorDaemon.model_validate(patched)
    assert _is_subset(without_nulls(entry["patch"]["spec"]), spod.to_dict()["spec"])


def _is_subset(expected: Any, actual: Any) -> bool:
    if isinstance(expected, dict):
        return isinstance(actual, dict) and all(
            k in actual and _is_subset(v, actual[k]) for k, v in expected.items()
        )
    if isinstance(expected, list):
        return (
            isinstance(actual, list)
            and len(expected) == len(actual)
            and all(_is_subset(e, a) for e, a in zip(expected, actual, strict=True))
        )
    return bool(expected == actual)


def _seccomp(name: str = "p", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": OUR_API + "v1beta1",
        "kind": "SeccompProfile",
        "metadata": {"name": name},
        "spec": {"defaultAction": "SCMP_ACT_ERRNO", **spec},
    }


def _selinux_allow(allow: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": OUR_API + "v1alpha2",
        "kind": "SelinuxProfile",
        "metadata": {"name": "p"},
        "spec": {"allow": allow},
    }


def _recording(kind: str, recorder: str) -> dict[str, Any]:
    return {
        "apiVersion": OUR_API + "v1alpha1",
        "kind": "ProfileRecording",
        "metadata": {"name": "r", "namespace": "ns"},
        "spec": {"kind": kind, "recorder": recorder, "podSelector": {}},
    }


INVALID = [
    pytest.param(_seccomp(defaultAction="SCMP_ACT_NOPE"), "spec.defaultAction", id="unknown-default-action"),
    pytest.param(_seccomp(name="../../etc/x"), "metadata", id="path-escaping-name"),
    pytest.param(
        _selinux_allow({"@self": {"tcp_socket": ["listen)) (allow ..."]}}),
        "spec.allow.@self.tcp_socket.0",
        id="cil-injection-permission",
    ),
    pytest.param(
        _selinux_allow({"evil) (allow": {"tcp_socket": ["listen"]}}), "spec.allow", id="cil-injection-type"
    ),
    pytest.param(
        _seccomp(syscalls=[{"action": "SCMP_ACT_ALLOW", "names": ["read write"]}]),
        "spec.syscalls.0.names.0",
        id="syscall-with-space",
    ),
    pytest.param(_recording("SelinuxProfile", "bpf"), "spec", id="selinux-recorded-by-bpf"),
    pytest.param(_recording("ApparmorProfile", "logs"), "spec", id="apparmor-recorded-from-logs"),
]


@pytest.mark.parametrize(("obj", "field"), INVALID)
def test_invalid_input_is_rejected_naming_the_field(obj: dict[str, Any], field: str) -> None:
    with pytest.raises(pydantic.ValidationError) as raised:
        kinds.parse(obj)
    locations = [".".join(str(part) for part in error["loc"]) for error in raised.value.errors()]
    assert any(location.startswith(field) for location in locations), locations


def test_valid_recording_combinations_are_accepted() -> None:
    for kind, recorder in [("SeccompProfile", "logs"), ("SeccompProfile", "bpf"), ("SelinuxProfile", "logs")]:
        kinds.parse(_recording(kind, recorder))


def test_profile_states_order_from_error_to_installed() -> None:
    """A profile's aggregate state is the lowest of its nodes' states (inventory §1.1)."""
    ordered = sorted(ProfileState, key=lambda state: state.rank)
    assert [s.value for s in ordered] == [
        "Error", "Terminating", "Partial", "Disabled", "Pending", "InProgress", "Installed",
    ]  # fmt: skip
    assert min([ProfileState.INSTALLED, ProfileState.PENDING], key=lambda s: s.rank) is ProfileState.PENDING
