"""The real HTTPS server: trust, certificate rotation without restart, and SIGTERM drain (127.0.0.1 only)."""

from __future__ import annotations

import json
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from cryptography import x509

import certs
from api import constants
from webhooks.review import API_VERSION_V1
from webhooks.server import CertificateReloader

HOST = "127.0.0.1"
RELOAD_INTERVAL = 0.2
SLOW_SECONDS = 3.0
STARTUP_TIMEOUT = 20.0

# The server process: the real app and `serve`, plus a slow route to hold a request in flight.
SERVER_SCRIPT = """
import asyncio, logging, sys
from pathlib import Path
from starlette.requests import Request
from starlette.responses import Response
from webhooks.app import create_app
from webhooks.server import serve
from webhooks.snapshot import StaticSnapshot

port, cert_dir, marker, reload_interval, slow = sys.argv[1:]
logging.basicConfig(level=logging.INFO)
app = create_app(StaticSnapshot(), lambda: True)

async def slow_route(_: Request) -> Response:
    Path(marker).touch()
    await asyncio.sleep(float(slow))
    return Response(b"done")

app.add_route("/slow", slow_route, methods=["GET"])
cert_file, key_file = Path(cert_dir) / "tls.crt", Path(cert_dir) / "tls.key"
code = serve(app, host="127.0.0.1", port=int(port), cert_file=cert_file, key_file=key_file,
             reload_interval=float(reload_interval), graceful_timeout=10)
sys.exit(code)
"""


@dataclass(frozen=True)
class Pki:
    ca_file: Path
    cert_dir: Path
    first: certs.KeyPair
    second: certs.KeyPair

    def client_context(self) -> ssl.SSLContext:
        """Trusts only the test CA."""
        return ssl.create_default_context(cafile=self.ca_file)


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    port: int
    log: Path
    marker: Path

    def logs(self) -> str:
        return self.log.read_text(errors="replace")


def serial_of(pair: certs.KeyPair) -> int:
    return pair.certificate.serial_number


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    ca = certs.generate_ca("webhook-test-ca")
    first, second = (
        certs.issue_certificate(ca, name, dns_names=["localhost"], ip_addresses=[HOST])
        for name in ("webhook-one", "webhook-two")
    )
    ca_file = tmp_path / "ca.crt"
    ca_file.write_bytes(ca.cert_pem)
    cert_dir = tmp_path / "serving"
    certs.write_pair(cert_dir, first)
    return Pki(ca_file, cert_dir, first, second)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
        return port


