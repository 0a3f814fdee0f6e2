"""Reading a user's requests from an audit log and holding them against declared accesses."""

from __future__ import annotations

import json

import pytest

from api.access import Access, Grant, Scope, grants
from tests.audit_requests import Request, covering, requests_of

NS = "operator"
DECLARED = grants(
    [
        Access(Scope.CLUSTER, "", "pods", ("list", "watch")),
        Access(Scope.CLUSTER, "x.io", "things", ("patch",)),
        Access(Scope.CLUSTER, "x.io", "things/status", ("patch",)),
        Access(Scope.NAMESPACE, "", "secrets", ("create",)),
        Access(Scope.NAMESPACE, "", "secrets", ("get", "patch"), ("mine",)),
    ]
)


def _request(verb: str, resource: str, namespace: str = "", name: str = "", code: int = 200) -> Request:
    group = "x.io" if resource.startswith("things") else ""
    return Request(verb, group, resource, namespace, name, code)


@pytest.mark.parametrize(
    ("request_", "covered"),
    [
        (_request("list", "pods"), [Grant(Scope.CLUSTER, "", "pods", "list")]),
        (_request("watch", "pods", "elsewhere"), [Grant(Scope.CLUSTER, "", "pods", "watch")]),
        (_request("get", "pods", "elsewhere", "p"), []),
        (
            _request("patch", "things/status", name="t"),
            [Grant(Scope.CLUSTER, "x.io", "things/status", "patch")],
        ),
        # A Role grants in the operator namespace only.
        (_request("create", "secrets", NS, "any"), [Grant(Scope.NAMESPACE, "", "secrets", "create")]),
        (_request("create", "secrets", "elsewhere", "any"), []),
        # resourceNames: only the named object.
        (_request("get", "secrets", NS, "mine"), [Grant(Scope.NAMESPACE, "", "secrets", "get", "mine")]),
        (_request("get", "secrets", NS, "theirs"), []),
        # An apply that created its object needed create too.
        (
            _request("patch", "secrets", NS, "mine", code=201),
            [
                Grant(Scope.NAMESPACE, "", "secrets", "patch", "mine"),
                Grant(Scope.NAMESPACE, "", "secrets", "create"),
            ],
        ),
        (_request("patch", "things", name="t", code=201), []),
        (_request("get", "url:/version"), []),
    ],
)
def test_covering(request_: Request, covered: list[Grant]) -> None:
    assert covering(request_, DECLARED, NS) == covered


def test_requests_of_one_user() -> None:
    def event(user: str, **fields: object) -> str:
        return json.dumps({"user": {"username": user}, "responseStatus": {"code": 200}, **fields})

    lines = [
        event("me", verb="list", objectRef={"resource": "pods"}),
        event(
            "me",
            verb="patch",
            objectRef={"resource": "things", "subresource": "status", "apiGroup": "x.io", "name": "t"},
        ),
        event("someone", verb="delete", objectRef={"resource": "pods", "namespace": NS, "name": "p"}),
        event("me", verb="get", requestURI="/version"),
        json.dumps({"user": {"username": "me"}, "verb": "get", "stage": "RequestReceived"}),
        "",
    ]
    assert requests_of(lines, "me") == [
        Request("list", "", "pods", "", "", 200),
        Request("patch", "x.io", "things/status", "", "t", 200),
        Request("get", "", "url:/version", "", "", 200),
    ]
