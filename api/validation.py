"""Checks on names that end up in node files, CIL policies or kernel filters.

Each check raises ValueError with a message naming the offending value; pydantic turns that into a
validation error naming the field.
"""

import re

DNS1123_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
DNS1123_SUBDOMAIN_MAX_LENGTH = 253
# CIL identifiers: anything else could close the surrounding S-expression and inject statements.
SELINUX_IDENTIFIER_PATTERN = r"^[a-zA-Z0-9][a-zA-Z0-9._-]*$"
SYSCALL_NAME_PATTERN = r"^[a-z0-9_]+$"
SELF_KEYWORD = "@self"
SELINUX_TYPE_OR_SELF_PATTERN = r"^(@self|[a-zA-Z0-9][a-zA-Z0-9._-]*)$"
# fullmatch, not match: `$` also matches before a final "\n", which the apiserver's RE2 does not allow.
_DNS1123_SUBDOMAIN = re.compile(DNS1123_SUBDOMAIN_PATTERN)
_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_SELINUX_IDENTIFIER = re.compile(SELINUX_IDENTIFIER_PATTERN)
_SYSCALL_NAME = re.compile(SYSCALL_NAME_PATTERN)


def dns1123_subdomain(value: str) -> str:
    if len(value) > DNS1123_SUBDOMAIN_MAX_LENGTH or not _DNS1123_SUBDOMAIN.fullmatch(value):
        raise ValueError(
            f"{value!r} is not a DNS-1123 subdomain (lower-case alphanumerics, '-' and '.', "
            "starting and ending alphanumeric, at most 253 characters)"
        )
    return value


def dns1123_label(value: str) -> str:
    if len(value) > 63 or not _DNS1123_LABEL.fullmatch(value):
        raise ValueError(
            f"{value!r} is not a DNS-1123 label (lower-case alphanumerics and '-', "
            "starting and ending alphanumeric, at most 63 characters)"
        )
    return value


def profile_name(value: str) -> str:
    """A profile name becomes a file name on every node, so it must not be able to leave its directory."""
    if "/" in value or value in (".", "..") or "\x00" in value:
        raise ValueError(f"profile name {value!r} must not contain '/' or be '.' or '..'")
    return dns1123_subdomain(value)


def selinux_identifier(value: str) -> str:
    if not _SELINUX_IDENTIFIER.fullmatch(value):
        raise ValueError(
            f"{value!r} is not a plain SELinux identifier (letters, digits, '.', '_' and '-', "
            "starting with a letter or digit)"
        )
    return value


def selinux_type_or_self(value: str) -> str:
    return value if value == SELF_KEYWORD else selinux_identifier(value)


def syscall_name(value: str) -> str:
    if not _SYSCALL_NAME.fullmatch(value):
        raise ValueError(f"syscall name {value!r} must match [a-z0-9_]+")
    return value
