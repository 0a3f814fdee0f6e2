"""Drift detection, pure: does a live object need our apply?

Only the fields we own count. A live object drifted when a field we set differs from what we want
now, or when we still own a field we no longer set (e.g. a webhookOptions entry was removed: its
selector must go, so the default comes back). Fields someone else added are not drift: extra
webhooks in our configuration, extra keys, and a selector another actor narrowed with terms of its
own (a platform such as AKS adds its own term to every webhook's namespaceSelector; re-applying ours
would remove it, the platform would add it again, and the two loops would fight forever).
Nor are fields the apiserver defaults (a rule's `scope`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from api import constants

# Lists that server-side apply merges item by item, keyed by `name`; every other list is atomic.
_KEYED_LISTS = frozenset({"webhooks", "matchConditions"})
# Label selectors, atomic in the webhook configurations' schema.
_SELECTORS = frozenset({"namespaceSelector", "objectSelector"})

_TYPE_FIELDS = ("apiVersion", "kind")

Path = tuple[str, ...]


def needs_apply(
    desired: dict[str, Any], live: dict[str, Any] | None, manager: str = constants.FIELD_MANAGER
) -> bool:
    if live is None:
        return True
    # The type is the object's identity, not a field (and list items of built-in kinds omit it).
    desired = {k: v for k, v in desired.items() if k not in _TYPE_FIELDS}
    owned = set(owned_paths(live, manager))
    if not _covers(desired, live, (), owned):
        return True
    wanted = set(desired_paths(desired))
    return any(not _is_prefix_of_any(path, wanted) for path in owned)


def _covers(desired: Any, live: Any, path: Path, owned: set[Path]) -> bool:
    """Every field of ``desired`` is in ``live`` with the same value (see the module docstring)."""
    key = path[-1] if path else ""
    if key in _SELECTORS and isinstance(desired, dict):
        # Selectors are atomic: while we own one it must be exactly ours (a removed option must go);
        # once another actor rewrote it, it may narrow ours, not widen it.
        return desired == live if path in owned else _narrows(desired, live)
    if isinstance(desired, dict):
        return isinstance(live, dict) and all(
            k in live and _covers(v, live[k], (*path, k), owned) for k, v in desired.items()
        )
    if isinstance(desired, list) and key in _KEYED_LISTS:
        if not isinstance(live, list):
            return False
        by_name = {item.get("name"): item for item in live if isinstance(item, dict)}
        return all(
            item["name"] in by_name and _covers(item, by_name[item["name"]], (*path, item["name"]), owned)
            for item in desired
        )
    if isinstance(desired, list):
        # Item by item, so that fields the apiserver defaults inside items (a rule's scope) are not drift.
        return (
            isinstance(live, list)
            and len(desired) == len(live)
            and all(
                _covers(d, lv, (*path, str(i)), owned)
                for i, (d, lv) in enumerate(zip(desired, live, strict=True))
            )
        )
    return bool(desired == live)


def _narrows(desired: dict[str, Any], live: Any) -> bool:
    """``live`` selects a subset of what ``desired`` selects: all our terms, perhaps more."""
    if not isinstance(live, dict):
        return False
    labels = live.get("matchLabels") or {}
    expressions = live.get("matchExpressions") or []
    return all(labels.get(k) == v for k, v in (desired.get("matchLabels") or {}).items()) and all(
        e in expressions for e in desired.get("matchExpressions") or []
    )


def desired_paths(obj: dict[str, Any], prefix: Path = ()) -> Iterator[Path]:
    """The leaf field paths of an object we apply, in the shape of ``owned_paths``."""
    for key, value in obj.items():
        path = (*prefix, key)
        if isinstance(value, dict) and value:
            yield from desired_paths(value, path)
        elif isinstance(value, list) and key in _KEYED_LISTS:
            for item in value:
                yield from desired_paths(item, (*path, item["name"]))
        else:
            yield path


def owned_paths(live: dict[str, Any], manager: str) -> Iterator[Path]:
    """The leaf field paths ``manager`` owns by apply, from the live object's managedFields."""
    for entry in live.get("metadata", {}).get("managedFields") or []:
        if entry.get("manager") == manager and entry.get("operation") == "Apply":
            yield from _field_set_paths(entry.get("fieldsV1") or {}, ())


def _field_set_paths(fields: dict[str, Any], prefix: Path) -> Iterator[Path]:
    children = {k: v for k, v in fields.items() if k != "."}
    if not children:
        if prefix:
            yield prefix
        return
    for key, value in children.items():
        kind, _, rest = key.partition(":")
        if kind == "f":
            yield from _field_set_paths(value, (*prefix, rest))
        elif kind == "k":
            yield from _field_set_paths(value, (*prefix, str(json.loads(rest).get("name"))))
        else:  # "v:" items of a set: the set itself is the leaf we own
            yield prefix
            return


def _is_prefix_of_any(path: Path, wanted: set[Path]) -> bool:
    return path in wanted or any(w[: len(path)] == path for w in wanted)
