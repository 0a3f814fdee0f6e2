"""agent/enricher.py: the log enricher's lines (inventory §6.3 and the docs' examples) and the spod's
enricher filters (the docs' and upstream's filter examples, all keys matching as the docs say)."""

from __future__ import annotations

import re
from typing import Any

import pytest

from agent.attribution import ContainerInfo
from agent.enricher import (
    FilterError,
    FilterRule,
    emits,
    go_quote,
    level_of,
    parse_filters,
    render,
    seccomp_record,
    selinux_record,
)

CONTAINER_ID = "218ce99dd8b33f6f9b6565863d7cd47dc880963ddd2cd987bcb2d330c65144bf"


def _container(namespace: str, pod: str, container: str, selinux_recording: str = "") -> ContainerInfo:
    return ContainerInfo(CONTAINER_ID, namespace, pod, container, selinux_recording=selinux_recording)


LOG_POD = _container("default", "log-pod", "log-container")


def _seccomp(executable: str, pid: int, syscall_id: int, name: str, timestamp: str) -> dict[str, str | int]:
    return seccomp_record(
        timestamp=timestamp,
        node="127.0.0.1",
        container=LOG_POD,
        executable=executable,
        pid=pid,
        syscall_id=syscall_id,
        syscall_name=name,
    )


def test_seccomp_line_is_upstreams_rendering() -> None:
    # Inventory §6.3, the example rendering of upstream's text logger after its klog header.
    expected = (
        '"audit" logger="log-enricher" timestamp="1624453150.235:2876" type="seccomp" node="127.0.0.1" '
        'namespace="default" pod="log-pod" container="log-container" executable="/usr/sbin/nginx" '
        'pid=1905792 syscallID=5 syscallName="fstat"'
    )
    assert render(_seccomp("/usr/sbin/nginx", 1905792, 5, "fstat", "1624453150.235:2876")) == expected


def test_seccomp_line_has_what_upstreams_e2e_test_looks_for() -> None:
    line = render(_seccomp("/usr/sbin/nginx", 1905792, 50, "listen", "1624453150.235:2880"))
    assert line.index('type="seccomp"') < line.index('executable="/usr/sbin/nginx"')
    for wanted in ('syscallName="listen"', "syscallID=50", 'pod="log-pod"', 'container="log-container"'):
        assert f" {wanted}" in line
    assert ' namespace="default"' in line
    assert ' node="127.0.0.1"' in line


_OLD_PAIR = re.compile(r'"(\w+)"=("[^"]*"|\d+)')


def _old_format_pairs(line: str) -> dict[str, str]:
    """The key/values of the docs' older klogr lines (`"key"="value"`, keys sorted), msg left out."""
    return {k: v.strip('"') for k, v in _OLD_PAIR.findall(line) if k != "msg"}


def _our_pairs(line: str) -> dict[str, str]:
    return {k: v.strip('"') for k, v in re.findall(r' (\w+)=("[^"]*"|\d+)', line) if k != "logger"}


# Inventory §6.3: the keys of each kind of line, in the order upstream logs them.
SECCOMP_KEYS = [
    "timestamp",
    "type",
    "node",
    "namespace",
    "pod",
    "container",
    "executable",
    "pid",
    "syscallID",
    "syscallName",
]
SELINUX_KEYS = [
    "timestamp",
    "type",
    "profile",
    "node",
    "namespace",
    "pod",
    "container",
    "perm",
    "scontext",
    "tcontext",
    "tclass",
]


def _assert_docs_fields_in_order(line: str, docs: dict[str, str], keys: list[str]) -> None:
    ours = _our_pairs(line)
    assert ours == docs
    assert list(ours) == keys


DOCS_SECCOMP_LINES = [
    # Docs 7.6.3 step 6 and 7.8.7.1 step 3, quoted.
    (
        'I0523 14:19:08.747313  430694 enricher.go:445] log-enricher "msg"="audit" "container"="redis" '
        '"executable"="/usr/local/bin/redis-server" "namespace"="my-namespace" '
        '"node"="xiyuan-23-5g2q9-worker-eastus2-6rpgf" "pid"=656802 "pod"="my-pod" "syscallID"=0 '
        '"syscallName"="read" "timestamp"="1684851548.745:207179" "type"="seccomp"'
    ),
    (
        'I0623 12:59:20.358844 1854764 enricher.go:111] log-enricher "msg"="audit"  '
        '"container"="log-container" "executable"="/usr/sbin/nginx" "namespace"="default" '
        '"node"="127.0.0.1" "pid"=1905792 "pod"="log-pod" "syscallID"=5 "syscallName"="fstat" '
        '"timestamp"="1624453150.235:2876" "type"="seccomp"'
    ),
]


