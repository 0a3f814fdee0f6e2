"""CustomResourceDefinitions generated from the pydantic models in api.types.

A model's JSON schema (draft 2020-12, with `$defs`, `$ref` and `anyOf: [X, null]` for optional fields) is
rewritten into the *structural* OpenAPI v3 subset the apiserver requires: references inlined, optionals
collapsed, titles dropped, open maps marked `x-kubernetes-preserve-unknown-fields`. Any keyword without a
faithful structural equivalent raises SchemaConversionError, and every result is checked with
is_structural(), so a model change can never silently produce a CRD the apiserver rejects or prunes wrongly.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from api import constants
from api.kinds import ALL_KINDS, ResourceKind

CRD_API_VERSION: Final = "apiextensions.k8s.io/v1"

# Keywords that mean the same in JSON Schema 2020-12 and in the apiserver's OpenAPI v3 subset.
_KEPT_KEYWORDS: Final = frozenset(
    {
        "description",
        "enum",
        "pattern",
        "minimum",
        "maximum",
        "minLength",
        "maxLength",
        "minItems",
        "maxItems",
        "minProperties",
        "maxProperties",
        "default",
        "required",
    }
)
_TYPES: Final = frozenset({"object", "array", "string", "integer", "number", "boolean"})
_NULL_BRANCH: Final = {"type": "null"}
_PRESERVE: Final = "x-kubernetes-preserve-unknown-fields"
_INT_OR_STRING: Final = "x-kubernetes-int-or-string"
_VALIDATIONS: Final = "x-kubernetes-validations"
# The apiserver always sets these itself; requiring them in the schema would only duplicate its checks.
_TYPE_META_AND_METADATA: Final = ("apiVersion", "kind", "metadata")
_DEF_PREFIX: Final = "#/$defs/"


class SchemaConversionError(ValueError):
    """A model's JSON schema uses a construct that has no structural OpenAPI equivalent."""


# --- CRDs -----------------------------------------------------------------------------------------------


def crd(kind: ResourceKind) -> dict[str, Any]:
    names: dict[str, Any] = {
        "kind": kind.kind,
        "listKind": f"{kind.kind}List",
        "plural": kind.plural,
        "singular": kind.singular,
    }
    if kind.short_names:
        names["shortNames"] = list(kind.short_names)
    if kind.categories:
        names["categories"] = list(kind.categories)
    version: dict[str, Any] = {
        "name": kind.version,
        "served": True,
        "storage": True,
        "schema": {"openAPIV3Schema": openapi_schema(kind)},
    }
    if kind.status_subresource:
        version["subresources"] = {"status": {}}
    if kind.columns:
        version["additionalPrinterColumns"] = [column.to_crd() for column in kind.columns]
    return {
        "apiVersion": CRD_API_VERSION,
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": kind.crd_name,
            "labels": {constants.LABEL_APP: constants.APP_LABEL_VALUE},
        },
        "spec": {
            "group": kind.group,
            "names": names,
            "scope": "Namespaced" if kind.namespaced else "Cluster",
            "versions": [version],
        },
    }


def all_crds() -> list[dict[str, Any]]:
    return [crd(kind) for kind in ALL_KINDS]


def openapi_schema(kind: ResourceKind) -> dict[str, Any]:
    """The structural `openAPIV3Schema` of one kind; raises SchemaConversionError if there is none."""
    schema = kind.model.model_json_schema(by_alias=True, mode="validation")
    defs: dict[str, Any] = schema.pop("$defs", {})
    root = _convert(schema, defs, kind.kind, ())
    # Only name and generateName may be constrained at the root; the apiserver validates the rest.
    root["properties"]["metadata"] = {"type": "object"}
    if kind.model.NAME_SCHEMA is not None:
        root["properties"]["metadata"]["properties"] = {"name": dict(kind.model.NAME_SCHEMA)}
    required = [name for name in root.pop("required", []) if name not in _TYPE_META_AND_METADATA]
    if required:
        root["required"] = required
    problems = is_structural(root)
    if problems:
        raise SchemaConversionError(f"{kind.kind}: schema is not structural: " + "; ".join(problems))
    return root


# --- JSON schema -> structural OpenAPI ------------------------------------------------------------------


