"""The requests one user made, from the apiserver's audit log, held against the accesses declared for it
(api.access): which were refused, which no declared access covers, which declared ones were used."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass

from api.access import Grant, Scope

_HTTP_CREATED = 201


@dataclass(frozen=True, order=True)
class Request:
    verb: str
    group: str
    resource: str  # plural, or plural/subresource
    namespace: str  # "" for cluster-scoped objects and requests across all namespaces
    name: str
    code: int

    def describe(self) -> str:
        where = f" in {self.namespace}" if self.namespace else ""
        return f"{self.verb} {self.group or 'core'}/{self.resource} {self.name}{where} -> {self.code}"


def requests_of(lines: Iterable[str], username: str) -> list[Request]:
    """The user's resource requests, one per audit event that carries the response (a watch's
    ResponseStarted event included); a request without an object reference (a non-resource URL)
    comes as resource `url:<path>`, which no access covers."""
    found = []
    for line in lines:
        if not line.strip():
            continue
        event = json.loads(line)
        if event.get("user", {}).get("username") != username or "responseStatus" not in event:
            continue
        ref = event.get("objectRef") or {}
        resource = ref.get("resource") or f"url:{event.get('requestURI', '')}"
        if ref.get("subresource"):
            resource = f"{resource}/{ref['subresource']}"
        found.append(
            Request(
                verb=event["verb"],
                group=ref.get("apiGroup", ""),
                resource=resource,
                namespace=ref.get("namespace", ""),
                name=ref.get("name", ""),
                code=int(event["responseStatus"].get("code", 0)),
            )
        )
    return found


def covering(request: Request, declared: frozenset[Grant], operator_namespace: str) -> list[Grant]:
    """The declared grants that allow the request (as RBAC decides it), and, for a server-side apply
    that created its object, the create grant the apiserver checked as well. Empty: not covered."""
    scopes = [Scope.CLUSTER] + ([Scope.NAMESPACE] if request.namespace == operator_namespace else [])
    # A create names no object in its URL, so RBAC cannot restrict it by name.
    names = [""] if request.verb == "create" or not request.name else ["", request.name]
    verbs = [request.verb]
    if request.verb == "patch" and request.code == _HTTP_CREATED:
        verbs.append("create")
    matched = []
    for verb in verbs:
        grants = [
            Grant(scope, request.group, request.resource, verb, name) for scope in scopes for name in names
        ]
        found = [grant for grant in grants if grant in declared]
        if not found:
            return []
        matched += found
    return matched
