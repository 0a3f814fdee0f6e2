"""Reading AdmissionRequests and pods defensively, and writing minimal JSON patches into them.

The apiserver validates pods only after the mutating webhooks ran, so a request can hold any JSON. Every
shape the decisions rely on is checked here; a mismatch raises UndecodableRequestError, which each webhook
turns into its own answer (deny or allow unchanged) instead of an exception.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final

OP_CREATE: Final = "CREATE"
OP_UPDATE: Final = "UPDATE"

Op = dict[str, Any]
# A chain of object keys below some JSON node, e.g. ("securityContext", "seLinuxOptions", "type").
FieldPath = tuple[str, ...]

SECCOMP_PROFILE_PATH: Final[FieldPath] = ("securityContext", "seccompProfile")
SELINUX_TYPE_PATH: Final[FieldPath] = ("securityContext", "seLinuxOptions", "type")
PRIVILEGED_PATH: Final[FieldPath] = ("securityContext", "privileged")
SPEC_POINTER: Final = "/spec"


class UndecodableRequestError(ValueError):
    """The request does not have the shape the decision needs; the message names the field."""


@dataclass(frozen=True)
class Container:
    pointer: str  # JSON pointer of the container inside the pod, e.g. /spec/initContainers/0
    name: str | None
    image: str | None
    body: dict[str, Any]


def escape(key: str) -> str:
    """RFC 6901: annotation keys contain '/', which would otherwise split the pointer."""
    return key.replace("~", "~0").replace("/", "~1")


def admission_kind(request: Mapping[str, Any]) -> object:
    kind = request.get("kind")
    return kind.get("kind") if isinstance(kind, dict) else None


def request_namespace(request: Mapping[str, Any]) -> str:
    namespace = request.get("namespace")
    if not isinstance(namespace, str) or not namespace:
        got = "an empty one" if namespace == "" else json_type(namespace)
        raise UndecodableRequestError(f"request.namespace must be a non-empty string, got {got}")
    return namespace


def request_object(request: Mapping[str, Any]) -> dict[str, Any]:
    obj = request.get("object")
    if not isinstance(obj, dict):
        raise UndecodableRequestError(f"request.object must be an object, got {json_type(obj)}")
    return obj


def request_old_object(request: Mapping[str, Any]) -> dict[str, Any]:
    obj = request.get("oldObject")
    if not isinstance(obj, dict):
        raise UndecodableRequestError(f"request.oldObject must be an object, got {json_type(obj)}")
    return obj


def child_object(parent: Mapping[str, Any], key: str, where: str) -> dict[str, Any]:
    """parent[key] as an object; absent or null reads as empty, since Kubernetes omits empty fields."""
    child = parent.get(key)
    if child is None:
        return {}
    if not isinstance(child, dict):
        raise UndecodableRequestError(f"{where}.{key} must be an object, got {json_type(child)}")
    return child


def pod_spec(pod: Mapping[str, Any]) -> dict[str, Any]:
    # Required rather than defaulted: a patch adding below /spec cannot apply to a pod without one.
    spec = pod.get("spec")
    if not isinstance(spec, dict):
        raise UndecodableRequestError(f"the pod's spec must be an object, got {json_type(spec)}")
    return spec


def string_map(parent: Mapping[str, Any], key: str, where: str) -> dict[str, str]:
    values = child_object(parent, key, where)
    for name, value in values.items():
        if not isinstance(value, str):
            raise UndecodableRequestError(f"{where}.{key}[{name!r}] must be a string, got {json_type(value)}")
    return values


def containers(spec: Mapping[str, Any], field: str) -> list[Container]:
    """The containers of spec[field] (containers, initContainers or ephemeralContainers)."""
    items = spec.get(field)
    if items is None:
        return []
    if not isinstance(items, list):
        raise UndecodableRequestError(f"spec.{field} must be a list, got {json_type(items)}")
    result = []
    for index, body in enumerate(items):
        where = f"spec.{field}[{index}]"
        if not isinstance(body, dict):
            raise UndecodableRequestError(f"{where} must be an object, got {json_type(body)}")
        result.append(
            Container(
                pointer=f"{SPEC_POINTER}/{field}/{index}",
                name=_optional_str(body, "name", where),
                image=_optional_str(body, "image", where),
                body=body,
            )
        )
    return result


def pod_containers(spec: Mapping[str, Any]) -> Iterator[Container]:
    """Init containers, then containers: the ones a pod is created with (ephemeral ones come later)."""
    yield from containers(spec, "initContainers")
    yield from containers(spec, "containers")


def get_path(node: Mapping[str, Any], path: FieldPath) -> Any:
    """The value at path below node, or None if any step is missing or not an object."""
    value: Any = node
    for key in path:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def set_values(node: Mapping[str, Any], pointer: str, assignments: Mapping[FieldPath, Any]) -> list[Op]:
    """JSON-patch ops making node (at pointer) hold every assignment, leaving all other fields alone.

    Equal values produce no op, so deciding again on the patched object yields an empty patch. Missing
    intermediate objects are added whole, which is why assignments below one node must be made in a
    single call: two separate adds of the same missing parent would overwrite each other.
    """
    ops: list[Op] = []
    below: dict[str, dict[FieldPath, Any]] = {}
    for path, value in assignments.items():
        head, rest = path[0], path[1:]
        if rest:
            below.setdefault(head, {})[rest] = value
        elif node.get(head) != value:
            ops.append({"op": "add", "path": f"{pointer}/{escape(head)}", "value": value})
    for head, sub_assignments in below.items():
        child = node.get(head)
        child_pointer = f"{pointer}/{escape(head)}"
        if child is None:
            ops.append({"op": "add", "path": child_pointer, "value": _nested(sub_assignments)})
        elif isinstance(child, dict):
            ops.extend(set_values(child, child_pointer, sub_assignments))
        else:
            raise UndecodableRequestError(f"{child_pointer} must be an object, got {json_type(child)}")
    return ops


def _nested(assignments: Mapping[FieldPath, Any]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for path, value in assignments.items():
        target = result
        for key in path[:-1]:
            target = target.setdefault(key, {})
        target[path[-1]] = value
    return result


def localhost_seccomp(localhost_profile: str) -> dict[str, str]:
    return {"type": "Localhost", "localhostProfile": localhost_profile}


def _optional_str(body: Mapping[str, Any], key: str, where: str) -> str | None:
    value = body.get(key)
    if value is not None and not isinstance(value, str):
        raise UndecodableRequestError(f"{where}.{key} must be a string, got {json_type(value)}")
    return value


def json_type(value: object) -> str:
    """The JSON name of a decoded value's type, for messages that must not echo a large value."""
    if value is None:
        return "null"
    return {dict: "object", list: "array", str: "string", bool: "boolean"}.get(type(value), "number")
