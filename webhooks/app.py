"""The webhook HTTP application: AdmissionReview bytes in, pure decision, AdmissionReview bytes out.

The kube-apiserver waits on every pod creation for these answers, so an admission request costs only
reading the body, decoding it, the decision and one encoding: raw bytes in a Starlette Request and a
pre-serialised Response (no FastAPI body or response models, no jsonable_encoder), dispatched before
FastAPI's middleware stack (see WebhookApp).

Bad input is answered with a 4xx and a JSON `{"message": ...}`; it never reaches a decision and
never produces a 500. A decision that raises is logged and answered as the webhook's failurePolicy
would answer an outage (constants.DEFAULT_FAILURE_POLICIES, or the spod's webhookOptions).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from contextlib import aclosing
from typing import Any, Final

import orjson
from fastapi import FastAPI
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from api import constants
from webhooks.decisions import (
    Decision,
    decide_binding,
    decide_exec_metadata,
    decide_profile_binding,
    decide_raw_selinux,
    decide_recording,
    random_nonce,
)
from webhooks.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from webhooks.metrics import WebhookMetrics, WebhookRecorder
from webhooks.review import ReviewError, encode_response, parse_review
from webhooks.snapshot import Snapshot

# The kube-apiserver caps a request at 3 MiB (etcd's object limit plus envelope), so a larger body is
# not a genuine admission request; refusing it bounds the memory one request can take.
MAX_BODY_BYTES: Final = 3 * 1024 * 1024
JSON_CONTENT_TYPE: Final = "application/json"

logger = logging.getLogger(__name__)

Decide = Callable[[dict[str, Any]], Decision]
Endpoint = Callable[[Request], Awaitable[Response]]


class _HTTPError(Exception):
    """The HTTP request is refused before it reaches a decision."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class WebhookApp(FastAPI):
    """FastAPI serving health and metrics, with the admission endpoints answered ahead of it.

    A POST to an admission path skips FastAPI's middleware stack and router: about 20 µs a request
    here, an eighth of a pod review (bench/webhook_bench.py). Admission endpoints handle their own
    errors, so the stack's error handling has nothing to add for them. The paths are also ordinary
    routes, so that other methods get FastAPI's 405.
    """

    def __init__(self) -> None:
        super().__init__(
            title="security-profiles-operator webhook", docs_url=None, redoc_url=None, openapi_url=None
        )
        self._admission: dict[str, Endpoint] = {}

    def add_admission_route(self, path: str, endpoint: Endpoint) -> None:
        self._admission[path] = endpoint
        self.add_route(path, endpoint, methods=["POST"], include_in_schema=False)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            endpoint = self._admission.get(scope["path"])
            if endpoint is not None:
                response = await endpoint(Request(scope, receive))
                await response(scope, receive, send)
                return
        await super().__call__(scope, receive, send)


def create_app(snapshot: Snapshot, ready: Callable[[], bool]) -> WebhookApp:
    """The webhook app deciding from `snapshot`; /readyz reports 503 until `ready()` is true."""
    app = WebhookApp()
    metrics = WebhookMetrics()

    def binding(request: dict[str, Any]) -> Decision:
        return decide_binding(request, snapshot)

    def recording(request: dict[str, Any]) -> Decision:
        return decide_recording(request, snapshot, now=int(time.time()), nonce=random_nonce)

    def raw_selinux(request: dict[str, Any]) -> Decision:
        return decide_raw_selinux(request, snapshot)

    def profile_binding(request: dict[str, Any]) -> Decision:
        return decide_profile_binding(request, snapshot)

    # One path serves both execmetadata.spo.io and nodedebuggingpod.spo.io (as upstream); the handler
    # cannot tell which configuration entry called it, so both count under execmetadata.spo.io.
    routes: list[tuple[str, str, Decide]] = [
        (constants.PATH_BINDING, constants.WEBHOOK_BINDING, binding),
        (constants.PATH_RECORDING, constants.WEBHOOK_RECORDING, recording),
        (constants.PATH_EXEC_METADATA, constants.WEBHOOK_EXEC_METADATA, decide_exec_metadata),
        (constants.PATH_RAW_SELINUX, constants.WEBHOOK_RAW_SELINUX, raw_selinux),
        (constants.PATH_PROFILE_BINDING, constants.WEBHOOK_PROFILE_BINDING, profile_binding),
    ]
    for path, webhook, decide in routes:
        fails_open = _failure_policy_reader(snapshot, webhook)
        app.add_admission_route(
            path, admission_endpoint(webhook, decide, metrics.recorder(webhook), fails_open)
        )

    async def healthz(_: Request) -> Response:
        return Response(b"ok", media_type="text/plain")

    async def readyz(_: Request) -> Response:
        if ready():
            return Response(b"ok", media_type="text/plain")
        return Response(b"caches not synced", status_code=503, media_type="text/plain")

    async def metrics_endpoint(_: Request) -> Response:
        return Response(metrics.render(), media_type=METRICS_CONTENT_TYPE)

    app.add_route("/healthz", healthz, methods=["GET"], include_in_schema=False)
    app.add_route("/readyz", readyz, methods=["GET"], include_in_schema=False)
    app.add_route("/metrics", metrics_endpoint, methods=["GET"], include_in_schema=False)
    return app


