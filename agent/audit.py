"""The node agent's audit pipeline: audit lines -> events -> containers -> the log enricher's lines, the
recorder's syscalls and AVCs, and the JSON enricher's records.

One thread (`audit`) owns the source, the parser's output, the pid cache and the JSON aggregator:

    source (auditsource) -> parse (auditline) -> pid -> container id (attribution.ContainerIds)
      -> container id -> pod (attribution.ContainerIndex, kept by the node's pod watch)
      -> log enricher line (enricher), recorder (recorder.Recorder), JSON record (jsonaudit)

`attributed(block, pids, index)` is that path up to the dispatch, per block of lines (what
bench/audit_bench.py measures). An event whose container the index does not know yet (the pod watch
has not seen its status) waits in a bounded backlog and is dispatched when the watch reports the
container; host processes are never reported. What is dispatched follows the spod at the time of the
event: `enableLogEnricher` (log lines, the audit counters, recording from logs), `enableJsonEnricher`
(JSON records to stdout or `jsonEnricherOptions.auditLogPath`), and their filters, within the outputs
the process's role allows (`Output`: the spod DaemonSet runs each enricher in a container of its own);
with no output on, the lines are read and dropped unparsed.

Every step that touches the outside (the source, /proc, the writers) is in the modules named above; this
module only joins them, so its rules are those of `Dispatch` (pure but for the outputs it is given).
"""

from __future__ import annotations

import enum
import logging
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, Protocol, TextIO

from prometheus_client import CollectorRegistry, Counter

from agent import enricher, jsonaudit, processinfo
from agent.attribution import Backlog, ContainerIds, ContainerIndex, ContainerInfo
from agent.auditline import AuditEvent, AvcEvent, SeccompEvent, Unparsable, parse_block
from agent.syscalls import syscall_name
from api import constants
from api.types import JsonEnricherOptions, SPODSpec

log = logging.getLogger(__name__)

METRIC_PREFIX = "security_profiles_operator_"
# How often the audit thread flushes due JSON records and expires the backlog while lines keep coming.
HOUSEKEEPING_SECONDS = 1.0


class Output(enum.Enum):
    """What the pipeline may produce. A role of `spo agent` allows some (agent/roles.py); the spod
    switches each on or off at run time, and an output is produced only where both agree."""

    # The log enricher's lines, the audit counters and recording from logs (docs 7.6.3: recording
    # follows the log enricher).
    LOG_ENRICHER = enum.auto()
    JSON_ENRICHER = enum.auto()  # the JSON enricher's records


ALL_OUTPUTS: frozenset[Output] = frozenset(Output)


def outputs_on(spec: SPODSpec, allowed: frozenset[Output]) -> frozenset[Output]:
    """The outputs the spod switches on, of those allowed."""
    switched = {
        Output.LOG_ENRICHER: spec.enable_log_enricher,
        Output.JSON_ENRICHER: spec.enable_json_enricher,
    }
    return frozenset(output for output in allowed if switched[output])


class BlockSource(Protocol):
    def blocks(self, stop: threading.Event) -> Iterator[str]: ...


class RecordingSink(Protocol):
    """The recorder's audit-thread side (agent/recorder.py)."""

    def record_syscall(self, namespace: str, pod: str, container: str, syscall: str) -> None: ...

    def record_avc(
        self, namespace: str, pod: str, container: str, *, perms: list[str], tcontext: str, tclass: str
    ) -> None: ...


class AuditMetrics:
    """The audit counters of docs table 7.1 (labels as upstream; it has no `executable` label).
    A process that never produces the log enricher's output (`audit_counters` False) does not serve
    them: they would stay empty there and be mistaken for the log enricher's."""

    def __init__(self, registry: CollectorRegistry, *, audit_counters: bool = True) -> None:
        labels = ["node", "namespace", "pod", "container"]
        counters = registry if audit_counters else CollectorRegistry()
        self.seccomp = Counter(
            f"{METRIC_PREFIX}seccomp_profile_audit",
            "Counter about seccomp profile audits, requires the log enricher to be enabled.",
            [*labels, "syscall"],
            registry=counters,
        )
        self.selinux = Counter(
            f"{METRIC_PREFIX}selinux_profile_audit",
            "Counter about selinux profile audits, requires the log enricher to be enabled.",
            [*labels, "scontext", "tcontext"],
            registry=counters,
        )
        self.unparsable = Counter(
            f"{METRIC_PREFIX}audit_unparsable_lines",
            "Audit lines naming a SECCOMP or AVC record without the kernel's fields.",
            ["type"],
            registry=registry,
        )


