"""/validate-rawselinuxprofile: a raw CIL policy may only grant permissions to its own domain.

The node agent installs a raw policy inside `(block <name> ...)`. Inside a block, CIL still lets a
statement name global types, attributes, roles and users, or reach into other blocks (`in`, macros,
`blockabstract`), so upstream's list of forbidden directives let through e.g.
`(typetransition .init_t .bin_t process .spc_t)` and `(typeattributeset .domain (process))`. This is an
allow-list instead: the statements the docs' examples, upstream's raw example and the udica container
templates use, in the shapes that keep them inside the block.

- `(blockinherit <template>)`, with a template the spod's `allowedSystemProfiles` names;
- `(type <name>)`, a new type of this block;
- `(allow <own> <target> (<class> (<permission> ...)))`, where `<own>` is the block's domain `process`
  (declared by the inherited template) or a type the policy declares; the target may be any type,
  except that a domain transition (`process` `transition`/`dyntransition`) may only go to an own type:
  a permission to enter `spc_t` is a way out of the block as much as a `typetransition` is;
- `(typepermissive <own>)`, what SelinuxProfile's `permissive: true` (docs 7.7.2.1) produces.

Anything else is refused with the statement quoted. So are quoted strings, which secilc reads as
symbols (`("typepermissive" x)` is `(typepermissive x)`) and which none of these statements needs.
The text is read by `api.cil`, which tokenizes exactly as secilc does.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping, Sequence
from typing import Any, Final

from pydantic import ValidationError

from api import cil
from api.constants import SELINUX_TYPE_SUFFIX
from api.types import RawSelinuxProfile, SelinuxOptions
from webhooks.decisions.decision import STATUS_BAD_REQUEST, Decision, deny
from webhooks.decisions.pods import OP_CREATE, OP_UPDATE, admission_kind, json_type
from webhooks.snapshot import Snapshot

# The domain a profile's block defines: its usage is `<block>.process` (docs 7.7.2 step 3).
PROCESS_TYPE: Final = SELINUX_TYPE_SUFFIX.removeprefix(".")
ALLOWED_STATEMENTS: Final = (
    "A raw policy may only use (blockinherit <allowed template>), (type <name>), "
    "(allow <own type> <target type> (<class> (<permission> ...))) and (typepermissive <own type>), "
    f"where an own type is {PROCESS_TYPE} (from the inherited template) or a type the policy declares"
)
# What CIL accepts as a declared name: a letter, then letters, digits, '_' and '-' (no '.', no '/').
_DECLARED_NAME: Final = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")
_QUOTE_LIMIT: Final = 160
_PROCESS_CLASS: Final = "process"
_SELF: Final = "self"
_DOMAIN_TRANSITIONS: Final = frozenset({"transition", "dyntransition"})


def decide_raw_selinux(request: Mapping[str, Any], snapshot: Snapshot) -> Decision:
    operation = request.get("operation")
    if admission_kind(request) != RawSelinuxProfile.KIND or operation not in (OP_CREATE, OP_UPDATE):
        return Decision(message="not a RawSelinuxProfile creation or update")
    profile = request.get("object")
    if not isinstance(profile, dict):
        return deny(f"request.object must be an object, got {json_type(profile)}", code=STATUS_BAD_REQUEST)
    spec = profile.get("spec")
    old = request.get("oldObject")
    if operation == OP_UPDATE and isinstance(old, dict) and old.get("spec") == spec:
        # Ratcheting: a policy admitted before these rules existed must still get its finalizers and
        # labels updated, or it could never be deleted.
        return Decision(message="policy unchanged")
    if isinstance(spec, dict) and "policy" in spec:
        problem = policy_problem(spec["policy"], _allowed_templates(snapshot))
        if problem is not None:
            return deny(problem)
    try:
        RawSelinuxProfile.model_validate(profile)
    except ValidationError as error:
        return deny(f"invalid RawSelinuxProfile: {_describe(error)}", code=STATUS_BAD_REQUEST)
    return Decision(message="policy accepted")


def policy_problem(policy: object, allowed_templates: Collection[str]) -> str | None:
    """Why the raw CIL policy must be refused, or None if it only grants permissions to its own domain."""
    if not isinstance(policy, str):
        return f"policy must be a string, got {json_type(policy)}"
    if not policy.strip():
        return "policy must not be empty"
    if "\x00" in policy:
        return "policy must not contain null bytes"
    try:
        policy.encode()
    except UnicodeEncodeError:
        # JSON can carry lone surrogates (\ud800), which are not UTF-8 and not CIL.
        return "policy must be valid UTF-8"
    try:
        statements = cil.parse(policy)
    except cil.CilSyntaxError as error:
        escape = " allows block escape" if error.problem.startswith("unmatched closing") else ""
        return f"invalid policy: {error.problem}{escape} (line {error.line})"
    own = _own_types(statements)
    for statement in statements:
        problem = _statement_problem(statement, own, allowed_templates)
        if problem is not None:
            return (
                f"invalid policy: {_quote(policy, statement)} (line {statement.line}) is not allowed: "
                f"{problem}. {ALLOWED_STATEMENTS}"
            )
    return None


def _own_types(statements: Sequence[cil.Node]) -> frozenset[str]:
    """The types this policy declares, plus the templates' `process` if it inherits one."""
    own: set[str] = set()
    for statement in statements:
        keyword = _keyword(statement)
        if keyword == cil.BLOCKINHERIT:
            own.add(PROCESS_TYPE)
        elif keyword == cil.TYPE and isinstance(statement, cil.Expr) and len(statement.items) == 2:
            name = _symbol(statement.items[1])
            if name is not None:
                own.add(name)
    return frozenset(own)


