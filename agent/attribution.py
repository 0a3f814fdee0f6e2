"""Attribution of audit events to containers: pid -> container id -> pod, namespace, container.

What goes in and out, and which thread calls it:

- ``container_id_from_cgroup(text)`` and ``start_time_from_stat(text)`` (pure): the 64-hex container id
  of a ``/proc/<pid>/cgroup`` text (None for a host process), the start time of a ``/proc/<pid>/stat``.
- ``ContainerIds(proc, max_entries).lookup(pid) -> str | None`` (I/O, the audit pipeline's thread only):
  the container id of a live process, cached with an open fd of its ``<proc>/<pid>`` directory so that a
  reused pid is never given the old process's container; None for a host process or a pid that is gone;
  ``batch()`` checks each cached process once for a block of lines; ``close()`` closes the fds.
  ``fd_budget`` (pure) sizes the fd limit for them.
- ``containers_of(pod)`` (pure) and ``ContainerIndex`` (thread-safe): container id -> ``ContainerInfo``
  (namespace, pod, container, the pod's uid and labels, the container's recording annotations), fed with
  pods as the API returns them. ``update``/``replace`` return the ids new to the index, whose waiting
  events the caller then takes from the backlog.
- ``Backlog`` (thread-safe): events of a container id the index does not know yet, bounded in number
  and age; ``release(container_id, now)`` hands them back in arrival order.
- ``pod_selectors`` (pure) and ``watch_node_pods(api, node, memory_optimization, index)`` (I/O): the
  watch of this node's pods (label-selected with memory optimisation, docs 7.8.3) that keeps the index;
  its handler runs on the cache's thread.

Where we differ from upstream (inventory §6.2): the pod index follows a watch instead of listing every
pod of the node on each unknown container; the backlog is keyed by container id (a line whose process
is already gone still waits for its pod) and bounded by event count and age, with counters of what it
drops; a container's previous instance (``lastState.terminated``) still attributes, so the last lines of
a restarted container are not lost.
"""

from __future__ import annotations

import logging
import os
import re
import resource
import threading
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

from kubernetes import client
from pydantic import ConfigDict, Field, model_validator

from api import constants, kinds
from api.constants import PROC_CGROUP, PROC_STAT
from api.kube import ResourceCache
from api.types import KubernetesObject

log = logging.getLogger(__name__)

_CONTAINER_ID = re.compile(r"[0-9a-f]{64}")
_FULL_CONTAINER_ID = re.compile(r"[0-9a-f]{64}\Z")
# /proc/<pid>/stat: field 22 (starttime), counted from field 3, the first after the comm's ")".
_START_TIME_INDEX = 22 - 3
_STATUS_LISTS = ("initContainerStatuses", "containerStatuses", "ephemeralContainerStatuses")
_RUNTIME_SEPARATOR = "://"


# --- pid -> container id ---------------------------------------------------------------------------
def container_id_from_cgroup(text: str) -> str | None:
    """The container id of a ``/proc/<pid>/cgroup`` text: the last 64-hex match of the first line
    holding one (nested runtimes put the innermost id last); None when no line has one.

    No runtime-specific patterns, as upstream: containerd, CRI-O and docker, systemd and cgroupfs
    drivers, cgroup v1 and v2 all put the id in the path. A host process has no such path, and the id
    of a container that is no pod's (another runtime's) is never in the index, so never reported."""
    for line in text.splitlines():
        matches = _CONTAINER_ID.findall(line)
        if matches:
            return str(matches[-1])
    return None


def start_time_from_stat(text: str) -> int | None:
    """Field 22 (start time, in clock ticks since boot) of a ``/proc/<pid>/stat`` text; None if malformed.

    Parsed after the last ``)``: the comm before it may hold spaces and parentheses."""
    _, closing, rest = text.rpartition(")")
    fields = rest.split()
    if not closing or len(fields) <= _START_TIME_INDEX:
        return None
    try:
        return int(fields[_START_TIME_INDEX])
    except ValueError:
        return None


