"""The reconciler's controller runtime: caches, work queues, leader election and the one apply path.

How to add a controller
-----------------------
1. Write the pure part: observed objects in, desired objects (plain dicts) out, in a module of its
   own with table-driven unit tests; no API calls there.
2. Write ``reconcile(key) -> float | None``: read the caches (never list the API), call the pure
   function, write the difference with ``apply()`` (server-side apply as our field manager, so only
   the fields we set are ours and another actor's fields are left alone). Return None when done, or
   seconds after which to look again when waiting on something no cache watches. Raise on failure:
   the key is retried with per-key exponential backoff. Reconcile is level-triggered and must be
   idempotent: it may run any number of times for a key, and a crash at any line converges on the
   next pass.
3. Build a ``Controller(name, reconcile, watches=[Watch(cache, keys_of)])`` where ``keys_of`` maps a
   changed object to the keys to reconcile (its own ``namespace/name`` for the primary kind, the
   owner's key for owned objects). Keys are plain strings; a queue holds each key at most once and
   never hands the same key to two workers at a time, so a reconcile never races itself.
4. Register the caches and the controller with the ``Manager`` (``manager.cache(...)``,
   ``manager.add(controller)``). The manager starts every cache at once, so a standby replica is
   ready to take over with warm caches (controller-runtime does the same), but runs controllers
   only while it holds the leader Lease: when it takes the lease each controller first enqueues the
   key of every object it watches (plus its ``resync_keys``), so nothing that changed while another
   replica led, or while nobody did, is missed.

Leader election follows client-go: a ``coordination.k8s.io/v1`` Lease in the operator namespace;
the holder renews it every ``retry_period``; a candidate takes it over once it has seen the same
record unchanged for ``lease_duration`` (measured on its own clock, so clock skew between machines
does not matter); a leader that cannot renew within ``renew_deadline`` (shorter than the lease
duration) stops its controllers before anyone else may take over, so two replicas never both act.
"""

from __future__ import annotations

import datetime
import functools
import heapq
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from api import constants
from api.kinds import BuiltinKind, ResourceKind
from api.kube import ResourceCache, server_side_apply

log = logging.getLogger(__name__)

_HTTP_NOT_FOUND = 404
_HTTP_CONFLICT = 409


# --- the one apply path -----------------------------------------------------------------------------


def apply(
    api: client.ApiClient,
    kind: BuiltinKind | ResourceKind,
    obj: dict[str, Any],
    *,
    subresource: str = "",
    force: bool = True,
) -> dict[str, Any]:
    """Server-side apply ``obj`` as the reconciler's field manager (api.kube.server_side_apply); returns
    the object as stored. ``obj`` holds exactly the fields we own (with apiVersion, kind, metadata.name
    and, if namespaced, metadata.namespace)."""
    return server_side_apply(
        api,
        kind,
        obj,
        constants.FIELD_MANAGER,
        namespaced=kind.namespaced,
        subresource=subresource,
        force=force,
    )


def delete(api: client.ApiClient, kind: BuiltinKind | ResourceKind, name: str, namespace: str = "") -> bool:
    """Delete one object (its dependents in the background); False when it was already gone."""
    objects = client.CustomObjectsApi(api)
    try:
        if kind.namespaced:
            objects.delete_namespaced_custom_object(kind.group, kind.version, namespace, kind.plural, name)
        else:
            objects.delete_cluster_custom_object(kind.group, kind.version, kind.plural, name)
    except ApiException as error:
        if error.status == _HTTP_NOT_FOUND:
            return False
        raise
    return True


def add_finalizer(api: client.ApiClient, kind: BuiltinKind | ResourceKind, obj: Any, finalizer: str) -> bool:
    """Add one finalizer to a parsed object, guarded by its uid (an apply would re-create an object
    deleted meanwhile). False when the object is gone or already has it."""
    finalizers = obj.metadata.finalizers
    if finalizers is not None and finalizer in finalizers:
        return False
    add = (
        {"op": "add", "path": "/metadata/finalizers", "value": [finalizer]}
        if finalizers is None
        else {"op": "add", "path": "/metadata/finalizers/-", "value": finalizer}
    )
    return guarded_patch(api, kind, obj, [add])