@pytest.mark.parametrize("docs_line", DOCS_SECCOMP_LINES)
def test_seccomp_line_carries_the_docs_fields_in_upstreams_order(docs_line: str) -> None:
    docs = _old_format_pairs(docs_line)
    record = seccomp_record(
        timestamp=docs["timestamp"],
        node=docs["node"],
        container=_container(docs["namespace"], docs["pod"], docs["container"]),
        executable=docs["executable"],
        pid=int(docs["pid"]),
        syscall_id=int(docs["syscallID"]),
        syscall_name=docs["syscallName"],
    )
    _assert_docs_fields_in_order(render(record), docs, SECCOMP_KEYS)


def test_selinux_line_carries_the_docs_fields_in_upstreams_order() -> None:
    # Docs 7.6.3 (SELinux recording), step 6, quoted.
    docs_line = (
        'I0517 13:55:36.383187  348295 enricher.go:376] log-enricher "msg"="audit" "container"="redis" '
        '"namespace"="my-namespace" "node"="ip-10-0-189-53.us-east-2.compute.internal" "perm"="name_bind" '
        '"pod"="my-pod" "profile"="test-recording_redis_6kmrb_1684331729" '
        '"scontext"="system_u:system_r:selinuxrecording.process:s0:c4,c27" "tclass"="tcp_socket" '
        '"tcontext"="system_u:object_r:redis_port_t:s0" "timestamp"="1684331735.105:273965" "type"="selinux"'
    )
    docs = _old_format_pairs(docs_line)
    record = selinux_record(
        timestamp=docs["timestamp"],
        node=docs["node"],
        container=_container(docs["namespace"], docs["pod"], docs["container"], docs["profile"]),
        perm=docs["perm"],
        scontext=docs["scontext"],
        tcontext=docs["tcontext"],
        tclass=docs["tclass"],
    )
    line = render(record)
    assert line.startswith('"audit" logger="log-enricher" timestamp="1684331735.105:273965" type="selinux" ')
    _assert_docs_fields_in_order(line, docs, SELINUX_KEYS)


def test_selinux_line_of_a_container_not_recorded_has_an_empty_profile() -> None:
    # Inventory §6.1's multi-permission AVC.
    record = selinux_record(
        timestamp="1666691794.882:1434",
        node="worker-1",
        container=_container("ns", "aide", "aide"),
        perm="read write open",
        scontext="system_u:system_r:selinuxrecording.process:s0:c218,c875",
        tcontext="system_u:object_r:kubernetes_file_t:s0",
        tclass="file",
    )
    assert ' profile="" ' in render(record)
    assert ' perm="read write open" ' in render(record)


@pytest.mark.parametrize(
    ("text", "quoted"),
    [
        ("/usr/sbin/nginx", '"/usr/sbin/nginx"'),
        ("", '""'),
        ('say "hi"', r'"say \"hi\""'),
        ("back\\slash", r'"back\\slash"'),
        ("two\nlines", r'"two\nlines"'),  # a forged second line stays on this one
        ("tab\there", r'"tab\there"'),
        ("\x00\x1b\x7f", r'"\x00\x1b\x7f"'),
        ("\a\b\f\r\v", r'"\a\b\f\r\v"'),
        ("café", '"café"'),
        ("\u00a0\u0085\u200b", r'"\u00a0\u0085\u200b"'),
        ("\U0001f600", '"\U0001f600"'),
        ("\U0010fffd", r'"\U0010fffd"'),
        (b"/bin/\xff".decode("utf-8", "surrogateescape"), r'"/bin/\xff"'),
    ],
)
def test_go_quote(text: str, quoted: str) -> None:
    assert go_quote(text) == quoted


