"""The agent's HTTP endpoints: /metrics-spod (the operator's counters), /metrics (the process's own,
prometheus-client's default registry) and /healthz (200 once the caches are synced).

/metrics-spod may also carry the families another agent process of the same pod serves (`also`): the
metrics Service reaches one container of the spod pod, and the docs read the log enricher's audit
counters there, beside the profile counters (docs 7.8.6, table 7.1)."""

from __future__ import annotations

import logging
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import REGISTRY, CollectorRegistry, exposition

from api import constants

log = logging.getLogger(__name__)

# A scrape waits this long at most for another process's families; without them it still answers.
_ALSO_TIMEOUT_SECONDS = 2.0


def _families_of(base_url: str) -> bytes:
    """Another agent process's /metrics-spod, or nothing while it does not answer."""
    url = f"{base_url.rstrip('/')}{constants.PATH_METRICS_SPOD}"
    try:
        with urllib.request.urlopen(url, timeout=_ALSO_TIMEOUT_SECONDS) as response:  # noqa: S310 - our flag
            body: bytes = response.read()
            return body
    except (urllib.error.URLError, OSError) as error:
        log.debug("%s: %s", url, error)
        return b""


def serve(
    host: str,
    port: int,
    registry: CollectorRegistry,
    healthy: Callable[[], bool],
    also: Sequence[str] = (),
) -> ThreadingHTTPServer:
    """Start serving in a daemon thread; `shutdown()` the result to stop. `also`: base URLs of agent
    processes whose /metrics-spod families are served here too (theirs are not ours: no family twice)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == constants.PATH_METRICS_SPOD:
                body = exposition.generate_latest(registry) + b"".join(_families_of(url) for url in also)
                self._send(200, body, exposition.CONTENT_TYPE_LATEST)
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
