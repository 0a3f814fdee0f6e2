"""The one Kubernetes access layer the operator's processes share: a client from a kubeconfig or the
pod's service account, and list+watch caches of our resources.

A cache lists once, then watches from the list's resourceVersion; when the apiserver answers
410 Gone (the version fell out of its window) it lists again, and on any other error it reconnects
with a capped backoff. Readers only ever see fully parsed objects, and, apart, the stored objects
that the models reject (InvalidObject), so that nothing stored silently disappears.
"""

from __future__ import annotations

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


WATCH_TIMEOUT_SECONDS = 300
_MAX_BACKOFF_SECONDS = 30.0
_HTTP_GONE = 410


def api_client(kubeconfig: str | None = None) -> client.ApiClient:
    """A client for the kubeconfig given (or $KUBECONFIG / ~/.kube/config), else the in-cluster one."""
    try:
        return cast(client.ApiClient, config.new_client_from_config(config_file=kubeconfig))  # type: ignore[no-untyped-call]
    except config.ConfigException:
        if kubeconfig:
            raise
    config.load_incluster_config()  # type: ignore[no-untyped-call]
    return client.ApiClient()


class ResourceCache(Generic[R]):
    """An in-memory, always-parsed copy of every object of one kind, kept by list+watch.

    Works for any kind served under /apis/<group>/<version> (ours and built-in ones such as
    DaemonSets or webhook configurations); handlers added with add_event_handler hear every change."""

    def __init__(
        self, api: client.ApiClient, kind: Watchable, model: type[R], namespace: str | None = None
    ) -> None:
        """``namespace``: watch that namespace only (where a Role, not a ClusterRole, grants reading)."""
        self._custom = client.CustomObjectsApi(api)
        self._kind = kind
        self._namespace = namespace
        self._model = model
        self._objects: dict[str, R] = {}
        self._by_namespace: dict[str, tuple[R, ...]] = {}
        self._invalid: dict[str, InvalidObject] = {}
        self._invalid_by_namespace: dict[str, tuple[InvalidObject, ...]] = {}
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
        return self._by_namespace.get(namespace, ())

    def items(self) -> tuple[R, ...]:
        return tuple(self._objects.values())

    def add_event_handler(self, handler: EventHandler[R]) -> None:
        """Handlers run on the cache's thread after the change is visible to readers: keep them
        short (a controller only enqueues keys)."""
        self._handlers.append(handler)

    def invalid_in(self, namespace: str) -> tuple[InvalidObject, ...]:
        """The stored objects of the namespace ("" for cluster-scoped ones) that the model rejects."""
        return self._invalid_by_namespace.get(namespace, ())

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
        if self._namespace is not None:
            return self._custom.list_namespaced_custom_object(
                self._kind.group, self._kind.version, self._namespace, self._kind.plural, **kwargs
            )
        return self._custom.list_cluster_custom_object(
            self._kind.group, self._kind.version, self._kind.plural, **kwargs
        )

    def _list(self) -> str:
        listing = self._list_call()
        fresh: dict[str, R] = {}
        invalid: dict[str, InvalidObject] = {}
        for raw in listing.get("items", []):
            parsed = self._parse(raw)
            if isinstance(parsed, InvalidObject):
                invalid[_raw_key(raw)] = parsed
            else:
                fresh[_raw_key(raw)] = parsed
        with self._lock:
            previous = self._objects
            self._objects = fresh
            self._invalid = invalid
            self._reindex()
        self._synced.set()
        # A re-list after 410 Gone may hide deletions the watch missed: report those too.
        changed = [o for k, o in fresh.items() if _version(previous.get(k)) != o.metadata.resource_version]
        self._notify(changed + [o for k, o in previous.items() if k not in fresh])
        return str(listing["metadata"]["resourceVersion"])

    def _watch(self, resource_version: str) -> str:
        """Apply events until the watch times out; returns the last resourceVersion seen.

        ERROR events (410 Gone included) arrive as ApiException from the client library."""
        stream = self._stream = watch.Watch()  # type: ignore[no-untyped-call]
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
        with self._lock:
            objects, invalid = dict(self._objects), dict(self._invalid)
            changed = objects.pop(key, None)
            invalid.pop(key, None)
            if event_type != "DELETED":
                parsed = self._parse(raw)
                if isinstance(parsed, InvalidObject):
                    invalid[key] = parsed
                else:
                    objects[key] = changed = parsed
            self._objects, self._invalid = objects, invalid
            self._reindex()
        if changed is not None:
            self._notify([changed])

    def _notify(self, changed: list[R]) -> None:
        for obj in changed:
            for handler in self._handlers:
                try:
                    handler(obj)
                except Exception:
                    log.exception("%s: event handler failed", self._kind.plural)

    def _reindex(self) -> None:
        self._by_namespace = _by_namespace(self._objects.values(), lambda o: o.metadata.namespace or "")
        self._invalid_by_namespace = _by_namespace(self._invalid.values(), lambda o: o.namespace)

    def _parse(self, raw: dict[str, Any]) -> R | InvalidObject:
        try:
            return cast(R, self._model.model_validate(raw))
        except pydantic.ValidationError as error:
            invalid = InvalidObject.of(self._kind.kind, raw, error)
            log.warning("%s", invalid.describe())
            return invalid


T = TypeVar("T")


def _by_namespace(objects: Iterable[T], namespace_of: Callable[[T], str]) -> dict[str, tuple[T, ...]]:
    grouped: dict[str, list[T]] = {}
    for obj in objects:
        grouped.setdefault(namespace_of(obj), []).append(obj)
    return {ns: tuple(objs) for ns, objs in grouped.items()}


def _version(obj: Resource | KubernetesObject | None) -> str | None:
    return obj.metadata.resource_version if obj is not None else None


def _raw_key(raw: dict[str, Any]) -> str:
    metadata = raw.get("metadata", {})
    return f"{metadata.get('namespace') or ''}/{metadata.get('name')}"