def remove_finalizer(
    api: client.ApiClient, kind: BuiltinKind | ResourceKind, obj: Any, finalizer: str
) -> bool:
    """Remove one finalizer from a parsed object, guarded by its uid and the entry's position: never
    removes another's entry if the list changed meanwhile (the test fails with 422 and the caller
    retries). False when the object or the finalizer is already gone."""
    finalizers = list(obj.metadata.finalizers or [])
    if finalizer not in finalizers:
        return False
    index = finalizers.index(finalizer)
    return guarded_patch(
        api,
        kind,
        obj,
        [
            {"op": "test", "path": f"/metadata/finalizers/{index}", "value": finalizer},
            {"op": "remove", "path": f"/metadata/finalizers/{index}"},
        ],
    )


def guarded_patch(
    api: client.ApiClient, kind: BuiltinKind | ResourceKind, obj: Any, operations: list[dict[str, Any]]
) -> bool:
    """A JSON patch that applies only to this very object (same uid); False when it is gone."""
    patch = [{"op": "test", "path": "/metadata/uid", "value": obj.metadata.uid}, *operations]
    objects = client.CustomObjectsApi(api)
    args: tuple[str, ...] = (kind.group, kind.version)
    if kind.namespaced:
        args += (obj.metadata.namespace,)
    args += (kind.plural, obj.metadata.name)
    scope = "namespaced" if kind.namespaced else "cluster"
    try:
        getattr(objects, f"patch_{scope}_custom_object")(
            *args, patch, _content_type="application/json-patch+json"
        )
    except ApiException as error:
        if error.status == _HTTP_NOT_FOUND:
            return False
        raise
    return True


# --- work queue ------------------------------------------------------------------------------------


class WorkQueue:
    """Keys to reconcile: each key queued at most once, never handed to two workers at a time (a key
    added while it is being processed is queued again when ``done``), delayed re-adds, and per-key
    exponential backoff for keys that keep failing."""

    def __init__(self, base_delay: float = 0.05, max_delay: float = 60.0) -> None:
        self._base_delay = base_delay
        self._max_delay = max_delay
        self._cond = threading.Condition()
        self._queue: deque[str] = deque()
        self._dirty: set[str] = set()
        self._processing: set[str] = set()
        self._delayed: list[tuple[float, int, str]] = []
        self._sequence = itertools.count()
        self._failures: dict[str, int] = {}
        self._shutting_down = False

    def __len__(self) -> int:
        with self._cond:
            return len(self._queue)

    def add(self, key: str) -> None:
        with self._cond:
            if self._shutting_down or key in self._dirty:
                return
            self._dirty.add(key)
            if key not in self._processing:
                self._queue.append(key)
                self._cond.notify()

    def add_after(self, key: str, delay: float) -> None:
        if delay <= 0:
            self.add(key)
            return
        with self._cond:
            if self._shutting_down:
                return
            heapq.heappush(self._delayed, (time.monotonic() + delay, next(self._sequence), key))
            self._cond.notify()

    def add_rate_limited(self, key: str) -> float:
        """Re-add a key that failed, after a delay doubling with each consecutive failure."""
        with self._cond:
            failures = self._failures[key] = self._failures.get(key, 0) + 1
        delay = min(self._base_delay * 2.0 ** (failures - 1), self._max_delay)
        self.add_after(key, delay)
        return delay

    def forget(self, key: str) -> None:
        """The key succeeded: its next failure starts the backoff from the beginning."""
        with self._cond:
            self._failures.pop(key, None)

    def get(self) -> str | None:
        """The next key to process (call ``done`` with it afterwards); None once shut down."""
        with self._cond:
            while True:
                if self._shutting_down:
                    return None
                timeout = self._promote_due()
                if self._queue:
                    key = self._queue.popleft()
                    self._dirty.discard(key)
                    self._processing.add(key)
                    return key
                self._cond.wait(timeout)

    def done(self, key: str) -> None:
        with self._cond:
            self._processing.discard(key)
            if key in self._dirty:
                self._queue.append(key)
                self._cond.notify()

    def shut_down(self) -> None:
        with self._cond:
            self._shutting_down = True
            self._cond.notify_all()

    def _promote_due(self) -> float | None:
        """Move due delayed keys into the queue; returns how long until the next one is due."""
        now = time.monotonic()
        while self._delayed and self._delayed[0][0] <= now:
            _, _, key = heapq.heappop(self._delayed)
            if key not in self._dirty:
                self._dirty.add(key)
                if key not in self._processing:
                    self._queue.append(key)
        return self._delayed[0][0] - now if self._delayed else None


