"""SelinuxProfile and RawSelinuxProfile -> the CIL module a node installs (pure; no files, no tools).

The SelinuxProfile shape is upstream's obj2cil (inventory §4.7), which reproduces docs 7.7.1 byte for
byte. Where we differ from upstream, and why:

- `(blockinherit container)` is left out when another inherited template already inherits `container`
  (udica's `net_container` does): CIL refuses the second copy ("Re-declaration of type process"), so
  upstream's shape for `inherit: [net_container]` never loads with these templates.
- Every identifier is checked with a full match before it is written, and a profile name must also be a
  CIL block name (no '.'), so no name can close the block or add a statement.
- A SelinuxProfile inheriting another is checked transitively: a missing ancestor or a cycle is a
  validation error naming the chain, not a policy the node fails to load.
- RawSelinuxProfile: the block is `<name>`, so the type it defines is `<name>.process`, which is what
  `status.usage` says (upstream's `<name>_` block defines `<name>_.process`, Appendix A D9). The policy
  is checked again with the admission webhook's allow-list: an object stored while the webhook was
  down or before it was registered must not reach a node unchecked.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from api import cil, constants, validation
from api.types import (
    RawSelinuxProfile,
    SecurityProfilesOperatorDaemon,
    SelinuxOptions,
    SelinuxProfile,
    selinux_usage,
)
from webhooks.decisions.raw_selinux import policy_problem

# The block every container policy builds on: it declares the `process` domain (udica's base_container.cil).
CONTAINER_TEMPLATE: Final = constants.SELINUX_CONTAINER_TEMPLATE
KIND_SYSTEM: Final = "System"
KIND_SELINUX_PROFILE: Final = SelinuxProfile.KIND
PERMISSIVE_LINE: Final = f"({cil.TYPEPERMISSIVE} process)\n"
# Raw policies are indented inside their block as upstream writes them.
RAW_INDENT: Final = "    "
# How deep SelinuxProfiles may inherit from each other; deeper chains are almost surely a mistake.
MAX_INHERIT_DEPTH: Final = 16


@dataclass(frozen=True)
class DenyList:
    """Types, classes and permissions whose grant would hand a container control of the host
    (upstream's built-in list at HEAD, inventory §4.7)."""

    types: frozenset[str] = frozenset({"kernel_t", "kmem_t", "security_t", "shadow_t"})
    classes: frozenset[str] = frozenset({"capability", "capability2", "security", "system"})
    permissions: frozenset[str] = frozenset(
        {
            "load_policy",
            "mac_admin",
            "mounton",
            "relabelto",
            "relabelfrom",
            "setbool",
            "setenforce",
            "setsecparam",
        }
    )


DEFAULT_DENY_LIST: Final = DenyList()


class PolicyError(ValueError):
    """A profile that must not be installed; the message says which field and why."""


@dataclass(frozen=True)
class Policy:
    """A CIL module: `text` is installed as module `name` from `<name>.cil`.

    `templates` are the system templates it needs (transitively, through ancestors too) and `ancestors`
    the SelinuxProfile modules it inherits, each after its own ancestors: the order to compile them in.
    """

    name: str
    text: str
    templates: tuple[str, ...] = ()
    ancestors: tuple[str, ...] = ()


def allowed_system_profiles(spod: SecurityProfilesOperatorDaemon | None) -> list[str]:
    """The system templates profiles may inherit: the spod's list, `container` when it says nothing."""
    options = spod.spec.selinux_options if spod is not None else None
    return (options or SelinuxOptions()).allowed_system_profiles


def policy_name(name: str | None) -> str:
    """The profile name as module, file and block name: a profile name CIL accepts as a block name."""
    if name is None:
        raise PolicyError("the profile has no name")
    try:
        validation.profile_name(name)
    except ValueError as error:
        raise PolicyError(str(error)) from None
    if "." in name:
        # CIL reads '.' as a path into a block ("Invalid character \".\""), so the block cannot be declared.
        raise PolicyError(f"profile name {name!r} contains '.', which a CIL block name cannot contain")
    return name


def selinux_profile_policy(
    profile: SelinuxProfile,
    allowed_system_profiles: Collection[str],
    profiles: Mapping[str, SelinuxProfile],
    template_inherits: Mapping[str, Collection[str]] | None = None,
    deny: DenyList = DEFAULT_DENY_LIST,
) -> Policy:
    """The module of `profile`, or PolicyError.

    `profiles` are the SelinuxProfiles that exist (by name), `template_inherits` what each system template
    itself inherits (from the template files, when the node has them).
    """
    name = policy_name(profile.metadata.name)
    system, ancestors = _inherits(name, profile, allowed_system_profiles, profiles)
    parents = template_inherits or {}
    lines = [f"(block {name}\n"]
    # A SelinuxProfile ancestor or another template already brings `container` in; a second copy is an error.
    if not ancestors and not any(CONTAINER_TEMPLATE in parents.get(template, ()) for template in system):
        lines.append(_inherit_line(CONTAINER_TEMPLATE))
    lines += [_inherit_line(template) for template in system if template != CONTAINER_TEMPLATE]
    lines += [_inherit_line(parent) for parent in _profile_parents(profile)]
    if profile.spec.permissive:
        lines.append(PERMISSIVE_LINE)
    lines += _allow_lines(name, profile, deny)
    lines.append(")\n")
    templates = _all_templates(profile, profiles, ancestors)
    return Policy(name, "".join(lines), templates, ancestors)


def raw_selinux_profile_policy(
    profile: RawSelinuxProfile, allowed_system_profiles: Collection[str]
) -> Policy:
    """The module of a raw profile: its policy inside `(block <name>`, or PolicyError."""
    name = policy_name(profile.metadata.name)
    problem = policy_problem(profile.spec.policy, allowed_system_profiles)
    if problem is not None:
        raise PolicyError(problem)
    body = profile.spec.policy.strip().replace("\n", "\n" + RAW_INDENT)
    templates = (CONTAINER_TEMPLATE, *block_inherits(cil.parse(profile.spec.policy)))
    return Policy(name, f"(block {name}\n{RAW_INDENT}{body}\n)\n", tuple(dict.fromkeys(templates)))


def block_inherits(statements: Sequence[cil.Node]) -> list[str]:
    """The blocks that `(blockinherit <name>)` statements among `statements` inherit, in order."""
    return [
        statement.items[1].text
        for statement in statements
        if isinstance(statement, cil.Expr)
        and len(statement.items) == 2
        and isinstance(statement.items[0], cil.Atom)
        and statement.items[0].text == cil.BLOCKINHERIT
        and isinstance(statement.items[1], cil.Atom)
    ]


def _inherit_line(block: str) -> str:
    return f"({cil.BLOCKINHERIT} {block})\n"


def _profile_parents(profile: SelinuxProfile) -> list[str]:
    return list(dict.fromkeys(ref.name for ref in profile.spec.inherit if ref.kind == KIND_SELINUX_PROFILE))


def _inherits(
    name: str,
    profile: SelinuxProfile,
    allowed_system_profiles: Collection[str],
    profiles: Mapping[str, SelinuxProfile],
) -> tuple[list[str], tuple[str, ...]]:
    """The profile's system templates in spec order, and its SelinuxProfile ancestors, oldest first."""
    system: list[str] = []
    for ref in profile.spec.inherit:
        _identifier(ref.name, "inherit name")
        if ref.kind == KIND_SYSTEM:
            if ref.name not in allowed_system_profiles:
                raise PolicyError(
                    f"system profile {ref.name} not in SecurityProfilesOperatorDaemon's allow list: "
                    "system profile not allowed"
                )
            if ref.name not in system:  # a second copy of a block is a re-declaration in CIL
                system.append(ref.name)
        elif ref.kind != KIND_SELINUX_PROFILE:
            raise PolicyError(f"unknown inherit kind {ref.kind!r} for entry {ref.name}")
    ancestors: dict[str, None] = {}
    _collect_ancestors(profile, profiles, (name,), ancestors)
    return system, tuple(ancestors)


def _collect_ancestors(
    profile: SelinuxProfile,
    profiles: Mapping[str, SelinuxProfile],
    chain: tuple[str, ...],
    found: dict[str, None],
) -> None:
    for name in _profile_parents(profile):
        if name in chain:
            raise PolicyError(f"inheritance cycle: {' -> '.join((*chain, name))}")
        if len(chain) > MAX_INHERIT_DEPTH:
            chained = " -> ".join(chain)
            raise PolicyError(f"SelinuxProfiles inherit deeper than {MAX_INHERIT_DEPTH}: {chained}")
        ancestor = profiles.get(name)
        if ancestor is None:
            raise PolicyError(f"couldn't find inherit reference {KIND_SELINUX_PROFILE}/{name}")
        policy_name(name)
        _collect_ancestors(ancestor, profiles, (*chain, name), found)
        found[name] = None


def _all_templates(
    profile: SelinuxProfile, profiles: Mapping[str, SelinuxProfile], ancestors: Collection[str]
) -> tuple[str, ...]:
    """Every system template the module and its ancestors inherit: what a compile needs besides them."""
    owners = [profile, *(profiles[name] for name in ancestors)]
    names = [CONTAINER_TEMPLATE] + [
        ref.name for owner in owners for ref in owner.spec.inherit if ref.kind == KIND_SYSTEM
    ]
    return tuple(dict.fromkeys(names))


def _allow_lines(name: str, profile: SelinuxProfile, deny: DenyList) -> list[str]:
    lines = []
    for label in sorted(profile.spec.allow or {}):
        target = selinux_usage(name) if label == validation.SELF_KEYWORD else _identifier(label, "type")
        classes = (profile.spec.allow or {})[label]
        for class_name in sorted(classes):
            _identifier(class_name, f"class of type {label}")
            permissions = sorted(set(classes[class_name]))
            for permission in permissions:
                _identifier(permission, f"permission of {label} {class_name}")
            _check_denied(target, class_name, permissions, deny)
            # An empty permission list grants nothing, and `( class (  ))` does not compile.
            if permissions:
                lines.append(f"(allow process {target} ( {class_name} ( {' '.join(permissions)} )))\n")
    return lines


def _check_denied(target: str, class_name: str, permissions: list[str], deny: DenyList) -> None:
    rule = f"invalid semantic rule for type {target}, class {class_name}"
    if target in deny.types:
        raise PolicyError(f"{rule}: type {target} is denied")
    if class_name in deny.classes:
        raise PolicyError(f"{rule}: class {class_name} is denied")
    for permission in permissions:
        if permission in deny.permissions:
            raise PolicyError(f"{rule}: permission {permission} is denied")


def _identifier(value: str, what: str) -> str:
    try:
        return validation.selinux_identifier(value)
    except ValueError as error:
        raise PolicyError(f"{what}: {error}") from None