# --- filters ---------------------------------------------------------------------------------------
# The docs' example (inventory §6.3: keep only the JSON enricher's lines with a requestUID).
DOCS_KEEP_REQUEST_UID = (
    '[{"priority":100,"level":"Metadata","matchKeys":["requestUID"]},'
    '{"priority":999,"level":"None","matchKeys":["version"],"matchValues":["spo/v1_alpha"]}]'
)
# Upstream's e2e "Log Enricher with filters" (inventory §8.2 case 9): no listen lines.
E2E_DROP_LISTEN = '[{"priority":100,"level":"None","matchKeys":["syscallID"],"matchValues":["50"]}]'

# A JSON enricher record as docs 7.9.5 shows it.
JSON_RECORD: dict[str, Any] = {
    "auditID": "d586679d-0000-0000-0000-9dc8ab273065",
    "cmdLine": "touch /tmp/testfile.txt ",
    "executable": "/bin/dash",
    "gid": 0,
    "node": {"name": "worker-1"},
    "pid": 144968,
    "requestUID": "aec3e0e1-0000-0000-0000-a7c58241f1a9",
    "resource": {"container": "nginx", "namespace": "test-namespace", "pod": "test-pod"},
    "syscalls": ["execve"],
    "timestamp": "2026-02-16T14:01:07.000Z",
    "uid": 0,
    "version": "spo/v1_alpha",
}
WITHOUT_REQUEST_UID = {k: v for k, v in JSON_RECORD.items() if k != "requestUID"}
HOST_PROCESS = {**WITHOUT_REQUEST_UID, "resource": None}
LISTEN = _seccomp("/usr/sbin/nginx", 1905792, 50, "listen", "1624453150.235:2880")
EXECVE = _seccomp("/usr/sbin/nginx", 1905792, 59, "execve", "1624453150.235:2881")

METADATA, NONE = "Metadata", "None"

FILTER_CASES = [
    pytest.param(DOCS_KEEP_REQUEST_UID, JSON_RECORD, METADATA, id="docs-keeps-exec-with-request-uid"),
    pytest.param(DOCS_KEEP_REQUEST_UID, WITHOUT_REQUEST_UID, NONE, id="docs-drops-the-rest"),
    pytest.param(E2E_DROP_LISTEN, LISTEN, NONE, id="e2e-drops-syscall-id-50"),
    pytest.param(E2E_DROP_LISTEN, EXECVE, METADATA, id="e2e-keeps-execve"),
    pytest.param("", LISTEN, METADATA, id="no-filters-emit-everything"),
    pytest.param(
        '[{"priority":1,"level":"None","matchKeys":["namespace","pod"],"matchValues":["default","log-pod"]}]',
        LISTEN,
        NONE,
        id="all-keys-match",
    ),
    pytest.param(
        '[{"priority":1,"level":"None","matchKeys":["namespace","pod"],"matchValues":["default","other"]}]',
        LISTEN,
        METADATA,
        id="one-key-of-two-does-not-match",
    ),
    pytest.param(
        '[{"priority":1,"level":"None","matchKeys":["syscallName","requestUID"]}]',
        LISTEN,
        METADATA,
        id="one-key-of-two-is-absent",
    ),
    pytest.param(
        '[{"priority":1,"level":"None","matchKeys":["resource/pod"],"matchValues":["test-pod"]}]',
        JSON_RECORD,
        NONE,
        id="path-into-resource",
    ),
    pytest.param(
        '[{"priority":1,"level":"None","matchKeys":["node/name"],"matchValues":["worker-2"]}]',
        JSON_RECORD,
        METADATA,
        id="path-other-value",
    ),
    pytest.param(
        '[{"priority":1,"level":"None","matchKeys":["resource/pod"]}]',
        HOST_PROCESS,
        METADATA,
        id="path-into-null",
    ),
    pytest.param(
        '[{"priority":1,"level":"None","matchKeys":["resource"]}]', HOST_PROCESS, NONE, id="present-null"
    ),
    pytest.param(
        '[{"priority":1,"level":"None","matchKeys":["uid"],"matchValues":["0"]}]', JSON_RECORD, NONE, id="int"
    ),
    pytest.param(
        '[{"priority":1,"level":"None","matchKeys":["uid"],"matchValues":["root"]}]',
        JSON_RECORD,
        METADATA,
        id="not-int",
    ),
    pytest.param(
        '[{"priority":1,"level":"None","matchKeys":["syscalls"],"matchValues":["execve"]}]',
        JSON_RECORD,
        METADATA,
        id="a-list-equals-no-string",
    ),
    pytest.param('[{"priority":1,"level":"None"}]', LISTEN, METADATA, id="rule-without-keys-matches-nothing"),
    pytest.param(
        '[{"priority":999,"level":"None","matchKeys":["pod"]},{"priority":5,"level":"Metadata","matchKeys":["pod"]}]',
        LISTEN,
        METADATA,
        id="lowest-priority-number-decides",
    ),
    pytest.param(
        # Upstream's filter_test.go spelling: the field names in any case.
        '[{"priority":101, "Level":"None", "matchKeys":["namespace"],"matchValues":["default"]}]',
        LISTEN,
        NONE,
        id="upstream-capitalised-level",
    ),
]


