"""The agent's HTTP endpoints: /metrics-spod (the operator's counters), /metrics (the process's own,
prometheus-client's default registry) and /healthz (200 once the caches are synced)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import REGISTRY, CollectorRegistry, exposition

from api import constants


def serve(
    host: str, port: int, registry: CollectorRegistry, healthy: Callable[[], bool]
) -> ThreadingHTTPServer:
    """Start serving in a daemon thread; `shutdown()` the result to stop."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == constants.PATH_METRICS_SPOD:
                self._send(200, exposition.generate_latest(registry), exposition.CONTENT_TYPE_LATEST)
            elif self.path == constants.PATH_METRICS:
                self._send(200, exposition.generate_latest(REGISTRY), exposition.CONTENT_TYPE_LATEST)
            elif self.path == constants.PATH_HEALTHZ:
                ok = healthy()
                self._send(200 if ok else 503, b"ok" if ok else b"caches not synced", "text/plain")
            else:
                self._send(404, b"not found", "text/plain")

        def _send(self, code: int, body: bytes, content_type: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            """Scrapes and probes every few seconds would drown the agent's log."""

    server = ThreadingHTTPServer((host, port), Handler)
    threading.Thread(target=server.serve_forever, name="agent-http", daemon=True).start()
    return server