def _read_at(name: str, directory: int) -> str | None:
    """The whole of a small file of a process's /proc directory (an open fd), or None once the process
    is gone (or the file unreadable)."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC, dir_fd=directory)
    except OSError:
        return None
    try:
        return os.read(fd, 65536).decode("utf-8", "surrogateescape")
    except OSError:  # ESRCH: the process exited after the open
        return None
    finally:
        os.close(fd)


def fd_budget(soft: int, hard: int, wanted: int, reserve: int) -> tuple[int, int]:
    """The soft RLIMIT_NOFILE to set and how many pid cache entries (each an open fd) fit under it, for
    a cache that wants ``wanted`` entries beside ``reserve`` fds for the rest of the process: the soft
    limit is raised only as far as needed and the hard limit allows (``RLIM_INFINITY`` is -1); the
    cache shrinks when even the hard limit is too low, to one entry at least."""
    needed = wanted + reserve
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return soft, wanted
    limit = needed if hard == resource.RLIM_INFINITY else min(hard, needed)
    return max(soft, limit), max(1, min(wanted, limit - reserve))


def _fd_room(wanted: int) -> int:
    """Make room in this process's fd limit for ``wanted`` cached pid directories (see fd_budget);
    returns how many fit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    new_soft, entries = fd_budget(soft, hard, wanted, constants.PID_CACHE_FD_RESERVE)
    if new_soft != soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (new_soft, hard))
    if entries < wanted:
        log.warning(
            "the fd limit (%d, hard %d) leaves room for %d cached pids, not %d", soft, hard, entries, wanted
        )
    return entries


