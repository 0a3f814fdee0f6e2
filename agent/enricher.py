"""The log enricher's output line and the spod's enricher filters (pure; the audit pipeline's thread).

What goes in and out:

- ``seccomp_record(...)`` / ``selinux_record(...)``: an attributed event as the ordered record upstream
  logs (inventory §6.3): seccomp ``timestamp, type, node, namespace, pod, container, executable, pid,
  syscallID, syscallName``; selinux ``timestamp, type, profile, node, namespace, pod, container, perm,
  scontext, tcontext, tclass``. ``timestamp`` is the text inside ``audit(...)``, e.g.
  ``1624453150.235:2876``; the syscall name is resolved by the caller for the native architecture
  (upstream drops a line whose number has no name).
- ``render(record)``: the line's message part as klog's text logger writes it, keys in record order,
  strings Go-quoted, numbers bare: ``"audit" logger="log-enricher" timestamp="1624453150.235:2876"
  type="seccomp" node="127.0.0.1" ... pid=1905792 syscallID=5 syscallName="fstat"``.
- ``parse_filters(text, field)``: the spod's ``logEnricherFilters`` / ``jsonEnricherFilters`` JSON
  string -> rules sorted by priority; ``FilterError`` names the field, the rule and what is wrong.
- ``level_of(rules, record)`` / ``emits(rules, record)``: the level of the first matching rule
  (``Metadata``: emit, ``None``: drop), ``Metadata`` when none matches. Works on the JSON enricher's
  records too (nested keys as ``resource/pod``).

Where we differ from upstream: a rule matches when **all** its ``matchKeys`` are present (and, with
``matchValues``, each one's value is among them), as the docs say; upstream matches on any key. A
rule without keys matches nothing, as upstream. Unknown fields (such as the ``matchLabels`` of
upstream's doc page, which upstream silently ignores) and unknown levels are errors, not rules that
quietly never match. ``resource/...`` paths reach into the JSON enricher's records (they never match
upstream, inventory Appendix A D23). A string value with a newline stays on one line, escaped, so an
executable's name cannot forge a log line (klog would write it over several lines).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from agent.attribution import ContainerInfo
from api import constants

Record = dict[str, str | int]

_LEVELS = (constants.ENRICHER_LEVEL_METADATA, constants.ENRICHER_LEVEL_NONE)
_PATH_SEPARATOR = "/"
# Field names as the spod's JSON spells them; matched case-insensitively, as Go's JSON decoding does.
_PRIORITY, _LEVEL, _MATCH_KEYS, _MATCH_VALUES = "priority", "level", "matchKeys", "matchValues"
_FIELDS = {name.lower(): name for name in (_PRIORITY, _LEVEL, _MATCH_KEYS, _MATCH_VALUES)}


# --- records and their rendering -------------------------------------------------------------------
def seccomp_record(
    *,
    timestamp: str,
    node: str,
    container: ContainerInfo,
    executable: str,
    pid: int,
    syscall_id: int,
    syscall_name: str,
) -> Record:
    return {
        "timestamp": timestamp,
        "type": constants.AUDIT_TYPE_SECCOMP,
        "node": node,
        "namespace": container.namespace,
        "pod": container.pod,
        "container": container.container,
        "executable": executable,
        "pid": pid,
        "syscallID": syscall_id,
        "syscallName": syscall_name,
    }


def selinux_record(
    *,
    timestamp: str,
    node: str,
    container: ContainerInfo,
    perm: str,
    scontext: str,
    tcontext: str,
    tclass: str,
) -> Record:
    """``perm``: the AVC's permissions as the line has them, space-separated (``read write open``)."""
    return {
        "timestamp": timestamp,
        "type": constants.AUDIT_TYPE_SELINUX,
        "profile": container.selinux_recording,
        "node": node,
        "namespace": container.namespace,
        "pod": container.pod,
        "container": container.container,
        "perm": perm,
        "scontext": scontext,
        "tcontext": tcontext,
        "tclass": tclass,
    }


def render(record: Mapping[str, str | int]) -> str:
    """The record as klog's text logger writes the message and key/values of ``logger.Info``."""
    parts = [go_quote(constants.LOG_ENRICHER_MESSAGE), f"logger={go_quote(constants.LOG_ENRICHER_LOGGER)}"]
    parts.extend(
        f"{key}={value}" if isinstance(value, int) else f"{key}={go_quote(value)}"
        for key, value in record.items()
    )
    return " ".join(parts)


_GO_ESCAPES = {
    '"': '\\"',
    "\\": "\\\\",
    "\a": "\\a",
    "\b": "\\b",
    "\f": "\\f",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
    "\v": "\\v",
}
_SURROGATE_ESCAPES = range(0xDC80, 0xDD00)  # bytes that were not UTF-8, decoded with surrogateescape
_DEL = 0x7F
_LAST_BMP = 0xFFFF