def tls_get(
    port: int, context: ssl.SSLContext, path: str = "/healthz", server_name: str = HOST
) -> tuple[int, int]:
    """GET over a fresh TLS connection; returns (HTTP status, serial of the certificate the server showed)."""
    with (
        socket.create_connection((HOST, port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=server_name) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
        assert der is not None
        tls.sendall(f"GET {path} HTTP/1.1\r\nHost: {server_name}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := tls.recv(65536):
            data += chunk
    return int(data.split(b" ", 2)[1]), x509.load_der_x509_certificate(der).serial_number


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def start_server(pki: Pki, tmp_path: Path) -> Server:
    """The server on a free port, trying another one if the port was taken between probe and bind."""
    log = tmp_path / "server.log"
    marker = tmp_path / "slow-started"
    context = pki.client_context()
    for _ in range(3):
        port = free_port()
        args = [str(port), str(pki.cert_dir), str(marker), str(RELOAD_INTERVAL), str(SLOW_SECONDS)]
        with log.open("wb") as sink:
            process = subprocess.Popen([sys.executable, "-c", SERVER_SCRIPT, *args], stdout=sink, stderr=sink)
        running = Server(process, port, log, marker)

        def up(process: subprocess.Popen[bytes] = process, port: int = port) -> bool:
            if process.poll() is not None:
                return True
            try:
                return tls_get(port, context)[0] == 200
            except OSError:
                return False

        wait_for(up, STARTUP_TIMEOUT, "the server to answer /healthz")
        if process.poll() is None:
            return running
        if "address already in use" not in running.logs():
            raise AssertionError(f"server exited with {process.returncode}:\n{running.logs()}")
    raise AssertionError("no free port found")


@pytest.fixture
def server(pki: Pki, tmp_path: Path) -> Iterator[Server]:
    running = start_server(pki, tmp_path)
    try:
        yield running
    finally:
        if running.process.poll() is None:
            running.process.kill()
        running.process.wait(timeout=10)


def binding_review(uid: str) -> bytes:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p"},
        "spec": {"containers": [{"name": "c"}]},
    }
    request = {"uid": uid, "kind": {"kind": "Pod"}, "namespace": "ns", "operation": "CREATE", "object": pod}
    return json.dumps({"apiVersion": API_VERSION_V1, "kind": "AdmissionReview", "request": request}).encode()


def test_client_trusting_only_the_ca_gets_healthz(server: Server, pki: Pki) -> None:
    with httpx.Client(verify=pki.client_context()) as client:
        assert client.get(f"https://{HOST}:{server.port}/healthz").status_code == 200
        assert client.get(f"https://localhost:{server.port}/readyz").status_code == 200
    assert tls_get(server.port, pki.client_context())[1] == serial_of(pki.first)
    # And a client that does not trust the test CA refuses the server.
    with pytest.raises(ssl.SSLCertVerificationError):
        tls_get(server.port, ssl.create_default_context())


def test_oversized_bodies_get_413_and_the_connection_keeps_serving(server: Server, pki: Pki) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(4):
            yield b" " * (1024 * 1024)

    headers = {"content-type": "application/json"}
    with httpx.Client(verify=pki.client_context(), base_url=f"https://{HOST}:{server.port}") as client:
        for content in (b" " * (4 * 1024 * 1024), chunks()):
            assert client.post(constants.PATH_BINDING, content=content, headers=headers).status_code == 413
            http = client.post(constants.PATH_BINDING, content=binding_review("after"), headers=headers)
            assert http.json()["response"]["uid"] == "after"
    assert server.process.poll() is None


@dataclass
class Traffic:
    """Results of the client threads that run while the certificate is rotated."""

    fresh_serials: list[int] = field(default_factory=list)
    keep_alive_serials: list[int] = field(default_factory=list)
    keep_alive_after_swap: int = 0
    failures: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    swapped: threading.Event = field(default_factory=threading.Event)


def fresh_connections(port: int, context: ssl.SSLContext, traffic: Traffic) -> None:
    # Alternates between no SNI (IP address) and SNI (DNS name): both must see the current certificate.
    names = [HOST, "localhost"]
    count = 0
    while not traffic.stop.is_set():
        try:
            status, serial = tls_get(port, context, server_name=names[count % 2])
        except OSError as exc:
            traffic.failures.append(f"fresh connection: {exc!r}")
            continue
        count += 1
        if status != 200:
            traffic.failures.append(f"fresh connection: HTTP {status}")
        traffic.fresh_serials.append(serial)


def keep_alive_requests(port: int, context: ssl.SSLContext, traffic: Traffic) -> None:
    headers = {"content-type": "application/json"}
    with httpx.Client(verify=context, base_url=f"https://{HOST}:{port}") as client:
        count = 0
        while not traffic.stop.is_set():
            count += 1
            try:
                http = client.post(
                    constants.PATH_BINDING, content=binding_review(f"ka-{count}"), headers=headers
                )
                answer = http.json()["response"]
            except (httpx.HTTPError, ValueError, KeyError) as exc:
                traffic.failures.append(f"keep-alive: {exc!r}")
                continue
            if http.status_code != 200 or answer["uid"] != f"ka-{count}":
                traffic.failures.append(f"keep-alive: HTTP {http.status_code} {answer}")
            tls_object = http.extensions["network_stream"].get_extra_info("ssl_object")
            der = tls_object.getpeercert(True)  # httpcore exposes the C-level object: positional only
            traffic.keep_alive_serials.append(x509.load_der_x509_certificate(der).serial_number)
            if traffic.swapped.is_set():
                traffic.keep_alive_after_swap += 1


def recorded(
    client: Callable[[int, ssl.SSLContext, Traffic], None], traffic: Traffic
) -> Callable[[int, ssl.SSLContext, Traffic], None]:
    """The client, with any unexpected exception recorded as a failure (a thread's would be lost)."""

    def run(port: int, context: ssl.SSLContext, traffic: Traffic) -> None:
        try:
            client(port, context, traffic)
        except Exception as exc:
            traffic.failures.append(f"{client.__name__} crashed: {exc!r}")
            traffic.stop.set()

    return run


def test_rotation_serves_the_new_certificate_without_failing_a_request(server: Server, pki: Pki) -> None:
    context = pki.client_context()
    traffic = Traffic()
    threads = [
        threading.Thread(target=recorded(client, traffic), args=(server.port, context, traffic))
        for client in (fresh_connections, keep_alive_requests)
    ]
    for thread in threads:
        thread.start()
    try:
        wait_for(
            lambda: len(traffic.fresh_serials) >= 5 and len(traffic.keep_alive_serials) >= 5, 10, "traffic"
        )
        # write_pair replaces tls.key, then tls.crt, each by write-to-temp + os.replace.
        certs.write_pair(pki.cert_dir, pki.second)
        traffic.swapped.set()
        wait_for(
            lambda: serial_of(pki.second) in traffic.fresh_serials,
            10,
            "a connection with the new certificate",
        )
        seen = len(traffic.fresh_serials)
        wait_for(
            lambda: len(traffic.fresh_serials) >= seen + 5 and traffic.keep_alive_after_swap >= 5,
            10,
            "traffic",
        )
    finally:
        traffic.stop.set()
        for thread in threads:
            thread.join(timeout=30)

    assert traffic.failures == []
    first, second = serial_of(pki.first), serial_of(pki.second)
    switch = traffic.fresh_serials.index(second)
    assert switch > 0
    # Every fresh connection shows the old certificate until the switch and the new one ever after.
    assert traffic.fresh_serials == [first] * switch + [second] * (len(traffic.fresh_serials) - switch)
    # The keep-alive connection was not broken: it stays on the certificate it was established with.
    assert set(traffic.keep_alive_serials) == {first}
    assert tls_get(server.port, context, server_name="localhost") == (200, second)
    assert tls_get(server.port, context) == (200, second)


def test_a_broken_or_mismatched_pair_is_ignored_until_valid(server: Server, pki: Pki) -> None:
    context = pki.client_context()
    first, second = serial_of(pki.first), serial_of(pki.second)
    cert_file, key_file = pki.cert_dir / constants.TLS_CERT_FILE, pki.cert_dir / constants.TLS_KEY_FILE

    key_file.write_bytes(pki.second.key_pem)  # the new key next to the old certificate
    wait_for(lambda: "keeping the current certificate" in server.logs(), 10, "the mismatch to be reported")
    assert tls_get(server.port, context) == (200, first)

    cert_file.write_bytes(pki.second.cert_pem[: len(pki.second.cert_pem) // 2])  # half written
    wait_for(lambda: server.logs().count("keeping the current certificate") >= 2, 10, "the partial file")
    assert tls_get(server.port, context) == (200, first)

    cert_file.write_bytes(pki.second.cert_pem)
    wait_for(lambda: tls_get(server.port, context)[1] == second, 10, "the completed pair to be served")
    assert server.process.poll() is None


def test_sigterm_finishes_the_in_flight_request_then_exits_zero(server: Server, pki: Pki) -> None:
    context = pki.client_context()
    result: dict[str, object] = {}

    def slow_request() -> None:
        try:
            result["response"] = httpx.get(f"https://{HOST}:{server.port}/slow", verify=context, timeout=30)
        except httpx.HTTPError as exc:
            result["error"] = exc

    # An idle keep-alive connection must not hold the drain open.
    idle = httpx.Client(verify=context)
    assert idle.get(f"https://{HOST}:{server.port}/healthz").status_code == 200
    requester = threading.Thread(target=slow_request)
    requester.start()
    try:
        wait_for(server.marker.exists, 10, "the slow request to reach the app")
        server.process.send_signal(signal.SIGTERM)
        terminated = time.monotonic()
        # New connections are refused once the listener is closed, while the slow request still runs.
        wait_for(lambda: _refused(server.port), 5, "the listener to close")
        assert "response" not in result
        requester.join(timeout=30)
        assert server.process.wait(timeout=30) == 0
        exited = time.monotonic()
    finally:
        idle.close()
    response = result.get("response")
    assert isinstance(response, httpx.Response), result
    assert (response.status_code, response.content) == (200, b"done")
    assert exited - terminated < SLOW_SECONDS + 3


def _refused(port: int) -> bool:
    try:
        socket.create_connection((HOST, port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


# --- the reloader on its own --------------------------------------------------------------------


def test_reloader_loads_only_changed_and_valid_pairs(pki: Pki) -> None:
    cert_file, key_file = pki.cert_dir / constants.TLS_CERT_FILE, pki.cert_dir / constants.TLS_KEY_FILE
    reloader = CertificateReloader(cert_file, key_file, interval=60)
    assert reloader.context.minimum_version >= ssl.TLSVersion.TLSv1_2
    assert reloader.check() is False  # nothing changed

    key_file.write_bytes(pki.second.key_pem)
    assert reloader.check() is False  # key does not match the certificate
    key_file.unlink()
    assert reloader.check() is False  # key missing
    certs.write_pair(pki.cert_dir, pki.second)
    assert reloader.check() is True
    assert reloader.check() is False


# --- `spo webhook` ------------------------------------------------------------------------------

CLI_SCRIPT = """
import argparse, sys
from webhooks.cli import register_cli
parser = argparse.ArgumentParser(prog="spo")
register_cli(parser.add_subparsers(dest="command", required=True))
args = parser.parse_args(sys.argv[1:])
sys.exit(args.func(args))
"""

# An apiserver nobody listens on: the caches never sync, so the webhook is alive but not ready.
UNREACHABLE_KUBECONFIG = """
apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:1", insecure-skip-tls-verify: true}}]
users: [{name: u, user: {token: t}}]
contexts: [{name: c, context: {cluster: c, user: u}}]
current-context: c
"""


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", CLI_SCRIPT, "webhook", *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_cli_refuses_missing_certificate_files(tmp_path: Path) -> None:
    result = run_cli("--cert-dir", str(tmp_path))
    assert result.returncode == 2
    missing = f"{tmp_path / constants.TLS_CERT_FILE} and {tmp_path / constants.TLS_KEY_FILE}"
    assert result.stderr.strip().splitlines() == [f"spo webhook: error: missing {missing}"]


def test_cli_refuses_a_mismatched_pair(pki: Pki) -> None:
    (pki.cert_dir / constants.TLS_KEY_FILE).write_bytes(pki.second.key_pem)
    result = run_cli("--cert-dir", str(pki.cert_dir))
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("spo webhook: error: cannot load") and "KEY_VALUES_MISMATCH" in line


def test_cli_serves_health_until_caches_sync_and_exits_zero_on_sigterm(pki: Pki, tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(UNREACHABLE_KUBECONFIG)
    port = free_port()
    args = [
        "--host",
        HOST,
        "--port",
        str(port),
        "--cert-dir",
        str(pki.cert_dir),
        "--kubeconfig",
        str(kubeconfig),
    ]
    with (tmp_path / "cli.log").open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-c", CLI_SCRIPT, "webhook", *args], stdout=sink, stderr=sink
        )
    try:
        context = pki.client_context()

        def healthy() -> bool:
            assert process.poll() is None, (tmp_path / "cli.log").read_text()
            try:
                return tls_get(port, context)[0] == 200
            except OSError:
                return False

        wait_for(healthy, STARTUP_TIMEOUT, "spo webhook to answer /healthz")
        assert tls_get(port, context, "/readyz")[0] == 503
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
