"""Prometheus metrics of the admission webhooks.

Every app owns its CollectorRegistry, so two apps in one process (tests, the benchmark) never share
counts and never collide on registration.
"""

from __future__ import annotations

from typing import Final

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest

# The kube-apiserver's own webhook latency buckets (apiserver_admission_webhook_admission_duration_seconds),
# so both sides of a call can be read on the same scale.
DURATION_BUCKETS: Final = (0.005, 0.025, 0.1, 0.5, 1.0, 2.5, 10.0, 25.0)
CONTENT_TYPE: Final = CONTENT_TYPE_LATEST


class WebhookMetrics:
    """The metric families of one app."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "spo_webhook_requests",
            "Admission requests answered, by webhook and status code (the AdmissionReview status code, "
            "or the HTTP status when the request was rejected before a review).",
            ["webhook", "code"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "spo_webhook_request_duration_seconds",
            "Time from receiving the request head to having the response ready.",
            ["webhook"],
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self.patches = Counter(
            "spo_webhook_patches",
            "Admission responses carrying a JSON patch.",
            ["webhook"],
            registry=self.registry,
        )
        self.denials = Counter(
            "spo_webhook_denials", "Admission requests denied.", ["webhook"], registry=self.registry
        )

    def recorder(self, webhook: str) -> WebhookRecorder:
        return WebhookRecorder(self, webhook)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class WebhookRecorder:
    """The metric children of one webhook, resolved once: `labels()` per request costs a lock and a lookup."""

    def __init__(self, metrics: WebhookMetrics, webhook: str) -> None:
        self._requests = metrics.requests
        self._webhook = webhook
        self._by_code: dict[int, Counter] = {}
        self._duration = metrics.duration.labels(webhook)
        self._patches = metrics.patches.labels(webhook)
        self._denials = metrics.denials.labels(webhook)

    def observe(self, code: int, seconds: float, *, patched: bool = False, denied: bool = False) -> None:
        counter = self._by_code.get(code)
        if counter is None:
            counter = self._by_code[code] = self._requests.labels(self._webhook, str(code))
        counter.inc()
        self._duration.observe(seconds)
        if patched:
            self._patches.inc()
        if denied:
            self._denials.inc()
