"""HTTPS serving of the webhook app with uvicorn: certificates that follow their files, and SIGTERM drain.

Certificate rotation (cert-manager, service-ca or `spo certs` rewriting the mounted Secret) must not
need a restart: a background thread polls the files, and every new TLS connection is switched to the
most recent valid pair from the SNI callback, which OpenSSL runs during the handshake before it
picks the certificate. Established connections keep the context they were handshaken with.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import signal
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import uvicorn
from starlette.types import ASGIApp
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

logger = logging.getLogger(__name__)

DEFAULT_RELOAD_INTERVAL: Final = 1.0
# Below the kubelet's default terminationGracePeriodSeconds (30 s), so the drain ends before SIGKILL.
DEFAULT_GRACEFUL_TIMEOUT: Final = 25
# Longer than the kube-apiserver's 90 s idle timeout for webhook connections: the client must be the
# side that closes an idle connection, or a request sent as the server closes it fails (Go does not
# retry a POST), which is an admission failure. Measured cost: with uvloop over TLS, memory grows by
# ~120 bytes per request and levels off after this many seconds, i.e. rate x timeout (~15 MiB at
# 1,000 requests/s; under 2 MiB at 5 s, uvicorn's default).
KEEP_ALIVE_TIMEOUT: Final = 120

# (inode, device, mtime, size) of each file; None when it cannot be read.
_Signature = tuple[tuple[int, int, int, int] | None, ...]


class CertificateReloader:
    """A server SSLContext whose certificate follows `cert_file`/`key_file` on disk.

    `context` is the one to hand to the server. A changed pair is loaded on the next `check()` (run
    every `interval` seconds by `start()`); a pair that does not load (half written, key not matching
    the certificate) is logged and ignored, and the previous pair stays in use.
    """

    def __init__(self, cert_file: Path, key_file: Path, *, interval: float = DEFAULT_RELOAD_INTERVAL) -> None:
        self._cert_file = cert_file
        self._key_file = key_file
        self._interval = interval
        self._signature = self._current_signature()
        self._current = server_context(cert_file, key_file)
        self.context = self._current
        self.context.sni_callback = self._select_current
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def check(self) -> bool:
        """Load the pair if its files changed since the last look; True when a new pair is now served."""
        signature = self._current_signature()
        if signature == self._signature:
            return False
        # Recorded before loading: a file replaced while we read it changes the signature again and is
        # loaded on the next check, and a broken pair is reported once rather than on every poll.
        self._signature = signature
        try:
            context = server_context(self._cert_file, self._key_file)
        except (OSError, ssl.SSLError) as exc:
            logger.error(
                "keeping the current certificate: cannot load %s / %s: %s",
                self._cert_file,
                self._key_file,
                exc,
            )
            return False
        self._current = context
        logger.info("serving the new certificate from %s", self._cert_file)
        return True

    def start(self) -> None:
        self._thread = threading.Thread(target=self._poll, name="certificate-reloader", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _poll(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.check()
            except Exception:
                logger.exception("certificate reload check failed")

    def _select_current(
        self, connection: ssl.SSLSocket | ssl.SSLObject, server_name: str | None, context: ssl.SSLContext
    ) -> None:
        current = self._current
        if current is not context:
            connection.context = current

    def _current_signature(self) -> _Signature:
        return tuple(_file_signature(path) for path in (self._cert_file, self._key_file))


def server_context(cert_file: Path, key_file: Path) -> ssl.SSLContext:
    """A TLS ≥ 1.2 server context for the pair; raises OSError/SSLError if it does not load or match."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["http/1.1"])
    context.load_cert_chain(cert_file, key_file)
    return context


def serve(
    app: ASGIApp,
    *,
    host: str,
    port: int,
    cert_file: Path,
    key_file: Path,
    reload_interval: float = DEFAULT_RELOAD_INTERVAL,
    graceful_timeout: int = DEFAULT_GRACEFUL_TIMEOUT,
    limit_concurrency: int = 1000,
    backlog: int = 1024,
    access_log: bool = False,
    log_level: str = "info",
) -> int:
    """Serve `app` over HTTPS until SIGTERM/SIGINT, then drain in-flight requests and return 0.

    Raises OSError/SSLError when the initial certificate pair cannot be loaded.
    """
    reloader = CertificateReloader(cert_file, key_file, interval=reload_interval)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        # uvloop + httptools: the C event loop and parser, one process; admission latency is mostly
        # per-request interpreter work, which more workers would only spread, not shorten.
        loop="uvloop",
        http=_DrainingHttpToolsProtocol,
        ws="none",
        lifespan="off",
        ssl_context_factory=lambda _config, _default: reloader.context,
        backlog=backlog,
        # Past this many connections + in-flight requests uvicorn answers 503 at once instead of
        # queueing without bound; the apiserver then applies the webhook's failurePolicy.
        limit_concurrency=limit_concurrency,
        timeout_keep_alive=KEEP_ALIVE_TIMEOUT,
        timeout_graceful_shutdown=graceful_timeout,
        access_log=access_log,
        log_level=log_level,
        proxy_headers=False,
        server_header=False,
    )
    # Everything alive now (modules, the app, the snapshot so far) lives as long as the process. A full
    # collection walking it takes tens of milliseconds, paid by whichever admission request triggers
    # it; frozen objects are left out of collections.
    gc.freeze()
    reloader.start()
    try:
        _DrainingServer(config).run()
    finally:
        reloader.stop()
    return 0


class _DrainingServer(uvicorn.Server):
    """A uvicorn server whose graceful shutdown on SIGTERM/SIGINT ends in a normal return.

    uvicorn re-raises the captured signal after draining so that its default action kills the
    process; a pod that drained cleanly should instead exit 0.
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


class _DrainingHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, dropping idle keep-alive connections at once on shutdown.

    uvicorn closes an idle connection on shutdown and waits for every connection to be gone. Over TLS a
    close waits (up to 30 s) for the peer's close_notify, which an HTTP client does not send while it
    is not reading its idle pooled connection, so the drain would last the whole graceful timeout.
    Connections with a request in flight are still finished and then closed normally.
    """

    def shutdown(self) -> None:
        if self.cycle is None or self.cycle.response_complete:
            self.transport.abort()
        else:
            super().shutdown()


def _file_signature(path: Path) -> tuple[int, int, int, int] | None:
    try:
        status = os.stat(path)
    except OSError:
        return None
    return (status.st_ino, status.st_dev, status.st_mtime_ns, status.st_size)