@dataclass
class _Filters:
    """Parsed filters, kept until the spod's text changes (parsing per event would dominate)."""

    text: str | None = None
    rules: tuple[enricher.FilterRule, ...] = ()

    def of(self, text: str | None, what: str) -> tuple[enricher.FilterRule, ...]:
        if text != self.text:
            self.text = text
            try:
                self.rules = enricher.parse_filters(text, what)
            except enricher.FilterError as error:
                # The reconciler reports a bad filter on the spod; meanwhile nothing is filtered out.
                log.warning("ignoring %s: %s", what, error)
                self.rules = ()
        return self.rules


@dataclass
class Dispatch:
    """What one attributed event becomes, by the spod's switches and the outputs this process may
    produce (`allowed`). Owned by the audit thread."""

    node_name: str
    proc: Path
    recorder: RecordingSink | None
    metrics: AuditMetrics
    emit_line: Callable[[str], None]
    open_json: Callable[[JsonEnricherOptions | None], jsonaudit.LineWriter] = jsonaudit.open_writer
    allowed: frozenset[Output] = ALL_OUTPUTS
    _log_filters: _Filters = field(default_factory=_Filters)
    _json_filters: _Filters = field(default_factory=_Filters)
    _aggregator: jsonaudit.Aggregator | None = None
    _writer: jsonaudit.LineWriter | None = None
    _json_options: JsonEnricherOptions | None = None

    def outputs(self, spec: SPODSpec) -> frozenset[Output]:
        return outputs_on(spec, self.allowed)

    def event(self, spec: SPODSpec, event: AuditEvent, info: ContainerInfo, start_time: int | None) -> None:
        outputs = self.outputs(spec)
        if isinstance(event, SeccompEvent):
            self._seccomp(spec, outputs, event, info, start_time)
        elif Output.LOG_ENRICHER in outputs:
            self._avc(spec, event, info)

    def _seccomp(
        self,
        spec: SPODSpec,
        outputs: frozenset[Output],
        event: SeccompEvent,
        info: ContainerInfo,
        start: int | None,
    ) -> None:
        name = syscall_name(event.syscall, event.arch)
        if Output.LOG_ENRICHER in outputs:
            record = enricher.seccomp_record(
                timestamp=event.audit_id,
                node=self.node_name,
                container=info,
                executable=event.executable,
                pid=event.pid,
                syscall_id=event.syscall,
                syscall_name=name,
            )
            if self._logged(spec, record):
                self.metrics.seccomp.labels(
                    self.node_name, info.namespace, info.pod, info.container, name
                ).inc()
            if info.seccomp_recording and self.recorder is not None:
                self.recorder.record_syscall(info.namespace, info.pod, info.container, name)
        if Output.JSON_ENRICHER in outputs:
            self._json(spec, event, info, start, name)

    def _avc(self, spec: SPODSpec, event: AvcEvent, info: ContainerInfo) -> None:
        record = enricher.selinux_record(
            timestamp=event.audit_id,
            node=self.node_name,
            container=info,
            perm=event.perm,
            scontext=event.scontext,
            tcontext=event.tcontext,
            tclass=event.tclass,
        )
        if self._logged(spec, record):
            self.metrics.selinux.labels(
                self.node_name, info.namespace, info.pod, info.container, event.scontext, event.tcontext
            ).inc()
        if info.selinux_recording and self.recorder is not None:
            self.recorder.record_avc(
                info.namespace,
                info.pod,
                info.container,
                perms=list(event.permissions),
                tcontext=event.tcontext,
                tclass=event.tclass,
            )

    def _logged(self, spec: SPODSpec, record: enricher.Record) -> bool:
        """Print the log enricher's line unless its filters drop it; True when printed."""
        if not enricher.emits(self._log_filters.of(spec.log_enricher_filters, "logEnricherFilters"), record):
            return False
        self.emit_line(enricher.render(record))
        return True

    def _json(
        self, spec: SPODSpec, event: SeccompEvent, info: ContainerInfo, start: int | None, name: str
    ) -> None:
        aggregator = self._json_outputs(spec)
        closed = aggregator.add(
            pid=event.pid,
            start_time=start,
            syscall=name,
            timestamp=float(event.timestamp),
            uid=event.uid,
            gid=event.gid,
            executable=event.executable,
            resource=jsonaudit.Resource(info.container, info.namespace, info.pod),
            now=time.monotonic(),
            describe=lambda: processinfo.describe(self.proc, event.pid),
        )
        self._write(spec, closed)

    def _json_outputs(self, spec: SPODSpec) -> jsonaudit.Aggregator:
        """The aggregator and writer for the spod's current options (a change flushes the old ones)."""
        options = spec.json_enricher_options
        if self._aggregator is None or options != self._json_options:
            self.close(spec)
            interval = options.audit_log_interval_seconds if options is not None else None
            self._aggregator = jsonaudit.Aggregator(self.node_name, interval or 0)
            self._writer = self.open_json(options)
            self._json_options = options
        return self._aggregator

    def _write(self, spec: SPODSpec, records: Iterable[jsonaudit.Record]) -> None:
        if self._writer is None:
            return
        rules = self._json_filters.of(spec.json_enricher_filters, "jsonEnricherFilters")
        for record in records:
            if enricher.emits(rules, record):
                self._writer.write(jsonaudit.encode(record))

    def flush(self, spec: SPODSpec) -> None:
        """Write the JSON records whose interval has ended."""
        if self._aggregator is not None:
            self._write(spec, self._aggregator.flush(time.monotonic()))

    def close(self, spec: SPODSpec) -> None:
        """Write every open JSON record and close the writer."""
        if self._aggregator is not None:
            self._write(spec, self._aggregator.drain())
        if self._writer is not None:
            self._writer.close()
        self._aggregator, self._writer = None, None