def go_quote(text: str) -> str:
    """``text`` as Go's strconv.Quote writes it: printable characters as they are, the rest escaped."""
    if text.isascii() and text.isprintable() and '"' not in text and "\\" not in text:
        return f'"{text}"'
    out = []
    for char in text:
        code = ord(char)
        if char in _GO_ESCAPES:
            out.append(_GO_ESCAPES[char])
        elif code in _SURROGATE_ESCAPES:
            out.append(f"\\x{code - 0xDC00:02x}")
        elif char.isprintable():
            out.append(char)
        elif code < 0x20 or code == _DEL:
            out.append(f"\\x{code:02x}")
        elif code <= _LAST_BMP:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    return '"' + "".join(out) + '"'


# --- filters ---------------------------------------------------------------------------------------
class FilterError(ValueError):
    """A logEnricherFilters / jsonEnricherFilters value that is not a list of valid rules."""


@dataclass(frozen=True)
class FilterRule:
    priority: int
    level: str
    match_keys: tuple[str, ...]
    match_values: tuple[str, ...] = ()

    def matches(self, record: Mapping[str, Any]) -> bool:
        if not self.match_keys:
            return False
        for key in self.match_keys:
            found, value = _lookup(record, key)
            if not found or (self.match_values and not any(_equal(value, v) for v in self.match_values)):
                return False
        return True


def _lookup(record: Mapping[str, Any], path: str) -> tuple[bool, Any]:
    """The value at ``a/b`` (nested mappings), and whether there is one (a present null counts)."""
    value: Any = record
    for part in path.split(_PATH_SEPARATOR):
        if not isinstance(value, Mapping) or part not in value:
            return False, None
        value = value[part]
    return True, value


def _equal(value: Any, wanted: str) -> bool:
    if isinstance(value, str):
        return value == wanted
    # Numbers (pid, syscallID, uid) are matched by a value that reads as the same integer.
    if isinstance(value, int) and not isinstance(value, bool):
        try:
            return int(wanted) == value
        except ValueError:
            return False
    return False


def parse_filters(text: str | None, field: str = "logEnricherFilters") -> tuple[FilterRule, ...]:
    """The rules of a spod filter string, lowest priority number first (ties keep their order);
    none for an empty string. ``field`` names the spod field in errors."""
    if text is None or not text.strip():
        return ()
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as error:
        raise FilterError(f"{field} is not valid JSON: {error}") from error
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise FilterError(f"{field} must be a JSON array of filters, not {type(raw).__name__}")
    rules = [_rule(item, f"{field}[{n}]") for n, item in enumerate(raw)]
    return tuple(sorted(rules, key=lambda rule: rule.priority))


def _rule(item: object, where: str) -> FilterRule:
    if not isinstance(item, dict):
        raise FilterError(f"{where} must be an object, not {type(item).__name__}")
    fields: dict[str, Any] = {}
    for key, value in item.items():
        name = _FIELDS.get(key.lower())
        if name is None:
            known = ", ".join(_FIELDS.values())
            raise FilterError(f"{where}: unknown field {key!r} (the fields are {known})")
        fields[name] = value
    priority = fields.get(_PRIORITY, 0)
    if not isinstance(priority, int) or isinstance(priority, bool):
        raise FilterError(f"{where}.{_PRIORITY} must be an integer, not {priority!r}")
    level = fields.get(_LEVEL)
    if level not in _LEVELS:
        raise FilterError(f"{where}.{_LEVEL} must be one of {', '.join(_LEVELS)}, not {level!r}")
    return FilterRule(
        priority=priority,
        level=str(level),
        match_keys=_strings(fields.get(_MATCH_KEYS), f"{where}.{_MATCH_KEYS}"),
        match_values=_strings(fields.get(_MATCH_VALUES), f"{where}.{_MATCH_VALUES}"),
    )


def _strings(value: object, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise FilterError(
            f'{where} must be a list of non-empty strings (numbers quoted: "50"), not {value!r}'
        )
    return tuple(value)


def level_of(rules: Sequence[FilterRule], record: Mapping[str, Any]) -> str:
    """The level of the first rule (by priority) matching the record; Metadata when none does."""
    for rule in rules:
        if rule.matches(record):
            return rule.level
    return constants.ENRICHER_LEVEL_METADATA


def emits(rules: Sequence[FilterRule], record: Mapping[str, Any]) -> bool:
    return level_of(rules, record) != constants.ENRICHER_LEVEL_NONE