def _failure_policy_reader(snapshot: Snapshot, webhook: str) -> Callable[[], bool]:
    """Whether `webhook` is registered to fail open: the spod's last option setting its failurePolicy
    wins (as the reconciler applies them), else the default."""

    def fails_open() -> bool:
        spod = snapshot.spod()
        chosen = [
            option.failure_policy
            for option in ((spod.spec.webhook_options or []) if spod else [])
            if option.name == webhook and option.failure_policy is not None
        ]
        policy = chosen[-1] if chosen else constants.DEFAULT_FAILURE_POLICIES[webhook]
        return policy == constants.FAILURE_POLICY_IGNORE

    return fails_open


def admission_endpoint(
    webhook: str, decide: Decide, recorder: WebhookRecorder, fails_open: Callable[[], bool]
) -> Endpoint:
    """A route handler answering AdmissionReviews for `webhook` with `decide`; a decision that raises is
    answered as `fails_open()` says."""

    async def endpoint(http_request: Request) -> Response:
        started = time.perf_counter()
        try:
            body = await _read_json_body(http_request)
            api_version, request = parse_review(body)
        except _HTTPError as rejected:
            recorder.observe(rejected.status, time.perf_counter() - started)
            return _error(rejected.status, rejected.message)
        except ReviewError as exc:
            recorder.observe(400, time.perf_counter() - started)
            return _error(400, str(exc))
        uid: str = request["uid"]
        try:
            decision = decide(request)
            content = encode_response(api_version, uid, decision)
        except Exception:
            logger.exception("%s: decision failed for request %s", webhook, uid)
            decision = _internal_error(webhook, fails_open())
            content = encode_response(api_version, uid, decision)
        recorder.observe(
            decision.code if not decision.allowed else 200,
            time.perf_counter() - started,
            patched=bool(decision.patch),
            denied=not decision.allowed,
        )
        return Response(content, media_type=JSON_CONTENT_TYPE)

    return endpoint


async def _read_json_body(request: Request) -> bytes:
    """The request body, refused unless it is JSON and at most MAX_BODY_BYTES.

    Streams with a running total instead of `Request.body()` so a chunked upload cannot grow the
    buffer past the limit; uvicorn pauses the socket while a chunk waits, so memory stays bounded.
    """
    content_type = request.headers.get("content-type", "")
    if content_type.partition(";")[0].strip().lower() != JSON_CONTENT_TYPE:
        raise _HTTPError(415, f"Content-Type must be {JSON_CONTENT_TYPE}, got {content_type!r}")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise _HTTPError(413, f"body of {declared} bytes exceeds the limit of {MAX_BODY_BYTES} bytes")
    chunks: list[bytes] = []
    size = 0
    try:
        async with aclosing(request.stream()) as stream:
            async for chunk in stream:
                size += len(chunk)
                if size > MAX_BODY_BYTES:
                    raise _HTTPError(413, f"body exceeds the limit of {MAX_BODY_BYTES} bytes")
                chunks.append(chunk)
    except ClientDisconnect:
        raise _HTTPError(400, "client disconnected while sending the body") from None
    return b"".join(chunks)


def _internal_error(webhook: str, fails_open: bool) -> Decision:
    if fails_open:
        warning = f"{webhook} failed internally; the request was admitted unchanged"
        return Decision(allowed=True, message=warning, warnings=[warning])
    return Decision(allowed=False, code=500, message=f"{webhook} failed internally; see the webhook logs")


def _error(status: int, message: str) -> Response:
    return Response(orjson.dumps({"message": message}), status_code=status, media_type=JSON_CONTENT_TYPE)
