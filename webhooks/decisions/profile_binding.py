"""/validate-profilebinding: refuse a ProfileBinding that the binding webhook could not enforce alone.

Two bindings of one profile kind for the same image in a namespace leave it to chance which profile
a pod gets, so the second one is refused, naming the first. A binding the model rejects is refused
with the model's reason, whatever the installed CRD let through. (Bindings that conflict anyway, e.g.
created while this webhook was not registered, make binding.spo.io deny the pods they cover.)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from api.types import InvalidObject, ProfileBinding
from webhooks.decisions.decision import STATUS_BAD_REQUEST, Decision, deny
from webhooks.decisions.pods import (
    OP_CREATE,
    OP_UPDATE,
    UndecodableRequestError,
    admission_kind,
    request_namespace,
    request_object,
)
from webhooks.snapshot import Snapshot


def decide_profile_binding(request: Mapping[str, Any], snapshot: Snapshot) -> Decision:
    operation = request.get("operation")
    if admission_kind(request) != ProfileBinding.KIND or operation not in (OP_CREATE, OP_UPDATE):
        return Decision(message="not a ProfileBinding creation or update")
    try:
        namespace = request_namespace(request)
        raw = request_object(request)
    except UndecodableRequestError as error:
        return deny(str(error), code=STATUS_BAD_REQUEST)
    old = request.get("oldObject")
    if operation == OP_UPDATE and isinstance(old, dict) and old.get("spec") == raw.get("spec"):
        # Ratcheting: a binding admitted before these rules must still get its finalizers and status
        # updated, or it could never be deleted.
        return Decision(message="binding unchanged")
    try:
        binding = ProfileBinding.model_validate(raw)
    except ValidationError as error:
        return deny(InvalidObject.of(ProfileBinding.KIND, raw, error).reason, code=STATUS_BAD_REQUEST)
    ref = binding.spec.profile_ref
    existing = sorted(
        other.metadata.name or ""
        for other in snapshot.binding_index(namespace).by_image.get(binding.spec.image, ())
        if other.metadata.name != binding.metadata.name and other.spec.profile_ref.kind == ref.kind
    )
    if existing:
        names = " and ".join(f"ProfileBinding {namespace}/{name}" for name in existing)
        return deny(
            f"{names} already binds a {ref.kind} to image {binding.spec.image}: edit it rather than add "
            "another one, since two bindings of one kind for one image would deny every such pod"
        )
    return Decision(message="binding accepted")
