"""/validate-rawselinuxprofile: refuse raw CIL policies that could act outside their own block.

The node agent installs a raw policy wrapped in `(block <name> ...)`. An unmatched `)` would close that
block and let the rest of the policy change global state (make `spc_t` permissive, relabel files...), and
the global directives below do so even from inside a block. The one exception is inheriting a system
template the cluster admin allows in the spod, which is how raw policies are meant to start.

The scanner follows the CIL lexer: `;` starts a comment to the end of the line and `"..."` (no newline)
is a string, so parentheses in either do not count. Anything it cannot tokenize the way CIL would
(an unterminated string) is refused rather than guessed.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from pydantic import ValidationError

from api.types import RawSelinuxProfile
from webhooks.decisions.decision import STATUS_BAD_REQUEST, Decision, deny
from webhooks.decisions.pods import OP_CREATE, OP_UPDATE, admission_kind, json_type
from webhooks.snapshot import Snapshot

# Inventory §2.7's list, plus `in`, which would add statements to another block (e.g. `container`).
RESTRICTED_DIRECTIVES: Final = frozenset(
    {
        "in",
        "block",
        "blockinherit",
        "blockstart",
        "booleanif",
        "category",
        "categoryorder",
        "class",
        "classmap",
        "classmapping",
        "classorder",
        "context",
        "dominance",
        "filecon",
        "genfscon",
        "level",
        "levelrange",
        "mls",
        "netifcon",
        "nodecon",
        "optional",
        "policycap",
        "portcon",
        "role",
        "roletype",
        "sensitivity",
        "sensitivityorder",
        "sid",
        "sidcontext",
        "sidorder",
        "tunable",
        "tunableif",
        "typepermissive",
        "user",
        "userrole",
    }
)
BLOCKINHERIT: Final = "blockinherit"
DEFAULT_ALLOWED_TEMPLATES: Final = ("container",)

_TOKENS = re.compile(
    r"""
      (?P<newline>\n)
    | (?P<space>[^\S\n]+)
    | (?P<comment>;[^\n]*)
    | (?P<open>\()
    | (?P<close>\))
    | (?P<string>"[^"\n]*")
    | (?P<unterminated>")
    | (?P<symbol>[^\s();"]+)
    """,
    re.VERBOSE,
)
# As upstream: the directive is the leading run of these characters, compared case-insensitively.
_DIRECTIVE = re.compile(r"[A-Za-z0-9_-]+")


@dataclass(frozen=True)
class _Token:
    kind: str
    text: str
    line: int


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
    """Why the raw CIL policy must be refused, or None if it stays inside its block."""
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
        tokens = list(_tokenize(policy))
    except _UnterminatedStringError as error:
        return f"invalid policy: unterminated string on line {error.line}"
    depth = 0
    for index, token in enumerate(tokens):
        if token.kind == "close":
            if depth == 0:
                return (
                    "invalid policy: unmatched closing parenthesis ')' allows block escape "
                    f"(line {token.line})"
                )
            depth -= 1
        elif token.kind == "open":
            directive = _directive(tokens[index + 1 : index + 2])
            if directive in RESTRICTED_DIRECTIVES and not (
                depth == 0 and _is_allowed_inherit(tokens[index : index + 4], allowed_templates)
            ):
                return (
                    f"invalid policy: use of restricted global directive '{directive}' is not allowed "
                    f"(line {token.line}; the only exception is ({BLOCKINHERIT} <template>) at the top "
                    f"level with a template from the spod's allowedSystemProfiles: "
                    f"{', '.join(sorted(allowed_templates)) or 'none'})"
                )
            depth += 1
    if depth:
        return f"invalid policy: unbalanced parentheses ({depth} left open)"
    return None


class _UnterminatedStringError(ValueError):
    def __init__(self, line: int) -> None:
        super().__init__(line)
        self.line = line


def _tokenize(policy: str) -> Iterator[_Token]:
    line = 1
    for match in _TOKENS.finditer(policy):
        kind = match.lastgroup or ""
        if kind == "newline":
            line += 1
        elif kind == "unterminated":
            raise _UnterminatedStringError(line)
        elif kind not in ("space", "comment"):
            yield _Token(kind, match.group(), line)


def _directive(following: Sequence[_Token]) -> str:
    # CIL strips the quotes of a string, so ("typepermissive" x) is as dangerous as the bare keyword.
    if not following or following[0].kind not in ("symbol", "string"):
        return ""
    match = _DIRECTIVE.match(following[0].text.strip('"'))
    return match.group().lower() if match else ""


def _is_allowed_inherit(statement: Sequence[_Token], allowed_templates: Collection[str]) -> bool:
    kinds = [token.kind for token in statement]
    return (
        kinds == ["open", "symbol", "symbol", "close"]
        and statement[1].text == BLOCKINHERIT
        and statement[2].text in allowed_templates
    )


def _allowed_templates(snapshot: Snapshot) -> Collection[str]:
    spod = snapshot.spod()
    options = spod.spec.selinux_options if spod is not None else None
    return options.allowed_system_profiles if options is not None else DEFAULT_ALLOWED_TEMPLATES


def _describe(error: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(part) for part in detail['loc']) or 'object'}: {detail['msg']}"
        for detail in error.errors(include_url=False)
    )
