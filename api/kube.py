"""The one Kubernetes access layer the operator's processes share: a client from a kubeconfig or the
pod's service account, and list+watch caches of our resources.

A cache lists once, then watches from the list's resourceVersion; when the apiserver answers
410 Gone (the version fell out of its window) it lists again, and on any other error it reconnects
with a capped backoff. Readers only ever see fully parsed objects, and, apart, the stored objects
that the models reject (InvalidObject), so that nothing stored silently disappears.
"""

from __future__ import annotations

import datetime
import json
import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any, Generic, Protocol, TypeVar, cast

import pydantic
from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException

from api.types import InvalidObject, KubernetesObject, Resource

log = logging.getLogger(__name__)

R = TypeVar("R", bound=Resource | KubernetesObject)
# Called with each object a watch event or a re-list changed (its last known state when deleted).
EventHandler = Callable[[R], None]


class Watchable(Protocol):
    """Where a kind is served: api.kinds.ResourceKind (ours) and api.kinds.BuiltinKind both are."""

    @property
    def group(self) -> str: ...
    @property
    def version(self) -> str: ...
    @property
    def plural(self) -> str: ...
    @property
    def kind(self) -> str: ...
    @property
    def api_version(self) -> str: ...


WATCH_TIMEOUT_SECONDS = 300
_MAX_BACKOFF_SECONDS = 30.0
_HTTP_GONE = 410


# Connections the client keeps open for requests (a watch holds its own while it streams). A request
# that finds none idle opens a new TLS connection, and one given back to a full pool is closed
# ("Connection pool is full"): the pool must hold one per thread that makes requests, the
# reconciler's workers above all. The client's default, 5 per CPU, is 5 on a one-CPU machine.
CONNECTION_POOL_SIZE = 32


def api_client(kubeconfig: str | None = None) -> client.ApiClient:
    """A client for the kubeconfig given (or $KUBECONFIG / ~/.kube/config), else the in-cluster one."""
    configuration = client.Configuration()
    configuration.connection_pool_maxsize = CONNECTION_POOL_SIZE
    try:
        return cast(
            client.ApiClient,
            config.new_client_from_config(config_file=kubeconfig, client_configuration=configuration),  # type: ignore[no-untyped-call]
        )
    except config.ConfigException:
        if kubeconfig:
            raise
    config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    return client.ApiClient(configuration)


_APPLY_CONTENT_TYPE = "application/apply-patch+yaml"


def server_side_apply(
    api: client.ApiClient,
    kind: Watchable,
    obj: dict[str, Any],
    field_manager: str,
    *,
    namespaced: bool,
    subresource: str = "",
    force: bool = True,
) -> dict[str, Any]:
    """Server-side apply ``obj`` (of a kind served under /apis) as ``field_manager``; returns the object
    as stored. ``obj`` holds exactly the fields that manager owns: a field it applied before and leaves
    out now is removed, a field another manager set is kept; ``force`` takes over fields another manager
    changed, right for fields only this manager may write (ARCHITECTURE.md: one writer per field)."""
    objects = client.CustomObjectsApi(api)
    options: dict[str, Any] = {
        "field_manager": field_manager,
        "force": force,
        "field_validation": "Strict",
        "_content_type": _APPLY_CONTENT_TYPE,
        # The client only decodes 200 answers; an apply that creates answers 201.
        "_preload_content": False,
    }
    args: tuple[str, ...] = (kind.group, kind.version)
    if namespaced:
        args += (obj["metadata"]["namespace"],)
    args += (kind.plural, obj["metadata"]["name"])
    scope = "namespaced" if namespaced else "cluster"
    call = getattr(objects, f"patch_{scope}_custom_object{'_' + subresource if subresource else ''}")
    result: dict[str, Any] = json.loads(call(*args, obj, **options).data)
    return result