def _statement_problem(
    statement: cil.Node, own: Collection[str], allowed_templates: Collection[str]
) -> str | None:
    if not isinstance(statement, cil.Expr):
        return "a policy is a list of statements in parentheses"
    quoted = _first_string(statement)
    if quoted is not None:
        return f"quoted strings such as {_shorten(quoted.text)} are not allowed (secilc reads them as names)"
    keyword, arguments = _keyword(statement), statement.items[1:]
    if keyword == cil.BLOCKINHERIT:
        template = _symbol(arguments[0]) if len(arguments) == 1 else None
        if template not in allowed_templates:
            return (
                "only a template from the spod's allowedSystemProfiles can be inherited: "
                f"{', '.join(sorted(allowed_templates)) or 'none'}"
            )
        return None
    if keyword == cil.TYPE:
        name = _symbol(arguments[0]) if len(arguments) == 1 else None
        if name is None or not _DECLARED_NAME.fullmatch(name):
            return "a type is declared as (type <name>), the name a letter then letters, digits, '_' or '-'"
        return None
    if keyword == cil.TYPEPERMISSIVE:
        if len(arguments) != 1:
            return "the form is (typepermissive <own type>)"
        return _own_problem(arguments[0], own)
    if keyword == cil.ALLOW:
        if len(arguments) != 3 or _symbol(arguments[1]) is None or not _is_class_permissions(arguments[2]):
            return "the form is (allow <own type> <target type> (<class> (<permission> ...)))"
        if _transitions(arguments[2]) and _symbol(arguments[1]) not in {*own, _SELF}:
            return "a domain may only transition to a type of this profile (process transition)"
        return _own_problem(arguments[0], own)
    if keyword is None:
        return "a statement starts with its keyword"
    return f"'{keyword}' is not a statement a raw policy may use"


def _own_problem(node: cil.Node, own: Collection[str]) -> str | None:
    name = _symbol(node)
    if name in own:
        return None
    owned = ", ".join(sorted(own)) or "none"
    return (
        f"{'a list' if name is None else repr(name)} is not this profile's own type ({owned}): "
        "a raw policy may only grant permissions to its own domain"
    )


def _is_class_permissions(node: cil.Node) -> bool:
    if not isinstance(node, cil.Expr) or len(node.items) != 2 or _symbol(node.items[0]) is None:
        return False
    permissions = node.items[1]
    return (
        isinstance(permissions, cil.Expr)
        and bool(permissions.items)
        and all(_symbol(permission) is not None for permission in permissions.items)
    )


def _transitions(class_permissions: cil.Node) -> bool:
    """Whether an allow rule's `(<class> (<permission> ...))` grants a domain transition."""
    if not isinstance(class_permissions, cil.Expr) or len(class_permissions.items) != 2:
        return False
    klass, permissions = class_permissions.items
    if _symbol(klass) != _PROCESS_CLASS or not isinstance(permissions, cil.Expr):
        return False
    return not _DOMAIN_TRANSITIONS.isdisjoint(_symbol(permission) for permission in permissions.items)


def _keyword(statement: cil.Node) -> str | None:
    if isinstance(statement, cil.Expr) and statement.items:
        return _symbol(statement.items[0])
    return None


def _symbol(node: cil.Node) -> str | None:
    return node.text if isinstance(node, cil.Atom) and not node.quoted else None


def _first_string(statement: cil.Expr) -> cil.Atom | None:
    # Iterative: statements may nest up to cil.MAX_DEPTH, beyond Python's recursion limit.
    pending: list[cil.Node] = [statement]
    while pending:
        node = pending.pop()
        if isinstance(node, cil.Expr):
            pending.extend(reversed(node.items))
        elif node.quoted:
            return node
    return None


def _quote(policy: str, statement: cil.Node) -> str:
    return _shorten(
        policy[statement.start : statement.end] if isinstance(statement, cil.Expr) else statement.text
    )


def _shorten(text: str) -> str:
    """`text` on one line, cut to a length a message can carry, quoted."""
    text = " ".join(text.split())
    return repr(text if len(text) <= _QUOTE_LIMIT else text[: _QUOTE_LIMIT - 3] + "...")


def _allowed_templates(snapshot: Snapshot) -> Collection[str]:
    spod = snapshot.spod()
    options = spod.spec.selinux_options if spod is not None else None
    return (options or SelinuxOptions()).allowed_system_profiles


def _describe(error: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(part) for part in detail['loc']) or 'object'}: {detail['msg']}"
        for detail in error.errors(include_url=False)
    )