class Attributed(NamedTuple):
    """An event of a process in a container, and who that container is."""

    event: AuditEvent
    container_id: str
    start_time: int | None  # with the pid, names the process (None: attributed through its parent)
    info: ContainerInfo | None  # None while the pod watch has not reported the container


def attributed(block: str, pids: ContainerIds, index: ContainerIndex) -> Iterator[Attributed | Unparsable]:
    """The events of a block of audit lines with their containers, and its Unparsables; events of host
    processes, and of processes gone before their line was read (with no running ancestor in a
    container), are left out. The audit thread's work per event before dispatch, which
    bench/audit_bench.py measures."""
    lookup, get = pids.lookup_process, index.get  # bound once: this runs for every event
    with pids.batch():
        for event in parse_block(block):
            if isinstance(event, Unparsable):
                yield event
                continue
            found = lookup(event.pid)
            if found is not None:
                yield Attributed(event, found[0], found[1], get(found[0]))


class AuditPipeline:
    """The audit thread: see the module docstring. `source` makes the audit source given the callback
    it calls while idle; `new_containers` is called from the pod watch's thread."""

    def __init__(
        self,
        source: Callable[[Callable[[], None]], BlockSource],
        dispatch: Dispatch,
        index: ContainerIndex,
        spod_spec: Callable[[], SPODSpec],
        proc: Path,
        *,
        parent_of: Callable[[int], int | None] | None = None,
    ) -> None:
        self._source = source(self.housekeeping)
        self._dispatch = dispatch
        self._index = index
        self._spec = spod_spec
        self._pids = ContainerIds(proc, parent_of=parent_of)
        self._backlog: Backlog[tuple[AuditEvent, int | None]] = Backlog()
        self._known: queue.SimpleQueue[list[str]] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_housekeeping = 0.0

    def new_containers(self, container_ids: list[str]) -> None:
        self._known.put(container_ids)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="audit", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._dispatch.close(self._spec())

    def _run(self) -> None:
        try:
            for block in self._source.blocks(self._stop):
                spec = self._spec()
                if self._dispatch.outputs(spec):
                    self._block(spec, block)
                self.housekeeping()
        except OSError as error:
            log.error("the audit source failed, no more audit lines are read: %s", error)
        finally:
            # Here, not in stop(): the pid cache's fds are this thread's, which may outlive the join.
            self._pids.close()

    def _block(self, spec: SPODSpec, block: str) -> None:
        for item in attributed(block, self._pids, self._index):
            if isinstance(item, Unparsable):
                self._dispatch.metrics.unparsable.labels(item.record_type).inc()
            elif item.info is None:
                self._backlog.add(item.container_id, (item.event, item.start_time), time.monotonic())
            else:
                self._dispatch.event(spec, item.event, item.info, item.start_time)

    def housekeeping(self) -> None:
        """Dispatch the backlog of containers the watch now knows, flush due JSON records, expire the
        backlog; at most once a second. Also the source's idle callback."""
        now = time.monotonic()
        if now - self._last_housekeeping < HOUSEKEEPING_SECONDS and self._known.empty():
            return
        self._last_housekeeping = now
        spec = self._spec()
        while not self._known.empty():
            for container_id in self._known.get():
                info = self._index.get(container_id)
                for event, start_time in self._backlog.release(container_id, now):
                    if info is not None:
                        self._dispatch.event(spec, event, info, start_time)
        self._backlog.expire(now)
        self._dispatch.flush(spec)


def stdout_lines(stream: TextIO | None = None) -> Callable[[str], None]:
    """A thread-safe writer of whole lines to stdout (the log enricher's output, as upstream's)."""
    out = stream if stream is not None else sys.stdout
    lock = threading.Lock()

    def emit(line: str) -> None:
        with lock:
            out.write(f"{line}\n")
            out.flush()

    return emit


def audit_log_path(requested: Path) -> Path:
    """auditd's log when it exists at start-up, else syslog (upstream's choice, inventory §6.1)."""
    if requested.exists() or not Path(constants.SYSLOG_PATH).exists():
        return requested
    return Path(constants.SYSLOG_PATH)