class ResourceCache(Generic[R]):
    """An in-memory, always-parsed copy of every object of one kind, kept by list+watch.

    Works for any kind served under /apis/<group>/<version> (ours and built-in ones such as
    DaemonSets or webhook configurations) or, with an empty group, under /api/v1 (pods);
    handlers added with add_event_handler hear every change. A watch event costs O(1) whatever
    the number of objects: the namespace grouping and the indexes (add_index) are updated for the
    one object that changed, and a group's tuple is built again only when a reader asks for it.
    `label_selector` and `field_selector` restrict what is listed and watched (the agent's watch of its
    node's pods: `spec.nodeName=<node>`, label-selected under memory optimisation)."""

    def __init__(
        self,
        api: client.ApiClient,
        kind: Watchable,
        model: type[R],
        namespace: str | None = None,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> None:
        """``namespace``: watch that namespace only (where a Role, not a ClusterRole, grants reading)."""
        self._api = api
        self._custom = client.CustomObjectsApi(api)
        self._kind = kind
        self._namespace = namespace
        self._model = model
        self._label_selector = label_selector
        self._field_selector = field_selector
        self._objects: dict[str, R] = {}
        self._by_namespace: _Groups[R] = _Groups()
        self._invalid: dict[str, InvalidObject] = {}
        self._invalid_by_namespace: _Groups[InvalidObject] = _Groups()
        self._indexes: dict[str, tuple[Callable[[R], Iterable[str]], _Groups[R]]] = {}
        self._handlers: list[EventHandler[R]] = []
        self._lock = threading.Lock()
        self._synced = threading.Event()
        self._stopping = threading.Event()
        self._stream: watch.Watch | None = None
        self._thread = threading.Thread(target=self._run, name=f"cache-{kind.plural}", daemon=True)

    # --- readers -------------------------------------------------------------------------------
    @property
    def kind(self) -> Watchable:
        return self._kind

    def get(self, name: str, namespace: str = "") -> R | None:
        return self._objects.get(f"{namespace}/{name}")

    def in_namespace(self, namespace: str) -> tuple[R, ...]:
        """The namespace's objects ("" for cluster-scoped ones); the same tuple until one of them changes."""
        with self._lock:
            return self._by_namespace.members(namespace)

    def items(self) -> tuple[R, ...]:
        with self._lock:
            return tuple(self._objects.values())

    def add_index(self, name: str, values_of: Callable[[R], Iterable[str]]) -> None:
        """Index the objects by the values `values_of` gives for each; add before start."""
        self._indexes[name] = (values_of, _Groups())

    def by_index(self, name: str, value: str) -> tuple[R, ...]:
        """The objects for which the index `name` holds `value`."""
        with self._lock:
            return self._indexes[name][1].members(value)

    def add_event_handler(self, handler: EventHandler[R]) -> None:
        """Handlers run on the cache's thread after the change is visible to readers: keep them
        short (a controller only enqueues keys)."""
        self._handlers.append(handler)

    def invalid_in(self, namespace: str) -> tuple[InvalidObject, ...]:
        """The stored objects of the namespace ("" for cluster-scoped ones) that the model rejects."""
        with self._lock:
            return self._invalid_by_namespace.members(namespace)

    def has_synced(self) -> bool:
        return self._synced.is_set()

    def wait_synced(self, timeout: float) -> bool:
        return self._synced.wait(timeout)

    # --- lifecycle -----------------------------------------------------------------------------
    def start(self) -> ResourceCache[R]:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop now: closing the watch's response also frees the apiserver, which otherwise waits
        on the open watch when it shuts down."""
        self._stopping.set()
        stream = self._stream
        if stream is not None:
            stream.stop()  # type: ignore[no-untyped-call]
            response = getattr(stream, "_resp", None)
            if response is not None:
                response.close()

    def _run(self) -> None:
        backoff = 0.5
        while not self._stopping.is_set():
            try:
                resource_version = self._list()
                backoff = 0.5
                while not self._stopping.is_set():
                    # A watch ends after WATCH_TIMEOUT_SECONDS; resume where it stopped, no re-list.
                    resource_version = self._watch(resource_version)
            except Exception as error:
                if self._stopping.is_set():
                    return
                if isinstance(error, ApiException) and error.status == _HTTP_GONE:
                    log.info("%s: resourceVersion expired, listing again", self._kind.plural)
                    continue
                log.warning(
                    "%s: list/watch failed (%s), retrying in %.1fs", self._kind.plural, error, backoff
                )
            self._stopping.wait(backoff)
            backoff = min(backoff * 2, _MAX_BACKOFF_SECONDS)

    def _list_call(self, **kwargs: Any) -> Any:
        if self._label_selector:
            kwargs["label_selector"] = self._label_selector
        if self._field_selector:
            kwargs["field_selector"] = self._field_selector
        if not self._kind.group:
            # The core group has no generic list in the client, only methods per kind (pods here).
            core = client.CoreV1Api(self._api)
            kind = self._kind.kind.lower()
            if self._namespace is not None:
                return getattr(core, f"list_namespaced_{kind}")(self._namespace, **kwargs)
            return getattr(core, f"list_{kind}_for_all_namespaces")(**kwargs)
        if self._namespace is not None:
            return self._custom.list_namespaced_custom_object(
                self._kind.group, self._kind.version, self._namespace, self._kind.plural, **kwargs
            )
        return self._custom.list_cluster_custom_object(
            self._kind.group, self._kind.version, self._kind.plural, **kwargs
        )

    def _list(self) -> str:
        # Undecoded: the core client would build its typed models of every object, only to be dropped.
        listing = json.loads(self._list_call(_preload_content=False).data)
        fresh: dict[str, R] = {}
        invalid: dict[str, InvalidObject] = {}
        for raw in listing.get("items", []):
            # Items of built-in kinds come without their type, which only the list names.
            raw.setdefault("apiVersion", self._kind.api_version)
            raw.setdefault("kind", self._kind.kind)
            parsed = self._parse(raw)
            if isinstance(parsed, InvalidObject):
                invalid[_raw_key(raw)] = parsed
            else:
                fresh[_raw_key(raw)] = parsed
        with self._lock:
            previous = dict(self._objects)  # the loop below empties self._objects in place
            for key in set(self._objects) | set(self._invalid):
                self._remove(key)
            for key, obj in fresh.items():
                self._put(key, obj)
            for key, bad in invalid.items():
                self._put_invalid(key, bad)
        self._synced.set()
        # A re-list after 410 Gone may hide deletions the watch missed: report those too.
        changed = [o for k, o in fresh.items() if _version(previous.get(k)) != o.metadata.resource_version]
        self._notify(changed + [o for k, o in previous.items() if k not in fresh])
        return str(listing["metadata"]["resourceVersion"])

    def _watch(self, resource_version: str) -> str:
        """Apply events until the watch times out; returns the last resourceVersion seen.

        ERROR events (410 Gone included) arrive as ApiException from the client library."""
        # Events decoded as plain JSON whatever the kind, as the list is.
        stream = self._stream = watch.Watch(return_type="object")  # type: ignore[no-untyped-call]
        for event in stream.stream(  # type: ignore[no-untyped-call]
            self._list_call,
            resource_version=resource_version,
            allow_watch_bookmarks=True,
            timeout_seconds=WATCH_TIMEOUT_SECONDS,
        ):
            if self._stopping.is_set():
                break
            if event["type"] != "BOOKMARK":
                self._apply(event["type"], event["raw_object"])
        return str(stream.resource_version or resource_version)

    def _apply(self, event_type: str, raw: dict[str, Any]) -> None:
        key = _raw_key(raw)
        parsed = self._parse(raw) if event_type != "DELETED" else None
        with self._lock:
            changed = self._remove(key)
            if isinstance(parsed, InvalidObject):
                self._put_invalid(key, parsed)
            elif parsed is not None:
                self._put(key, parsed)
                changed = parsed
        if changed is not None:
            self._notify([changed])

    # The three below run under the lock and touch only the one object's entries.
    def _put(self, key: str, obj: R) -> None:
        self._objects[key] = obj
        self._by_namespace.add(obj.metadata.namespace or "", key, obj)
        for values_of, groups in self._indexes.values():
            for value in values_of(obj):
                groups.add(value, key, obj)

    def _put_invalid(self, key: str, invalid: InvalidObject) -> None:
        self._invalid[key] = invalid
        self._invalid_by_namespace.add(invalid.namespace, key, invalid)

    def _remove(self, key: str) -> R | None:
        """Forget the object (valid or not) stored under key; returns the valid one it was."""
        invalid = self._invalid.pop(key, None)
        if invalid is not None:
            self._invalid_by_namespace.discard(invalid.namespace, key)
        old = self._objects.pop(key, None)
        if old is not None:
            self._by_namespace.discard(old.metadata.namespace or "", key)
            for values_of, groups in self._indexes.values():
                for value in values_of(old):
                    groups.discard(value, key)
        return old

    def _notify(self, changed: list[R]) -> None:
        for obj in changed:
            for handler in self._handlers:
                try:
                    handler(obj)
                except Exception:
                    log.exception("%s: event handler failed", self._kind.plural)

    def _parse(self, raw: dict[str, Any]) -> R | InvalidObject:
        try:
            return cast(R, self._model.model_validate(raw))
        except pydantic.ValidationError as error:
            invalid = InvalidObject.of(self._kind.kind, raw, error)
            log.warning("%s", invalid.describe())
            return invalid


T = TypeVar("T")


class _Groups(Generic[T]):
    """Objects grouped under string values, changed one object at a time; each group's tuple is
    built when first read after a change and then handed out as is, so a reader can tell by
    identity that nothing in the group changed (the webhook's binding index relies on it)."""

    def __init__(self) -> None:
        self._groups: dict[str, dict[str, T]] = {}
        self._tuples: dict[str, tuple[T, ...]] = {}

    def add(self, group: str, key: str, obj: T) -> None:
        self._groups.setdefault(group, {})[key] = obj
        self._tuples.pop(group, None)

    def discard(self, group: str, key: str) -> None:
        members = self._groups.get(group)
        if members is None or members.pop(key, None) is None:
            return
        if not members:
            del self._groups[group]
        self._tuples.pop(group, None)

    def members(self, group: str) -> tuple[T, ...]:
        found = self._tuples.get(group)
        if found is None:
            found = self._tuples[group] = tuple(self._groups.get(group, {}).values())
        return found


def _version(obj: Resource | KubernetesObject | None) -> str | None:
    return obj.metadata.resource_version if obj is not None else None


def _raw_key(raw: dict[str, Any]) -> str:
    metadata = raw.get("metadata", {})
    return f"{metadata.get('namespace') or ''}/{metadata.get('name')}"


def post_event(
    core: client.CoreV1Api,
    namespace: str,
    involved: client.V1ObjectReference,
    *,
    event_type: str,
    reason: str,
    message: str,
    source: client.V1EventSource,
) -> None:
    """Record an Event about `involved` in `namespace` (`kubectl describe` shows it). Best effort: a
    failure is logged, never raised or retried."""
    now = datetime.datetime.now(datetime.UTC)
    event = client.CoreV1Event(
        metadata=client.V1ObjectMeta(generate_name=f"{involved.name}.", namespace=namespace),
        involved_object=involved,
        reason=reason,
        message=message,
        type=event_type,
        source=source,
        first_timestamp=now,
        last_timestamp=now,
        count=1,
    )
    try:
        core.create_namespaced_event(namespace, event)
    except ApiException as error:
        log.warning("event %s on %s %s/%s: %s", reason, involved.kind, namespace, involved.name, error.reason)