# --- controllers -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Watch:
    """A cache whose changes trigger a controller, and which keys a changed object maps to."""

    cache: ResourceCache[Any]
    keys_of: Callable[[Any], Iterable[str]]


def own_key(obj: Any) -> Iterable[str]:
    """The key of the object itself: ``namespace/name`` (``/name`` when cluster-scoped)."""
    return (f"{obj.metadata.namespace or ''}/{obj.metadata.name}",)


def split_key(key: str) -> tuple[str, str]:
    """``namespace/name`` -> (namespace, name)."""
    namespace, _, name = key.partition("/")
    return namespace, name


class Metrics:
    """Per-controller work queue and reconcile metrics, named as controller-runtime names them so
    existing dashboards and alerts apply."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.depth = Gauge("workqueue_depth", "Current depth of the work queue", ["name"], registry=registry)
        self.reconciles = Counter(
            "controller_runtime_reconcile_total",
            "Reconciliations per controller and result",
            ["controller", "result"],
            registry=registry,
        )
        self.errors = Counter(
            "controller_runtime_reconcile_errors_total",
            "Reconciliations that failed, per controller",
            ["controller"],
            registry=registry,
        )
        self.latency = Histogram(
            "controller_runtime_reconcile_time_seconds",
            "Time per reconciliation, per controller",
            ["controller"],
            registry=registry,
        )
        self.leader = Gauge(
            "leader_election_master_status",
            "1 while this replica holds the leader lease",
            ["name"],
            registry=registry,
        )


class Controller:
    """One kind of desired state: a work queue of keys fed by its watches, worked off by
    ``workers`` threads calling ``reconcile``. Started and stopped by the Manager with leadership."""

    def __init__(
        self,
        name: str,
        reconcile: Callable[[str], float | None],
        watches: Sequence[Watch],
        *,
        workers: int = 1,
        resync_keys: Callable[[], Iterable[str]] = tuple,
    ) -> None:
        self.name = name
        self.reconcile = reconcile
        self.watches = tuple(watches)
        self.workers = workers
        self.resync_keys = resync_keys
        self._queue: WorkQueue | None = None
        self._threads: list[threading.Thread] = []
        self._metrics: Metrics | None = None
        for watch in self.watches:
            watch.cache.add_event_handler(functools.partial(self._on_event, watch.keys_of))

    def enqueue(self, key: str) -> None:
        """Reconcile ``key`` soon (dropped while the controller is not running: it resyncs on start)."""
        self._enqueue((key,))

    @property
    def running(self) -> bool:
        return self._queue is not None

    def queue_depth(self) -> int:
        queue = self._queue
        return len(queue) if queue is not None else 0

    def start(self, metrics: Metrics) -> None:
        self._metrics = metrics
        queue = self._queue = WorkQueue()
        for watch in self.watches:
            for obj in watch.cache.items():
                for key in watch.keys_of(obj):
                    queue.add(key)
        for key in self.resync_keys():
            queue.add(key)
        self._threads = [
            threading.Thread(target=self._work, args=(queue,), name=f"{self.name}-{i}", daemon=True)
            for i in range(self.workers)
        ]
        for thread in self._threads:
            thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop taking keys; a reconcile in progress finishes (it cannot be interrupted mid-write)."""
        queue, self._queue = self._queue, None
        if queue is not None:
            queue.shut_down()
        for thread in self._threads:
            thread.join(timeout)
        self._threads = []

    def _on_event(self, keys_of: Callable[[Any], Iterable[str]], obj: Any) -> None:
        self._enqueue(keys_of(obj))

    def _enqueue(self, keys: Iterable[str]) -> None:
        queue = self._queue
        if queue is None:
            return
        for key in keys:
            queue.add(key)
        if self._metrics is not None:
            self._metrics.depth.labels(self.name).set(len(queue))

    def _work(self, queue: WorkQueue) -> None:
        metrics = self._metrics
        assert metrics is not None
        while (key := queue.get()) is not None:
            metrics.depth.labels(self.name).set(len(queue))
            started = time.monotonic()
            try:
                again = self.reconcile(key)
            except Exception as error:
                delay = queue.add_rate_limited(key)
                metrics.errors.labels(self.name).inc()
                metrics.reconciles.labels(self.name, "error").inc()
                log.warning("%s %s: %s (retrying in %.2fs)", self.name, key, error, delay, exc_info=True)
            else:
                queue.forget(key)
                if again is not None:
                    queue.add_after(key, again)
                metrics.reconciles.labels(
                    self.name, "requeue_after" if again is not None else "success"
                ).inc()
            finally:
                metrics.latency.labels(self.name).observe(time.monotonic() - started)
                queue.done(key)