def _convert(
    node: Mapping[str, Any], defs: Mapping[str, Any], path: str, seen: tuple[str, ...]
) -> dict[str, Any]:
    """Convert one schema node; `seen` holds the $defs being expanded above it, to refuse recursion."""
    node, seen = _inline(node, defs, path, seen)
    out: dict[str, Any] = {}
    extra_rules: list[dict[str, str]] = []
    for key, value in node.items():
        if key == "title" or (key == "default" and value is None):
            continue
        if key == "type":
            if not isinstance(value, str) or value not in _TYPES:
                raise SchemaConversionError(f"{path}: type {value!r} has no structural equivalent")
            out["type"] = value
        elif key == "properties":
            out["properties"] = {
                name: _convert(sub, defs, f"{path}.{name}", seen) for name, sub in value.items()
            }
        elif key == "items":
            if not isinstance(value, Mapping):
                raise SchemaConversionError(f"{path}: tuple-typed items have no structural equivalent")
            out["items"] = _convert(value, defs, f"{path}[]", seen)
        elif key == "additionalProperties":
            _convert_additional_properties(value, out, defs, path, seen)
        elif key == "patternProperties":
            out["additionalProperties"], rule = _convert_pattern_properties(value, node, defs, path, seen)
            extra_rules.append(rule)
        elif key in _KEPT_KEYWORDS or key.startswith("x-kubernetes-"):
            out[key] = value
        else:
            raise SchemaConversionError(f"{path}: JSON-schema keyword {key!r} has no structural equivalent")
    if extra_rules:
        out[_VALIDATIONS] = [*out.get(_VALIDATIONS, []), *extra_rules]
    return out


def _inline(
    node: Mapping[str, Any], defs: Mapping[str, Any], path: str, seen: tuple[str, ...]
) -> tuple[dict[str, Any], tuple[str, ...]]:
    """Replace `$ref` by its definition and `anyOf: [X, null]` by X, keeping the keywords beside them.

    Those sibling keywords (default, description, x-kubernetes-* from Field(json_schema_extra=...)) describe
    the field, so they win over the referenced definition's own; CEL rules of both apply.
    """
    rest = dict(node)
    if "$ref" in rest:
        ref = rest.pop("$ref")
        name = ref.removeprefix(_DEF_PREFIX)
        if not ref.startswith(_DEF_PREFIX) or name not in defs:
            raise SchemaConversionError(f"{path}: unresolvable reference {ref!r}")
        if name in seen:
            raise SchemaConversionError(f"{path}: recursive model {name} cannot be a structural schema")
        target, seen = _inline(defs[name], defs, path, (*seen, name))
        return _overlay(target, rest), seen
    if "anyOf" in rest:
        branches = rest.pop("anyOf")
        non_null = [branch for branch in branches if branch != _NULL_BRANCH]
        if len(non_null) != 1 or len(branches) != 2:
            raise SchemaConversionError(
                f"{path}: union {branches!r} has no structural equivalent (only `X | None` does)"
            )
        target, seen = _inline(non_null[0], defs, path, seen)
        return _overlay(target, rest), seen
    return rest, seen