@pytest.mark.parametrize(("filters", "record", "level"), FILTER_CASES)
def test_filter_level(filters: str, record: dict[str, Any], level: str) -> None:
    rules = parse_filters(filters)
    assert level_of(rules, record) == level
    assert emits(rules, record) == (level == METADATA)


def test_a_boolean_is_not_a_number() -> None:
    rule = FilterRule(priority=0, level=NONE, match_keys=("flag",), match_values=("1",))
    assert not rule.matches({"flag": True})
    assert rule.matches({"flag": 1})


def test_rules_are_sorted_by_priority_ties_in_order() -> None:
    rules = parse_filters(
        '[{"priority":999,"level":"None","matchKeys":["msg"]},'
        '{"priority":101,"level":"Metadata","matchKeys":["resource/pod"],"matchValues":["my-pod"]},'
        '{"level":"None","matchKeys":["a"]},{"priority":101,"level":"None","matchKeys":["b"],"matchValues":null}]'
    )
    assert rules == (
        FilterRule(0, NONE, ("a",)),
        FilterRule(101, METADATA, ("resource/pod",), ("my-pod",)),
        FilterRule(101, NONE, ("b",)),
        FilterRule(999, NONE, ("msg",)),
    )


@pytest.mark.parametrize("empty", [None, "", "  ", "[]", "null"])
def test_no_filters(empty: str | None) -> None:
    assert parse_filters(empty) == ()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[", r"jsonEnricherFilters is not valid JSON"),
        ("{}", r"jsonEnricherFilters must be a JSON array of filters, not dict"),
        ("[1]", r"jsonEnricherFilters\[0\] must be an object, not int"),
        (
            '[{"priority":1,"level":"None","matchLabels":["x"]}]',
            r"\[0\]: unknown field 'matchLabels' \(the fields are priority, level, matchKeys",
        ),
        (
            '[{"priority":1,"matchKeys":["x"]}]',
            r"jsonEnricherFilters\[0\].level must be one of Metadata, None, not None",
        ),
        (
            '[{"priority":1,"level":"none","matchKeys":["x"]}]',
            r"level must be one of Metadata, None, not 'none'",
        ),
        ('[{"priority":"1","level":"None"}]', r"priority must be an integer, not '1'"),
        ('[{"priority":1.5,"level":"None"}]', r"priority must be an integer, not 1.5"),
        ('[{"priority":true,"level":"None"}]', r"priority must be an integer, not True"),
        ('[{"level":"None","matchKeys":"syscallID"}]', r"matchKeys must be a list of non-empty strings"),
        ('[{"level":"None","matchKeys":[""]}]', r"matchKeys must be a list of non-empty strings"),
        (
            '[{"level":"None","matchKeys":["syscallID"],"matchValues":[50]}]',
            r'\[0\].matchValues must be a list of non-empty strings \(numbers quoted: "50"\)',
        ),
        (
            '[{"priority":1,"level":"None","matchKeys":["a"]},{"priority":2,"level":"Everything"}]',
            r"jsonEnricherFilters\[1\].level",
        ),
    ],
)
def test_malformed_filters_are_clear_errors(text: str, message: str) -> None:
    with pytest.raises(FilterError, match=message):
        parse_filters(text, "jsonEnricherFilters")