# --- leader election -------------------------------------------------------------------------------


@dataclass(frozen=True)
class LeaseTiming:
    """client-go's defaults; renew_deadline < lease_duration is what keeps two leaders apart."""

    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0

    def __post_init__(self) -> None:
        if not 0 < self.retry_period < self.renew_deadline < self.lease_duration:
            raise ValueError("need 0 < retry_period < renew_deadline < lease_duration")


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


class LeaderElector:
    """Holds (or waits for) the leader Lease; ``is_leader`` is true only while the last successful
    renewal is younger than the renew deadline."""

    def __init__(
        self,
        api: client.ApiClient,
        namespace: str,
        identity: str,
        timing: LeaseTiming,
        name: str = constants.LEADER_LEASE,
    ) -> None:
        self._leases = client.CoordinationV1Api(api)
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.timing = timing
        # The record we last saw and when (our monotonic clock) it last changed.
        self._observed: tuple[str | None, str | None, int] | None = None
        self._observed_at = 0.0
        self._renewed_at: float | None = None

    def is_leader(self) -> bool:
        renewed = self._renewed_at
        return renewed is not None and time.monotonic() - renewed < self.timing.renew_deadline

    def try_acquire_or_renew(self) -> bool:
        """One attempt; True when we hold the lease afterwards."""
        try:
            lease = self._leases.read_namespaced_lease(
                self.name, self.namespace, _request_timeout=self.timing.retry_period
            )
        except ApiException as error:
            if error.status != _HTTP_NOT_FOUND:
                raise
            return self._create()
        spec = lease.spec or client.V1LeaseSpec()
        record = (spec.holder_identity, str(spec.renew_time), spec.lease_transitions or 0)
        now = time.monotonic()
        if record != self._observed:
            self._observed, self._observed_at = record, now
        held_by_other = spec.holder_identity not in (None, "", self.identity)
        duration = spec.lease_duration_seconds or self.timing.lease_duration
        if held_by_other and now - self._observed_at < duration:
            self._renewed_at = None
            return False
        if spec.holder_identity != self.identity:
            spec.acquire_time = _now()
            spec.lease_transitions = (spec.lease_transitions or 0) + 1
        spec.holder_identity = self.identity
        spec.lease_duration_seconds = int(self.timing.lease_duration)
        spec.renew_time = _now()
        lease.spec = spec
        try:
            # The resourceVersion read above makes this a compare-and-swap: a rival's write wins.
            self._leases.replace_namespaced_lease(
                self.name, self.namespace, lease, _request_timeout=self.timing.retry_period
            )
        except ApiException as error:
            if error.status != _HTTP_CONFLICT:
                raise
            return False
        self._renewed_at = now
        return True

    def release(self) -> None:
        """Give the lease up at once (clean shutdown), so a standby need not wait for it to expire."""
        if self._renewed_at is None:
            return
        self._renewed_at = None
        try:
            lease = self._leases.read_namespaced_lease(self.name, self.namespace)
            if lease.spec and lease.spec.holder_identity == self.identity:
                lease.spec.holder_identity = None
                lease.spec.lease_duration_seconds = 1
                self._leases.replace_namespaced_lease(self.name, self.namespace, lease)
        except ApiException as error:
            log.warning("could not release the leader lease: %s", error)

    def _create(self) -> bool:
        now = _now()
        body = client.V1Lease(
            metadata=client.V1ObjectMeta(name=self.name, namespace=self.namespace),
            spec=client.V1LeaseSpec(
                holder_identity=self.identity,
                lease_duration_seconds=int(self.timing.lease_duration),
                acquire_time=now,
                renew_time=now,
                lease_transitions=0,
            ),
        )
        try:
            self._leases.create_namespaced_lease(self.namespace, body)
        except ApiException as error:
            if error.status != _HTTP_CONFLICT:
                raise
            return False
        self._renewed_at = time.monotonic()
        return True


