"""The audit pipeline joined end to end without a node: real audit.log lines through the parser, a fake
/proc tree for attribution, the container index fed with pod objects, and the outputs collected: the
log enricher's lines and counters, the recorder's calls and the JSON enricher's records, each by the
spod's switches and filters."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from agent.attribution import ContainerIndex
from agent.audit import ALL_OUTPUTS, AuditMetrics, AuditPipeline, Dispatch, Output, outputs_on
from api import constants
from api.types import JsonEnricherOptions, SPODSpec
from tests.test_attribution import CONTAINERD_ID, CRIO_ID, FakeProc, _cgroup, _pod

NODE = "worker-1"
CONTAINER_PID, HOST_PID, LATE_PID = 4242, 77, 5151
# x86_64: 0 read, 83 mkdir.
READ, MKDIR = 0, 83


def seccomp_line(pid: int, syscall: int, serial: int, comm: str = "nginx") -> str:
    """A SECCOMP record as auditd writes it (inventory §6.1's shape)."""
    return (
        f"type=SECCOMP msg=audit(1744780616.598:{serial}): auid=4294967295 uid=101 gid=101 "
        f'ses=4294967295 pid={pid} comm="{comm}" exe="/usr/sbin/{comm}" sig=0 arch=c000003e '
        f"syscall={syscall} compat=0 ip=0x7fe2ff5017be code=0x7ffc0000"
    )


def avc_line(pid: int, serial: int) -> str:
    return (
        f"type=AVC msg=audit(1666691794.882:{serial}): avc:  denied  {{ name_bind }} for  pid={pid} "
        'comm="redis-server" src=6379 scontext=system_u:system_r:selinuxrecording.process:s0:c4,c27 '
        "tcontext=system_u:object_r:redis_port_t:s0 tclass=tcp_socket permissive=1"
    )


@dataclass
class Recorded:
    syscalls: list[tuple[str, str, str, str]] = field(default_factory=list)
    avcs: list[tuple[str, str, str, list[str], str, str]] = field(default_factory=list)

    def record_syscall(self, namespace: str, pod: str, container: str, syscall: str) -> None:
        self.syscalls.append((namespace, pod, container, syscall))

    def record_avc(
        self, namespace: str, pod: str, container: str, *, perms: list[str], tcontext: str, tclass: str
    ) -> None:
        self.avcs.append((namespace, pod, container, perms, tcontext, tclass))


class Lines:
    """A JSON writer that keeps what it was given."""

    def __init__(self) -> None:
        self.lines: list[bytes] = []
        self.closed = False

    def write(self, line: bytes) -> None:
        self.lines.append(line)

    def close(self) -> None:
        self.closed = True


class Blocks:
    """A source that hands out the blocks a test queues, then stops."""

    def __init__(self, blocks: list[str], on_idle: Callable[[], None]) -> None:
        self._blocks = blocks
        self.on_idle = on_idle

    def blocks(self, stop: threading.Event) -> Iterator[str]:
        yield from self._blocks


@dataclass
class Rig:
    proc: FakeProc
    index: ContainerIndex
    recorder: Recorded
    emitted: list[str]
    json_out: Lines
    registry: CollectorRegistry
    spec: SPODSpec

    def run(self, *lines: str, allowed: frozenset[Output] = ALL_OUTPUTS) -> AuditPipeline:
        dispatch = Dispatch(
            NODE,
            self.proc.root,
            self.recorder,
            AuditMetrics(self.registry),
            self.emitted.append,
            open_json=lambda _options: self.json_out,
            allowed=allowed,
        )
        pipeline = AuditPipeline(
            lambda idle: Blocks(["\n".join(lines)], idle),
            dispatch,
            self.index,
            lambda: self.spec,
            self.proc.root,
        )
        pipeline.start()
        pipeline.stop()
        return pipeline

    def audit_count(self, syscall: str) -> float | None:
        return self.registry.get_sample_value(
            "security_profiles_operator_seccomp_profile_audit_total",
            {
                "node": NODE,
                "namespace": "my-namespace",
                "pod": "my-pod",
                "container": "nginx",
                "syscall": syscall,
            },
        )


RECORDING = "test-recording_nginx_6kmrb_1684331729"


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
    proc = FakeProc(tmp_path)
    proc.process(CONTAINER_PID, 100, _cgroup(CRIO_ID), comm="nginx")
    proc.process(HOST_PID, 50, "0::/user.slice/session-1.scope\n")
    (tmp_path / str(CONTAINER_PID) / "cmdline").write_bytes(b"nginx\0-g\0daemon off;\0")
    index = ContainerIndex()
    index.update(
        _pod(
            containers={"nginx": f"cri-o://{CRIO_ID}"},
            annotations={f"{constants.ANNOTATION_TRACE_LOGS_PREFIX}nginx": RECORDING},
        )
    )
    return Rig(proc, index, Recorded(), [], Lines(), CollectorRegistry(), SPODSpec(enable_log_enricher=True))


def test_a_containers_seccomp_line_becomes_an_enriched_line_a_count_and_a_recorded_syscall(rig: Rig) -> None:
    rig.run(seccomp_line(CONTAINER_PID, READ, 1), seccomp_line(HOST_PID, MKDIR, 2), "type=PROCTITLE msg=x")
    (line,) = rig.emitted
    assert 'namespace="my-namespace" pod="my-pod" container="nginx"' in line
    assert 'timestamp="1744780616.598:1"' in line and 'syscallName="read"' in line
    assert f"pid={CONTAINER_PID} " in line
    assert rig.audit_count("read") == 1
    assert rig.recorder.syscalls == [("my-namespace", "my-pod", "nginx", "read")]
    assert rig.json_out.lines == []


def test_the_pid_cache_fds_are_closed_when_the_audit_thread_ends(rig: Rig) -> None:
    before = len(os.listdir("/proc/self/fd"))
    rig.run(*(seccomp_line(CONTAINER_PID, READ, serial) for serial in range(3)))
    assert len(rig.emitted) == 3  # the container's process was cached (its directory held open)
    assert len(os.listdir("/proc/self/fd")) == before


def test_with_both_enrichers_off_nothing_is_dispatched(rig: Rig) -> None:
    rig.spec = SPODSpec()
    rig.run(seccomp_line(CONTAINER_PID, READ, 1), avc_line(CONTAINER_PID, 2))
    assert rig.emitted == [] and rig.recorder.syscalls == [] and rig.recorder.avcs == []


def test_the_log_enricher_filters_drop_what_they_say(rig: Rig) -> None:
    drop_read = [{"priority": 100, "level": "None", "matchKeys": ["syscallName"], "matchValues": ["read"]}]
    rig.spec = SPODSpec(enable_log_enricher=True, log_enricher_filters=json.dumps(drop_read))
    rig.run(seccomp_line(CONTAINER_PID, READ, 1), seccomp_line(CONTAINER_PID, MKDIR, 2))
    (line,) = rig.emitted
    assert 'syscallName="mkdir"' in line
    assert rig.audit_count("read") is None
    # Filters decide what is printed, not what is recorded.
    assert [s[3] for s in rig.recorder.syscalls] == ["read", "mkdir"]


def test_an_avc_is_an_enriched_line_and_a_recorded_avc(rig: Rig) -> None:
    rig.run(avc_line(CONTAINER_PID, 7))
    (line,) = rig.emitted
    assert 'type="selinux"' in line and 'perm="name_bind"' in line and 'tclass="tcp_socket"' in line
    assert rig.recorder.avcs == []  # the container is recorded for seccomp, not SELinux
    selinux = rig.registry.get_sample_value(
        "security_profiles_operator_selinux_profile_audit_total",
        {
            "node": NODE, "namespace": "my-namespace", "pod": "my-pod", "container": "nginx",
            "scontext": "system_u:system_r:selinuxrecording.process:s0:c4,c27",
            "tcontext": "system_u:object_r:redis_port_t:s0",
        },
    )  # fmt: skip
    assert selinux == 1


def test_a_line_of_a_container_the_watch_has_not_seen_waits_for_it(rig: Rig) -> None:
    rig.proc.process(LATE_PID, 300, _cgroup(CONTAINERD_ID), comm="redis")
    pipeline = rig.run(seccomp_line(LATE_PID, READ, 1))
    assert rig.emitted == []
    new = rig.index.update(_pod("late", containers={"redis": f"containerd://{CONTAINERD_ID}"}))
    pipeline.new_containers(new)
    pipeline.housekeeping()
    (line,) = rig.emitted
    assert 'pod="late" container="redis"' in line


def test_the_json_enricher_writes_one_record_per_process(rig: Rig) -> None:
    rig.spec = SPODSpec(enable_json_enricher=True, json_enricher_options=JsonEnricherOptions())
    rig.run(seccomp_line(CONTAINER_PID, READ, 1), seccomp_line(CONTAINER_PID, MKDIR, 2))
    assert rig.emitted == [] and rig.json_out.closed
    (raw,) = rig.json_out.lines
    record: dict[str, Any] = json.loads(raw)
    assert record["pid"] == CONTAINER_PID and record["syscalls"] == ["read", "mkdir"]
    assert record["resource"] == {"container": "nginx", "namespace": "my-namespace", "pod": "my-pod"}
    # Each NUL a space, the last one too, as the docs' records show.
    assert record["cmdLine"] == "nginx -g daemon off; " and record["node"] == {"name": NODE}
    assert record["version"] == constants.JSON_AUDIT_VERSION


@pytest.mark.parametrize(
    ("allowed", "log_lines", "recorded", "json_records"),
    [
        (ALL_OUTPUTS, 1, 1, 1),
        (frozenset({Output.LOG_ENRICHER}), 1, 1, 0),
        (frozenset({Output.JSON_ENRICHER}), 0, 0, 1),
        (frozenset(), 0, 0, 0),
    ],
)
def test_only_the_allowed_outputs_are_produced(
    rig: Rig, allowed: frozenset[Output], log_lines: int, recorded: int, json_records: int
) -> None:
    """Each container of the spod DaemonSet produces its own part of what the spod switches on."""
    rig.spec = SPODSpec(enable_log_enricher=True, enable_json_enricher=True)
    rig.run(seccomp_line(CONTAINER_PID, READ, 1), allowed=allowed)
    assert len(rig.emitted) == log_lines
    assert len(rig.recorder.syscalls) == recorded
    assert (rig.audit_count("read") or 0) == log_lines
    assert len(rig.json_out.lines) == json_records


@pytest.mark.parametrize(
    ("spec", "allowed", "on"),
    [
        (SPODSpec(), ALL_OUTPUTS, set()),
        (SPODSpec(enable_log_enricher=True), ALL_OUTPUTS, {Output.LOG_ENRICHER}),
        (SPODSpec(enable_json_enricher=True), ALL_OUTPUTS, {Output.JSON_ENRICHER}),
        (SPODSpec(enable_log_enricher=True, enable_json_enricher=True), ALL_OUTPUTS, set(Output)),
        (SPODSpec(enable_log_enricher=True), frozenset({Output.JSON_ENRICHER}), set()),
        (SPODSpec(enable_log_enricher=True, enable_json_enricher=True), frozenset(), set()),
    ],
)
def test_an_output_is_on_where_the_spod_and_the_role_agree(
    spec: SPODSpec, allowed: frozenset[Output], on: set[Output]
) -> None:
    assert outputs_on(spec, allowed) == on
