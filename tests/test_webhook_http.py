"""The webhook HTTP layer: AdmissionReview in and out, bad input, health, metrics (in-process ASGI)."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import jsonpatch
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from api import constants
from api.types import ProfileBinding, SeccompProfile, SecurityProfilesOperatorDaemon
from webhooks import app as app_module
from webhooks.app import MAX_BODY_BYTES, create_app
from webhooks.decisions import Decision
from webhooks.metrics import DURATION_BUCKETS
from webhooks.review import API_VERSION_V1, API_VERSION_V1BETA1, encode_response, parse_review
from webhooks.snapshot import StaticSnapshot

NAMESPACE = "team-a"
BOUND_IMAGE = "quay.io/example/nginx:1.25"
PROFILE = "nginx-profile"
INSTALLED_AS = "operator/nginx-profile.json"
WEBHOOK_OF_PATH = {
    constants.PATH_BINDING: constants.WEBHOOK_BINDING,
    constants.PATH_RECORDING: constants.WEBHOOK_RECORDING,
    constants.PATH_EXEC_METADATA: constants.WEBHOOK_EXEC_METADATA,
    constants.PATH_RAW_SELINUX: constants.WEBHOOK_RAW_SELINUX,
    constants.PATH_PROFILE_BINDING: constants.WEBHOOK_PROFILE_BINDING,
}
ADMISSION_PATHS = list(WEBHOOK_OF_PATH)


class Client:
    """A synchronous face over httpx.AsyncClient + ASGITransport, usable from Hypothesis tests."""

    def __init__(self, app: Any) -> None:
        self._runner = asyncio.Runner()
        self._client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://webhook")

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return self._runner.run(self._client.request(method, path, **kwargs))

    def review(self, path: str, review: object) -> httpx.Response:
        return self.request("POST", path, content=json.dumps(review, allow_nan=False), headers=JSON)

    def close(self) -> None:
        self._runner.run(self._client.aclose())
        self._runner.close()


JSON = {"content-type": "application/json"}


def seccomp_profile(name: str) -> SeccompProfile:
    return SeccompProfile.model_validate(
        {
            "apiVersion": f"{constants.GROUP}/v1beta1",
            "kind": "SeccompProfile",
            "metadata": {"name": name},
            "spec": {"defaultAction": "SCMP_ACT_ERRNO"},
            "status": {"status": "Installed", "localhostProfile": f"operator/{name}.json"},
        }
    )


def binding(name: str, image: str, profile: str) -> ProfileBinding:
    return ProfileBinding.model_validate(
        {
            "apiVersion": f"{constants.GROUP}/v1alpha1",
            "kind": "ProfileBinding",
            "metadata": {"name": name, "namespace": NAMESPACE},
            "spec": {"profileRef": {"kind": "SeccompProfile", "name": profile}, "image": image},
        }
    )


def snapshot() -> StaticSnapshot:
    return StaticSnapshot(
        bindings=[binding("nginx", BOUND_IMAGE, PROFILE)], seccomp_profiles=[seccomp_profile(PROFILE)]
    )


def pod(*images: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "web", "namespace": NAMESPACE, "labels": {"app": "web"}},
        "spec": {"containers": [{"name": f"c{i}", "image": image} for i, image in enumerate(images)]},
    }


def pod_request(obj: object, uid: str = "uid-1", operation: str = "CREATE") -> dict[str, Any]:
    return {
        "uid": uid,
        "kind": {"group": "", "version": "v1", "kind": "Pod"},
        "resource": {"group": "", "version": "v1", "resource": "pods"},
        "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
        "name": "web",
        "namespace": NAMESPACE,
        "operation": operation,
        "userInfo": {"username": "alice"},
        "object": obj,
        "oldObject": None,
        "dryRun": False,
    }


def exec_request(command: list[str], uid: str = "exec-uid") -> dict[str, Any]:
    return {
        "uid": uid,
        "kind": {"group": "", "version": "v1", "kind": "PodExecOptions"},
        "resource": {"group": "", "version": "v1", "resource": "pods"},
        "subResource": "exec",
        "name": "web",
        "namespace": NAMESPACE,
        "operation": "CONNECT",
        "object": {"apiVersion": "v1", "kind": "PodExecOptions", "command": command, "stdout": True},
    }


def review(request: object, api_version: str = API_VERSION_V1) -> dict[str, Any]:
    return {"apiVersion": api_version, "kind": "AdmissionReview", "request": request}


def response_of(http: httpx.Response, api_version: str = API_VERSION_V1) -> dict[str, Any]:
    assert http.status_code == 200, http.text
    assert http.headers["content-type"] == "application/json"
    body = http.json()
    assert body["apiVersion"] == api_version
    assert body["kind"] == "AdmissionReview"
    answer: dict[str, Any] = body["response"]
    return answer


def patch_of(response: dict[str, Any]) -> list[dict[str, Any]]:
    assert response["patchType"] == "JSONPatch"
    ops: list[dict[str, Any]] = json.loads(base64.b64decode(response["patch"], validate=True))
    return ops


@pytest.fixture
def client() -> Iterator[Client]:
    c = Client(create_app(snapshot(), lambda: True))
    yield c
    c.close()


@pytest.mark.parametrize("api_version", [API_VERSION_V1, API_VERSION_V1BETA1])
def test_answers_in_the_api_version_asked_with_the_same_uid(client: Client, api_version: str) -> None:
    http = client.review(constants.PATH_BINDING, review(pod_request(pod("busybox"), uid="4e1f"), api_version))
    response = response_of(http, api_version)
    assert response["uid"] == "4e1f"
    assert response["allowed"] is True
    assert "patch" not in response
    assert "patchType" not in response


@pytest.mark.parametrize("api_version", [API_VERSION_V1, API_VERSION_V1BETA1])
def test_binding_patch_decodes_and_applies(client: Client, api_version: str) -> None:
    original = pod("busybox", BOUND_IMAGE)
    http = client.review(constants.PATH_BINDING, review(pod_request(original), api_version))
    response = response_of(http, api_version)
    assert response["allowed"] is True
    patched = jsonpatch.apply_patch(original, patch_of(response))
    bound = patched["spec"]["containers"][1]
    assert bound["securityContext"]["seccompProfile"] == {
        "type": "Localhost",
        "localhostProfile": INSTALLED_AS,
    }
    assert patched["spec"]["containers"][0] == original["spec"]["containers"][0]


def test_exec_metadata_patch_and_audit_annotation(client: Client) -> None:
    response = response_of(client.review(constants.PATH_EXEC_METADATA, review(exec_request(["ls", "-l"]))))
    assert response["allowed"] is True
    assert response["auditAnnotations"] == {constants.EXEC_REQUEST_UID_ENV: "exec-uid"}
    options = jsonpatch.apply_patch({"command": ["ls", "-l"]}, patch_of(response))
    assert options["command"] == ["env", f"{constants.EXEC_REQUEST_UID_ENV}=exec-uid", "ls", "-l"]


def test_raw_selinux_denial_carries_code_and_message(client: Client) -> None:
    profile = {
        "apiVersion": f"{constants.GROUP}/v1alpha2",
        "kind": "RawSelinuxProfile",
        "metadata": {"name": "escape"},
        "spec": {"policy": "(allow process self (file (read)))) (typepermissive spc_t)"},
    }
    request = {
        "uid": "raw-1",
        "kind": {"group": constants.GROUP, "version": "v1alpha2", "kind": "RawSelinuxProfile"},
        "resource": {"group": constants.GROUP, "version": "v1alpha2", "resource": "rawselinuxprofiles"},
        "name": "escape",
        "operation": "CREATE",
        "object": profile,
    }
    response = response_of(client.review(constants.PATH_RAW_SELINUX, review(request)))
    assert response["uid"] == "raw-1"
    assert response["allowed"] is False
    assert response["status"]["code"] == 403
    assert "parenthes" in response["status"]["message"]
    assert "patch" not in response


@pytest.mark.parametrize(
    ("path", "request_body"),
    [
        # Not a pod exec/debug request: nothing to tag.
        (
            constants.PATH_EXEC_METADATA,
            pod_request({"apiVersion": "v1", "kind": "ConfigMap", "data": {}})
            | {"kind": {"group": "", "version": "v1", "kind": "ConfigMap"}},
        ),
        # No binding selects these images.
        (constants.PATH_BINDING, pod_request(pod("busybox", "redis"))),
        # No recording in the namespace.
        (constants.PATH_RECORDING, pod_request(pod(BOUND_IMAGE))),
        # Pod deletion: bindings only act on creation.
        (constants.PATH_BINDING, pod_request(None, operation="DELETE")),
    ],
)
def test_objects_a_webhook_does_not_handle_are_allowed_unchanged(
    client: Client, path: str, request_body: dict[str, Any]
) -> None:
    response = response_of(client.review(path, review(request_body)))
    assert response["allowed"] is True
    assert "patch" not in response
    assert "patchType" not in response


async def too_large_chunks() -> AsyncIterator[bytes]:
    chunk = b" " * (1024 * 1024)
    for _ in range(4):
        yield chunk


BAD_INPUT: list[tuple[str, Callable[[], dict[str, Any]], int, str]] = [
    ("malformed JSON", lambda: {"content": b'{"apiVersion": '}, 400, "not valid JSON"),
    ("invalid UTF-8", lambda: {"content": b'{"a": "\xff"}'}, 400, "UTF-8"),
    ("deep nesting", lambda: {"content": b"[" * 200_000}, 400, "not valid JSON"),
    ("NaN is not JSON", lambda: {"content": b'{"apiVersion": NaN}'}, 400, "not valid JSON"),
    ("not an object", lambda: {"content": b"[1, 2]"}, 400, "got array"),
    ("null", lambda: {"content": b"null"}, 400, "got null"),
    (
        "wrong apiVersion",
        lambda: {"json": {"apiVersion": "v1", "kind": "AdmissionReview", "request": {"uid": "u"}}},
        400,
        "apiVersion",
    ),
    (
        "wrong kind",
        lambda: {"json": {"apiVersion": API_VERSION_V1, "kind": "Pod", "request": {"uid": "u"}}},
        400,
        "kind",
    ),
    (
        "missing request",
        lambda: {"json": {"apiVersion": API_VERSION_V1, "kind": "AdmissionReview"}},
        400,
        "request",
    ),
    ("request not an object", lambda: {"json": review(["uid"])}, 400, "request must be an object"),
    ("missing uid", lambda: {"json": review({"operation": "CREATE"})}, 400, "uid"),
    ("empty uid", lambda: {"json": review({"uid": ""})}, 400, "uid"),
    ("uid not a string", lambda: {"json": review({"uid": 7})}, 400, "uid"),
    (
        "wrong content type",
        lambda: {
            "content": json.dumps(review(pod_request(pod()))),
            "headers": {"content-type": "text/plain"},
        },
        415,
        "Content-Type",
    ),
    (
        "no content type",
        lambda: {"content": json.dumps(review(pod_request(pod()))), "headers": {}},
        415,
        "Content-Type",
    ),
    ("4 MiB body", lambda: {"content": b" " * (4 * 1024 * 1024)}, 413, "body of 4194304 bytes"),
    ("4 MiB chunked body", lambda: {"content": too_large_chunks()}, 413, "body exceeds"),
]


@pytest.mark.parametrize("path", ADMISSION_PATHS)
@pytest.mark.parametrize(
    ("kwargs", "status", "fragment"), [case[1:] for case in BAD_INPUT], ids=[case[0] for case in BAD_INPUT]
)
def test_bad_input_is_refused_with_4xx_and_a_json_message(
    client: Client, path: str, kwargs: Callable[[], dict[str, Any]], status: int, fragment: str
) -> None:
    arguments = kwargs()
    if "json" not in arguments:
        arguments["headers"] = arguments.get("headers", JSON)
    http = client.request("POST", path, **arguments)
    assert http.status_code == status, http.text
    assert http.headers["content-type"] == "application/json"
    assert fragment in http.json()["message"]
    # The server keeps answering after bad input.
    assert response_of(client.review(path, review(pod_request(pod()))))["uid"] == "uid-1"


@pytest.mark.parametrize("path", ADMISSION_PATHS)
def test_admission_paths_only_take_post(client: Client, path: str) -> None:
    assert client.request("GET", path).status_code == 405
    assert client.request("PUT", path, content=b"{}", headers=JSON).status_code == 405


def test_body_exactly_at_the_limit_is_read(client: Client) -> None:
    body = json.dumps(review(pod_request(pod("busybox")))).encode()
    padded = body + b" " * (MAX_BODY_BYTES - len(body))
    assert len(padded) == MAX_BODY_BYTES
    http = client.request("POST", constants.PATH_BINDING, content=padded, headers=JSON)
    assert response_of(http)["allowed"] is True


def test_content_type_with_charset_is_json(client: Client) -> None:
    http = client.request(
        "POST",
        constants.PATH_BINDING,
        content=json.dumps(review(pod_request(pod()))),
        headers={"content-type": "Application/JSON; charset=utf-8"},
    )
    assert response_of(http)["uid"] == "uid-1"


def failing_decision(*_: object, **__: object) -> Decision:
    raise RuntimeError("decision bug")


@pytest.mark.parametrize(
    ("name", "path", "allowed"),
    [
        ("decide_binding", constants.PATH_BINDING, False),
        ("decide_raw_selinux", constants.PATH_RAW_SELINUX, False),
        ("decide_recording", constants.PATH_RECORDING, False),
        ("decide_profile_binding", constants.PATH_PROFILE_BINDING, False),
        ("decide_exec_metadata", constants.PATH_EXEC_METADATA, True),
    ],
)
def test_a_failing_decision_is_logged_and_answered_by_failure_mode(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, name: str, path: str, allowed: bool
) -> None:
    monkeypatch.setattr(app_module, name, failing_decision)
    client = Client(create_app(snapshot(), lambda: True))
    try:
        with caplog.at_level(logging.ERROR, logger="webhooks.app"):
            http = client.review(
                path, review(pod_request(pod(BOUND_IMAGE), uid="boom-1"), API_VERSION_V1BETA1)
            )
        response = response_of(http, API_VERSION_V1BETA1)
        metrics = client.request("GET", "/metrics").text
    finally:
        client.close()
    assert response["uid"] == "boom-1"
    assert response["allowed"] is allowed
    assert "patch" not in response
    if allowed:
        assert response["warnings"]
    else:
        assert response["status"]["code"] == 500
    assert any("boom-1" in record.getMessage() and record.exc_info for record in caplog.records)
    values = samples(metrics)
    webhook = ("webhook", WEBHOOK_OF_PATH[path])
    code = "200" if allowed else "500"
    assert values[("spo_webhook_requests_total", frozenset({webhook, ("code", code)}))] == 1
    assert values[("spo_webhook_denials_total", frozenset({webhook}))] == (0 if allowed else 1)


@pytest.mark.parametrize(
    ("options", "allowed"),
    [
        ([{"name": "recording.spo.io", "failurePolicy": "Ignore"}], True),
        (
            [
                {"name": "recording.spo.io", "failurePolicy": "Ignore"},
                {"name": "recording.spo.io", "failurePolicy": "Fail"},
            ],
            False,
        ),
        ([{"name": "binding.spo.io", "failurePolicy": "Ignore"}], False),
    ],
    ids=["soft-fail-chosen", "last-option-wins", "other-webhook-option"],
)
def test_internal_errors_follow_the_failure_policy_the_spod_chose(
    monkeypatch: pytest.MonkeyPatch, options: list[dict[str, str]], allowed: bool
) -> None:
    """Docs 7.8.8: an admin may make a webhook soft-fail; its internal errors then soft-fail too."""
    monkeypatch.setattr(app_module, "decide_recording", failing_decision)
    daemon = SecurityProfilesOperatorDaemon.model_validate(
        {
            "apiVersion": f"{constants.GROUP}/{SecurityProfilesOperatorDaemon.VERSION}",
            "kind": SecurityProfilesOperatorDaemon.KIND,
            "metadata": {"name": constants.SPOD_NAME, "namespace": constants.DEFAULT_NAMESPACE},
            "spec": {"webhookOptions": options},
        }
    )
    client = Client(create_app(StaticSnapshot(daemon=daemon), lambda: True))
    try:
        http = client.review(constants.PATH_RECORDING, review(pod_request(pod(BOUND_IMAGE))))
    finally:
        client.close()
    assert response_of(http)["allowed"] is allowed


def test_healthz_and_readyz_follow_cache_sync() -> None:
    synced = False
    client = Client(create_app(StaticSnapshot(), lambda: synced))
    try:
        assert client.request("GET", "/healthz").status_code == 200
        assert client.request("GET", "/readyz").status_code == 503
        synced = True
        assert client.request("GET", "/readyz").status_code == 200
        assert client.request("GET", "/healthz").status_code == 200
    finally:
        client.close()


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_metrics_count_requests_patches_denials_and_durations(client: Client) -> None:
    client.review(constants.PATH_BINDING, review(pod_request(pod(BOUND_IMAGE))))
    client.review(constants.PATH_BINDING, review(pod_request(pod("busybox"))))
    client.review(constants.PATH_BINDING, review(pod_request({"spec": "not a pod"})))
    client.request("POST", constants.PATH_BINDING, content=b"{", headers=JSON)
    http = client.request("GET", "/metrics")
    assert http.status_code == 200
    assert http.headers["content-type"].startswith("text/plain")
    values = samples(http.text)
    binding_label = ("webhook", constants.WEBHOOK_BINDING)

    def value(name: str, **labels: str) -> float:
        return values.get((name, frozenset({binding_label, *labels.items()})), 0.0)

    assert value("spo_webhook_requests_total", code="200") == 2
    assert value("spo_webhook_requests_total", code="400") == 2
    assert value("spo_webhook_patches_total") == 1
    assert value("spo_webhook_denials_total") == 1
    for bound in DURATION_BUCKETS:
        assert value("spo_webhook_request_duration_seconds_bucket", le=str(bound)) <= 4
    assert value("spo_webhook_request_duration_seconds_bucket", le="+Inf") == 4
    assert value("spo_webhook_request_duration_seconds_count") == 4


def test_each_app_counts_on_its_own(client: Client) -> None:
    client.review(constants.PATH_BINDING, review(pod_request(pod())))
    other = Client(create_app(snapshot(), lambda: True))
    try:
        text = other.request("GET", "/metrics").text
    finally:
        other.close()
    assert (
        "spo_webhook_requests_total",
        frozenset({("webhook", constants.WEBHOOK_BINDING), ("code", "200")}),
    ) not in (samples(text))


def test_encode_response_omits_empty_parts() -> None:
    encoded = json.loads(encode_response(API_VERSION_V1BETA1, "u", Decision()))
    assert encoded == {
        "apiVersion": API_VERSION_V1BETA1,
        "kind": "AdmissionReview",
        "response": {"uid": "u", "allowed": True},
    }
    denied = json.loads(encode_response(API_VERSION_V1, "u", Decision(allowed=False, code=403, message="no")))
    assert denied["response"] == {"uid": "u", "allowed": False, "status": {"code": 403, "message": "no"}}


def test_errors_do_not_echo_large_values(client: Client) -> None:
    huge = "v" * 100_000
    for body in ({"apiVersion": huge, "kind": "AdmissionReview"}, review({"uid": 7, "object": huge})):
        http = client.request("POST", constants.PATH_BINDING, json=body)
        assert http.status_code == 400
        assert len(http.json()["message"]) < 200


def test_parse_review_returns_version_and_request() -> None:
    body = json.dumps(review({"uid": "x", "operation": "CREATE"}, API_VERSION_V1BETA1)).encode()
    assert parse_review(body) == (API_VERSION_V1BETA1, {"uid": "x", "operation": "CREATE"})


# --- properties ---------------------------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)
REQUEST_KEYS = ["kind", "resource", "subResource", "operation", "namespace", "name", "object", "oldObject"]
pod_shaped = st.fixed_dictionaries(
    {},
    optional={
        "metadata": st.fixed_dictionaries(
            {}, optional={"annotations": json_values, "labels": json_values, "name": json_values}
        ),
        "spec": st.fixed_dictionaries(
            {},
            optional={
                "containers": st.lists(
                    st.fixed_dictionaries(
                        {},
                        optional={
                            "name": st.text(max_size=5) | json_values,
                            "image": st.sampled_from([BOUND_IMAGE, "busybox"]) | json_values,
                            "env": json_values,
                            "securityContext": json_values,
                        },
                    ),
                    max_size=3,
                )
                | json_values,
                "initContainers": json_values,
                "ephemeralContainers": json_values,
                "securityContext": json_values,
            },
        ),
        "command": json_values,
        "policy": json_values,
    },
)
admission_requests = st.fixed_dictionaries(
    {"uid": st.text(min_size=1, max_size=8)},
    optional={
        "kind": st.fixed_dictionaries(
            {
                "kind": st.sampled_from(["Pod", "PodExecOptions", "RawSelinuxProfile", "ConfigMap"])
                | json_values
            }
        )
        | json_values,
        "operation": st.sampled_from(["CREATE", "UPDATE", "DELETE", "CONNECT"]) | json_values,
        "namespace": st.just(NAMESPACE) | json_values,
        "subResource": st.sampled_from(["ephemeralcontainers", "exec"]) | json_values,
        "name": json_values,
        "object": pod_shaped | json_values,
        "oldObject": pod_shaped | json_values,
    },
)


@pytest.fixture(scope="module")
def shared_client() -> Iterator[Client]:
    c = Client(create_app(snapshot(), lambda: True))
    yield c
    c.close()


@settings(max_examples=150, deadline=None)
@given(body=json_values, path=st.sampled_from(ADMISSION_PATHS))
def test_random_json_is_refused_as_bad_request(shared_client: Client, body: object, path: str) -> None:
    # Random JSON is never an AdmissionReview (that needs apiVersion, kind and request.uid).
    http = shared_client.request("POST", path, content=json.dumps(body), headers=JSON)
    assert http.status_code == 400, http.text
    assert http.json()["message"]


@settings(max_examples=300, deadline=None)
@given(
    request=admission_requests,
    path=st.sampled_from(ADMISSION_PATHS),
    api_version=st.sampled_from([API_VERSION_V1, API_VERSION_V1BETA1]),
)
def test_random_admission_reviews_are_answered_in_kind(
    shared_client: Client, request: dict[str, Any], path: str, api_version: str
) -> None:
    http = shared_client.review(path, review(request, api_version))
    response = response_of(http, api_version)
    assert response["uid"] == request["uid"]
    assert isinstance(response["allowed"], bool)
    # Decisions turn odd input into answers themselves; the app's internal-error fallback stays unused.
    assert "failed internally" not in response.get("status", {}).get("message", "")
    if "patch" in response:
        patch_of(response)