# --- manager ---------------------------------------------------------------------------------------


@dataclass
class Manager:
    """Starts the caches, and runs the controllers exactly while this replica leads.

    Without an elector (``--leader-elect=false``, a single replica) it leads from the start."""

    elector: LeaderElector | None = None
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    caches: list[ResourceCache[Any]] = field(default_factory=list)
    controllers: list[Controller] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.metrics = Metrics(self.registry)
        self._stopping = threading.Event()
        self._leading = False
        self._thread = threading.Thread(target=self._run, name="manager", daemon=True)

    def cache(self, cache: ResourceCache[Any]) -> ResourceCache[Any]:
        self.caches.append(cache)
        return cache

    def add(self, controller: Controller) -> Controller:
        self.controllers.append(controller)
        return controller

    def ready(self) -> bool:
        """Readiness: every cache has listed once (a standby is ready too, to take over at once)."""
        return all(cache.has_synced() for cache in self.caches)

    @property
    def leading(self) -> bool:
        return self._leading

    def start(self) -> Manager:
        for cache in self.caches:
            cache.start()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(30)
        for cache in self.caches:
            cache.stop()

    def _run(self) -> None:
        while not self._stopping.is_set() and not self.ready():
            self._stopping.wait(0.1)
        if self.elector is None:
            self._lead()
            self._stopping.wait()
            self._follow()
            return
        period = self.elector.timing.retry_period
        while not self._stopping.is_set():
            try:
                self.elector.try_acquire_or_renew()
            except Exception as error:
                log.warning("leader election: %s", error)
            if self.elector.is_leader():
                self._lead()
            else:
                self._follow()
            self._stopping.wait(period)
        self._follow()
        self.elector.release()

    def _lead(self) -> None:
        if self._leading:
            return
        log.info("leading: starting %d controllers", len(self.controllers))
        self._leading = True
        self._set_leader_metric(1)
        for controller in self.controllers:
            controller.start(self.metrics)

    def _follow(self) -> None:
        if not self._leading:
            return
        log.info("not leading (any more): stopping controllers")
        self._leading = False
        self._set_leader_metric(0)
        for controller in self.controllers:
            controller.stop()

    def _set_leader_metric(self, value: int) -> None:
        name = self.elector.name if self.elector is not None else constants.LEADER_LEASE
        self.metrics.leader.labels(name).set(value)