class ContainerIds:
    """pid -> container id through ``<proc>/<pid>/cgroup``, an LRU of ``max_entries`` pids.

    A cached answer is used only for the same process, so a reused pid is never attributed to the
    container of the process that had it before: each entry keeps the process's ``<proc>/<pid>``
    directory open, and a lookup relative to that fd fails once the process is gone, even if its pid
    was taken since (the fd names the old process; on a tree that is not the kernel's, the removed
    directory). One ``faccessat`` per lookup thus checks an entry, where reading and parsing the stat
    file cost several times as much; within a ``batch()`` (a block of lines), once per process. Once
    in a container's cgroup a process stays there, so a found id
    holds for the life of the process. The fds are as many as the entries, closed on eviction and by
    ``close``; the fd limit is raised to hold them (or the cache shrinks under it).
    Not thread-safe: the audit pipeline's thread owns it."""

    def __init__(
        self,
        proc: Path,
        max_entries: int = constants.PID_CACHE_MAX_ENTRIES,
        parent_of: Callable[[int], int | None] | None = None,
    ) -> None:
        """``parent_of`` (agent/lineage.py) names the parent of a pid that is gone: a short-lived child
        is attributed to the container of the ancestor that still runs (it started in its cgroup)."""
        if max_entries < 1:
            raise ValueError(f"max_entries must be at least 1, not {max_entries}")
        self._proc = str(proc)
        self._max_entries = _fd_room(max_entries)
        self._parent_of = parent_of
        # pid -> (the open fd of its /proc directory, (container id, start time)).
        self._cache: OrderedDict[int, tuple[int, tuple[str, int]]] = OrderedDict()
        self._batching = False
        # The pids found running in this batch; an entry filled again meanwhile was too (just read).
        self._checked: set[int] = set()

    def __len__(self) -> int:
        return len(self._cache)

    def lookup(self, pid: int) -> str | None:
        found = self.lookup_process(pid)
        return found[0] if found is not None else None

    def lookup_process(self, pid: int) -> tuple[str, int | None] | None:
        """The container id and the process's start time (which, with the pid, names the process; None
        for a process that is gone and was attributed through its parent)."""
        cached = self._cache.get(pid)
        # The common case, first: the cached process still runs (or was seen running in this batch).
        if cached is not None and (pid in self._checked or os.access(PROC_STAT, os.F_OK, dir_fd=cached[0])):
            if self._batching:
                self._checked.add(pid)
            self._cache.move_to_end(pid)
            return cached[1]
        running, found = self._live(pid)
        return found if running else self._through_parent(pid)

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Within, the lookups are for events read together (a block of lines): a cached process is
        checked once for all of them. They were all written before the batch was read, so the process
        found running at the first says for the others what a check at each would."""
        self._batching = True
        try:
            yield
        finally:
            self._batching = False
            self._checked.clear()

    def close(self) -> None:
        """Close the cached processes' fds and forget them (the cache fills again on use)."""
        self._checked.clear()
        while self._cache:
            os.close(self._cache.popitem()[1][0])

    def _live(self, pid: int) -> tuple[bool, tuple[str, int] | None]:
        """Whether the process runs (its stat is readable), and its container id and start time when it
        runs in a container: from the cache while the cached process runs, else read and cached."""
        cached = self._cache.get(pid)
        if cached is not None:
            if os.access(PROC_STAT, os.F_OK, dir_fd=cached[0]):
                self._cache.move_to_end(pid)
                return True, cached[1]
            os.close(self._cache.pop(pid)[0])
        try:
            directory = os.open(f"{self._proc}/{pid}", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            return False, None
        stat = _read_at(PROC_STAT, directory)
        start = start_time_from_stat(stat) if stat is not None else None
        # Read relative to the same fd, the cgroup file is the same process's even if it exits (the
        # read then fails) and its pid is taken meanwhile.
        cgroup = _read_at(PROC_CGROUP, directory) if start is not None else None
        container_id = container_id_from_cgroup(cgroup) if cgroup is not None else None
        if start is None or container_id is None:
            # A host process is not remembered: a process runc is starting is still in the host's
            # cgroup until it joins its container's.
            os.close(directory)
            return start is not None, None
        found = (container_id, start)
        self._cache[pid] = (directory, found)
        if self._batching:
            self._checked.add(pid)
        if len(self._cache) > self._max_entries:
            os.close(self._cache.popitem(last=False)[1][0])
        return True, found

    def _through_parent(self, pid: int) -> tuple[str, int | None] | None:
        ancestor: int | None = pid
        for _ in range(constants.LINEAGE_MAX_GENERATIONS):
            ancestor = self._parent_of(ancestor) if self._parent_of is not None and ancestor else None
            if not ancestor:
                return None
            running, found = self._live(ancestor)
            if running:
                return (found[0], None) if found is not None else None
        return None


# --- container id -> pod ---------------------------------------------------------------------------
@dataclass(frozen=True)
class ContainerInfo:
    """Who a container is, as the log enricher and the recorder need it."""

    container_id: str
    namespace: str
    pod: str
    container: str
    pod_uid: str = ""
    labels: Mapping[str, str] = field(default_factory=dict, hash=False)
    # The values of the pod's trace-logs and trace-avcs annotations for this container ("" when
    # absent): the recording its syscalls and its AVCs are collected for.
    seccomp_recording: str = ""
    selinux_recording: str = ""


def container_id_from_status(value: object) -> str | None:
    """The 64-hex id of a status ``containerID`` such as ``containerd://<id>``, ``cri-o://<id>``,
    ``docker://<id>``; None when it is not one."""
    if not isinstance(value, str):
        return None
    _, _, identifier = value.rpartition(_RUNTIME_SEPARATOR)
    return identifier if _FULL_CONTAINER_ID.match(identifier) else None


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _status_ids(status: Mapping[str, Any]) -> Iterable[object]:
    yield status.get("containerID")
    yield _mapping(_mapping(status.get("lastState")).get("terminated")).get("containerID")


def containers_of(pod: Mapping[str, Any]) -> tuple[tuple[ContainerInfo, ...], int]:
    """The containers of a pod (a dict as the API returns it) with an id, init, regular and ephemeral
    ones, each current and previous instance; and how many ids were skipped as malformed (an empty id,
    a container still being created, is not counted)."""
    metadata = _mapping(pod.get("metadata"))
    namespace, name = metadata.get("namespace"), metadata.get("name")
    if not isinstance(namespace, str) or not isinstance(name, str):
        return (), 0
    annotations = {k: v for k, v in _mapping(metadata.get("annotations")).items() if isinstance(v, str)}
    labels = {k: v for k, v in _mapping(metadata.get("labels")).items() if isinstance(v, str)}
    uid = metadata.get("uid")
    found: list[ContainerInfo] = []
    skipped = 0
    status = _mapping(pod.get("status"))
    for list_name in _STATUS_LISTS:
        statuses = status.get(list_name)
        for container_status in statuses if isinstance(statuses, list) else []:
            container = _mapping(container_status).get("name")
            if not isinstance(container, str):
                skipped += 1
                continue
            for raw_id in _status_ids(_mapping(container_status)):
                container_id = container_id_from_status(raw_id)
                if container_id is None:
                    skipped += bool(raw_id)
                    continue
                found.append(
                    ContainerInfo(
                        container_id=container_id,
                        namespace=namespace,
                        pod=name,
                        container=container,
                        pod_uid=uid if isinstance(uid, str) else "",
                        labels=labels,
                        seccomp_recording=annotations.get(
                            constants.ANNOTATION_TRACE_LOGS_PREFIX + container, ""
                        ),
                        selinux_recording=annotations.get(
                            constants.ANNOTATION_TRACE_AVCS_PREFIX + container, ""
                        ),
                    )
                )
    return tuple(found), skipped


class ContainerIndex:
    """container id -> ContainerInfo for the pods of this node, at most ``max_entries`` containers
    (the least recently updated pod's go first, counted in ``evicted``). Thread-safe: the pod watch
    writes, the audit pipeline reads."""

    def __init__(self, max_entries: int = constants.CONTAINER_INDEX_MAX_ENTRIES) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be at least 1, not {max_entries}")
        self._max_entries = max_entries
        self._lock = threading.Lock()
        self._by_id: OrderedDict[str, ContainerInfo] = OrderedDict()
        self._by_pod: dict[tuple[str, str], set[str]] = {}
        self.evicted = 0
        self.skipped = 0  # malformed container ids seen in pod statuses

    def __len__(self) -> int:
        return len(self._by_id)

    def get(self, container_id: str) -> ContainerInfo | None:
        return self._by_id.get(container_id)

    def update(self, pod: Mapping[str, Any]) -> list[str]:
        """Index the pod (added or modified) as the API returns it; returns the ids new to the index."""
        containers, skipped = containers_of(pod)
        metadata = _mapping(pod.get("metadata"))
        namespace, name = metadata.get("namespace"), metadata.get("name")
        if not isinstance(namespace, str) or not isinstance(name, str):
            return []
        return self.replace(namespace, name, containers, skipped)

    def replace(
        self, namespace: str, name: str, containers: Sequence[ContainerInfo], skipped: int = 0
    ) -> list[str]:
        """Make ``containers`` the pod's whole set (``skipped``: malformed ids left out of it);
        returns the ids new to the index."""
        key = (namespace, name)
        with self._lock:
            self.skipped += skipped
            ids = {info.container_id for info in containers}
            for gone in self._by_pod.pop(key, set()) - ids:
                self._by_id.pop(gone, None)
            new = [i for i in dict.fromkeys(c.container_id for c in containers) if i not in self._by_id]
            for info in containers:
                self._by_id.pop(info.container_id, None)  # to the end: the most recently updated
                self._by_id[info.container_id] = info
            if ids:
                self._by_pod[key] = ids
            while len(self._by_id) > self._max_entries:
                evicted, info = self._by_id.popitem(last=False)
                self._discard(evicted, (info.namespace, info.pod))
                self.evicted += 1
            return [i for i in new if i in self._by_id]

    def remove(self, namespace: str, name: str) -> None:
        """Forget a deleted pod's containers."""
        with self._lock:
            self._forget((namespace, name))

    def _forget(self, key: tuple[str, str]) -> None:
        for container_id in self._by_pod.pop(key, ()):
            self._by_id.pop(container_id, None)

    def _discard(self, container_id: str, key: tuple[str, str]) -> None:
        ids = self._by_pod.get(key)
        if ids is not None:
            ids.discard(container_id)
            if not ids:
                del self._by_pod[key]


# --- events waiting for their pod ------------------------------------------------------------------
E = TypeVar("E")


class Backlog(Generic[E]):
    """Events of containers the index does not know yet, in arrival order, at most ``max_events`` in
    all and none older than ``max_age`` seconds: past either bound the oldest go first, counted in
    ``dropped_full`` and ``dropped_expired``. Times are the caller's clock (``now``), so that this
    stays pure. Thread-safe."""

    def __init__(
        self,
        max_events: int = constants.BACKLOG_MAX_EVENTS,
        max_age: float = constants.BACKLOG_MAX_AGE_SECONDS,
    ) -> None:
        if max_events < 1 or max_age <= 0:
            raise ValueError(f"a backlog needs room and time, not {max_events} events for {max_age}s")
        self._max_events = max_events
        self._max_age = max_age
        self._lock = threading.Lock()
        self._sequence = 0
        # Every waiting event by arrival number, oldest first; each container's arrival numbers.
        self._events: OrderedDict[int, tuple[str, float, E]] = OrderedDict()
        self._by_container: dict[str, deque[int]] = {}
        self.dropped_full = 0
        self.dropped_expired = 0

    def __len__(self) -> int:
        return len(self._events)

    def add(self, container_id: str, event: E, now: float) -> None:
        with self._lock:
            self._expire(now)
            if len(self._events) >= self._max_events:
                self._drop_oldest()
                self.dropped_full += 1
            self._sequence += 1
            self._events[self._sequence] = (container_id, now, event)
            self._by_container.setdefault(container_id, deque()).append(self._sequence)

    def release(self, container_id: str, now: float) -> list[E]:
        """The container's waiting events, oldest first, and forget them."""
        with self._lock:
            self._expire(now)
            return [self._events.pop(n)[2] for n in self._by_container.pop(container_id, ())]

    def expire(self, now: float) -> None:
        """Drop the events older than the maximum age (add and release do it too)."""
        with self._lock:
            self._expire(now)

    def _expire(self, now: float) -> None:
        while self._events and next(iter(self._events.values()))[1] < now - self._max_age:
            self._drop_oldest()
            self.dropped_expired += 1

    def _drop_oldest(self) -> None:
        _, (container_id, _, _) = self._events.popitem(last=False)
        # The oldest event overall is the oldest of its container.
        waiting = self._by_container[container_id]
        waiting.popleft()
        if not waiting:
            del self._by_container[container_id]


# --- the watch of this node's pods -----------------------------------------------------------------
def pod_selectors(node_name: str, memory_optimization: bool) -> tuple[str, str | None]:
    """The field selector and the label selector (None: every pod) of the agent's pod watch."""
    labels = (
        f"{constants.LABEL_ENABLE_RECORDING}={constants.ENABLE_RECORDING_LABEL_VALUE}"
        if memory_optimization
        else None
    )
    return f"{constants.FIELD_SELECTOR_POD_NODE_NAME}={node_name}", labels


class NodePod(KubernetesObject):
    """What the watch keeps of a pod: its identity and its containers, nothing else of the pod."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    containers: tuple[ContainerInfo, ...] = ()
    skipped_ids: int = Field(default=0, exclude=True)

    @model_validator(mode="before")
    @classmethod
    def _summarise(cls, raw: Any) -> Any:
        if not isinstance(raw, Mapping) or "containers" in raw:
            return raw
        metadata = _mapping(raw.get("metadata"))
        containers, skipped = containers_of(raw)
        return {
            "apiVersion": raw.get("apiVersion"),
            "kind": raw.get("kind"),
            "metadata": {key: metadata.get(key) for key in ("name", "namespace", "uid", "resourceVersion")},
            "containers": containers,
            "skippedIds": skipped,
        }


def watch_node_pods(
    api: client.ApiClient,
    node_name: str,
    memory_optimization: bool,
    index: ContainerIndex,
    on_new_containers: Callable[[list[str]], None] | None = None,
) -> ResourceCache[NodePod]:
    """A cache (not started) of this node's pods that keeps ``index`` in step with them.

    ``on_new_containers`` hears, on the cache's thread, the ids each change added to the index; keep
    it short: hand the ids to the audit pipeline's thread and release their backlog there. (Released
    here, an event the pipeline backlogs just after its lookup missed, but just before this release,
    would wait until it expires.)"""
    fields, labels = pod_selectors(node_name, memory_optimization)
    cache = ResourceCache(api, kinds.POD, NodePod, label_selector=labels, field_selector=fields)

    def changed(pod: NodePod) -> None:
        namespace, name = pod.metadata.namespace or "", pod.metadata.name or ""
        # A re-list reports changes in bulk: the cache's current state is what the index must hold.
        current = cache.get(name, namespace)
        if current is None:
            index.remove(namespace, name)
            return
        new = index.replace(namespace, name, current.containers, current.skipped_ids)
        if new and on_new_containers is not None:
            on_new_containers(new)

    cache.add_event_handler(changed)
    return cache