def _overlay(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    merged = {**base, **extra}
    if _VALIDATIONS in base and _VALIDATIONS in extra:
        merged[_VALIDATIONS] = [*base[_VALIDATIONS], *extra[_VALIDATIONS]]
    return merged


def _convert_additional_properties(
    value: Any, out: dict[str, Any], defs: Mapping[str, Any], path: str, seen: tuple[str, ...]
) -> None:
    if value is False:
        # extra="forbid": the apiserver prunes unknown fields instead of rejecting them.
        return
    if value is True:
        out[_PRESERVE] = True
        return
    out["additionalProperties"] = _convert(value, defs, f"{path}[*]", seen)


def _convert_pattern_properties(
    value: Mapping[str, Any],
    node: Mapping[str, Any],
    defs: Mapping[str, Any],
    path: str,
    seen: tuple[str, ...],
) -> tuple[dict[str, Any], dict[str, str]]:
    """A map with constrained keys (dict[Annotated[str, pattern], V]): V for every value, a CEL rule on keys.

    Structural schemas have no patternProperties, and their patterns never apply to map keys.
    """
    if len(value) != 1 or "additionalProperties" in node:
        raise SchemaConversionError(f"{path}: only a single patternProperties entry can be converted")
    ((pattern, value_schema),) = value.items()
    if "'" in pattern or "\n" in pattern:
        raise SchemaConversionError(f"{path}: key pattern {pattern!r} cannot be quoted as a CEL raw string")
    rule = {"rule": f"self.all(k, k.matches(r'{pattern}'))", "message": f"keys must match {pattern}"}
    return _convert(value_schema, defs, f"{path}[*]", seen), rule


# --- structural-schema checker ----------------------------------------------------------------------------

# Keywords the apiserver refuses in any CRD schema.
_UNSUPPORTED: Final = (
    "$ref",
    "$defs",
    "definitions",
    "patternProperties",
    "dependencies",
    "additionalItems",
    "id",
)
_JUNCTORS: Final = ("allOf", "anyOf", "oneOf")
# Inside a junctor only value validations may appear: anything that would change the shape, the defaulting
# or the pruning of a value must be stated in the structural part of the schema.
_FORBIDDEN_IN_JUNCTORS: Final = (
    "type",
    "description",
    "title",
    "default",
    "additionalProperties",
    "nullable",
)
_METADATA_ALLOWED: Final = frozenset({"name", "generateName"})
_INT_OR_STRING_ANY_OF: Final = [{"type": "integer"}, {"type": "string"}]


def is_structural(schema: Mapping[str, Any]) -> list[str]:
    """The problems that make a CRD's openAPIV3Schema non-structural (empty list: structural).

    Follows the apiserver's rules: every specified node has a type (unless it is int-or-string or preserves
    unknown fields), no $ref or other unsupported keywords, `properties` and `additionalProperties` are
    exclusive, logical junctors carry only value validations about fields also specified outside them,
    metadata at the root only constrains name and generateName, `items` is one schema.
    """
    problems: list[str] = []
    _check_structural(schema, "", problems, root=True)
    if schema.get("type") != "object":
        problems.append(".type: must be object at the root")
    if schema.get("nullable"):
        problems.append(".nullable: must not be true at the root")
    if "additionalProperties" in schema:
        problems.append(".additionalProperties: must not be used at the root")
    properties = schema.get("properties", {})
    for name in ("apiVersion", "kind"):
        if name in properties and properties[name].get("type") != "string":
            problems.append(f".properties.{name}.type: must be string")
    if "metadata" in properties:
        problems.extend(_check_root_metadata(properties["metadata"]))
    return problems


def _check_structural(node: Any, path: str, problems: list[str], *, root: bool = False) -> None:
    if not isinstance(node, Mapping):
        problems.append(f"{path}: must be a schema object")
        return
    _check_keywords(node, path, problems)
    schema_type = node.get("type")
    if not schema_type and not node.get(_INT_OR_STRING) and not node.get(_PRESERVE) and not root:
        problems.append(f"{path}.type: must not be empty")
    if node.get(_INT_OR_STRING) and node.get(_PRESERVE):
        problems.append(f"{path}.{_PRESERVE}: must be false if {_INT_OR_STRING} is true")
    if node.get("x-kubernetes-embedded-resource") and schema_type != "object":
        problems.append(f"{path}.type: must be object if x-kubernetes-embedded-resource is true")
    _check_collections(node, path, problems)
    for name, sub in node.get("properties", {}).items():
        _check_structural(sub, f"{path}.properties.{name}", problems)
    additional = node.get("additionalProperties")
    if isinstance(additional, Mapping):
        _check_structural(additional, f"{path}.additionalProperties", problems)
    items = node.get("items")
    if isinstance(items, Mapping):
        _check_structural(items, f"{path}.items", problems)
    _check_junctors(node, node, path, problems)


def _check_keywords(node: Mapping[str, Any], path: str, problems: list[str]) -> None:
    for keyword in _UNSUPPORTED:
        if keyword in node:
            problems.append(f"{path}.{keyword}: is not supported")
    schema_type = node.get("type")
    if schema_type is not None and schema_type not in _TYPES:
        problems.append(f"{path}.type: {schema_type!r} is not one of {sorted(_TYPES)}")
    if node.get("uniqueItems"):
        problems.append(f"{path}.uniqueItems: must not be true")
    if _PRESERVE in node and node[_PRESERVE] is not True:
        problems.append(f"{path}.{_PRESERVE}: must be true or absent")
    for index, rule in enumerate(node.get(_VALIDATIONS, [])):
        if not isinstance(rule, Mapping) or not rule.get("rule"):
            problems.append(f"{path}.{_VALIDATIONS}[{index}].rule: must be specified")


def _check_collections(node: Mapping[str, Any], path: str, problems: list[str]) -> None:
    schema_type = node.get("type")
    items = node.get("items")
    if items is not None and not isinstance(items, Mapping):
        problems.append(f"{path}.items: must be a single schema, not a list")
    if schema_type == "array" and items is None:
        problems.append(f"{path}.items: must be specified for an array")
    additional = node.get("additionalProperties")
    if node.get("properties") and additional is not None and additional is not True:
        problems.append(f"{path}.additionalProperties: properties and additionalProperties are exclusive")
    list_type = node.get("x-kubernetes-list-type")
    if list_type is not None:
        if schema_type != "array":
            problems.append(f"{path}.type: must be array if x-kubernetes-list-type is specified")
        if list_type not in ("atomic", "set", "map"):
            problems.append(f"{path}.x-kubernetes-list-type: {list_type!r} is not atomic, set or map")
        if list_type == "map" and not node.get("x-kubernetes-list-map-keys"):
            problems.append(f"{path}.x-kubernetes-list-map-keys: must not be empty for a map list")
        if list_type == "set" and isinstance(items, Mapping) and items.get("type") in ("object", "array"):
            problems.append(f"{path}.items.type: items of a set list must be scalars")
    if "x-kubernetes-map-type" in node and schema_type != "object":
        problems.append(f"{path}.type: must be object if x-kubernetes-map-type is specified")


def _check_junctors(
    node: Mapping[str, Any], structural: Mapping[str, Any], path: str, problems: list[str]
) -> None:
    """Check the logical junctors of `node` against `structural`, the part of the schema they apply to."""
    for junctor in _JUNCTORS:
        branches = node.get(junctor, [])
        if junctor == "anyOf" and branches == _INT_OR_STRING_ANY_OF and structural.get(_INT_OR_STRING):
            continue
        for index, branch in enumerate(branches):
            _check_nested(branch, structural, f"{path}.{junctor}[{index}]", problems)
    if "not" in node:
        _check_nested(node["not"], structural, f"{path}.not", problems)


def _check_nested(
    node: Mapping[str, Any], structural: Mapping[str, Any] | None, path: str, problems: list[str]
) -> None:
    """A schema inside a junctor: only value validations, each about a field specified structurally."""
    if structural is None:
        problems.append(f"{path}: specifies a value that is not specified outside the junctor")
        return
    _check_keywords(node, path, problems)
    for keyword in _FORBIDDEN_IN_JUNCTORS:
        if keyword in node:
            problems.append(f"{path}.{keyword}: must not be used inside a logical junctor")
    for keyword in node:
        if keyword.startswith("x-kubernetes-"):
            problems.append(f"{path}.{keyword}: must not be used inside a logical junctor")
    properties = structural.get("properties", {})
    for name, sub in node.get("properties", {}).items():
        if name == "metadata":
            problems.append(f"{path}.properties.metadata: must not be specified inside a logical junctor")
        _check_nested(sub, properties.get(name), f"{path}.properties.{name}", problems)
    if "items" in node:
        _check_nested(node["items"], structural.get("items"), f"{path}.items", problems)
    _check_junctors(node, structural, path, problems)


def _check_root_metadata(metadata: Mapping[str, Any]) -> list[str]:
    specified = set(metadata) - {"type", "properties"}
    problems = [f".properties.metadata.{keyword}: must not be specified" for keyword in sorted(specified)]
    if metadata.get("type", "object") != "object":
        problems.append(".properties.metadata.type: must be object")
    for name in sorted(set(metadata.get("properties", {})) - _METADATA_ALLOWED):
        problems.append(
            f".properties.metadata.properties.{name}: only name and generateName may be restricted"
        )
    return problems
