from __future__ import annotations

import argparse
import base64
import ipaddress
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

import certs
import certs.secret
from certs.cli import register_cli

DNS_NAMES = [
    "spo-webhook.security-profiles-operator.svc",
    "spo-webhook.security-profiles-operator.svc.cluster.local",
]
IP_ADDRESSES = ["127.0.0.1", "::1"]


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="spo")
    register_cli(parser.add_subparsers(dest="command", required=True))
    return parser


def run_cli(argv: list[str]) -> int:
    args = make_parser().parse_args(argv)
    code: int = args.func(args)
    return code


def generate_args(out: Path, dns_names: list[str], ip_addresses: list[str]) -> list[str]:
    argv = ["certs", "generate", "--out", str(out)]
    for name in dns_names:
        argv += ["--dns", name]
    for address in ip_addresses:
        argv += ["--ip", address]
    return argv


def san_of(cert: x509.Certificate) -> x509.SubjectAlternativeName:
    return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value


@pytest.fixture
def generated(tmp_path: Path) -> Path:
    out = tmp_path / "certs"
    assert run_cli(generate_args(out, DNS_NAMES, IP_ADDRESSES)) == 0
    return out


def test_cli_generates_files_that_openssl_verifies(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    generated = tmp_path / "certs"
    assert run_cli(generate_args(generated, DNS_NAMES, IP_ADDRESSES)) == 0
    printed = capsys.readouterr().out.split()
    assert printed == [str(generated / name) for name in ("ca.crt", "ca.key", "tls.crt", "tls.key")]
    assert (generated / "tls.key").stat().st_mode & 0o777 == 0o600
    assert (generated / "ca.key").stat().st_mode & 0o777 == 0o600

    result = subprocess.run(
        [
            "openssl",
            "verify",
            "-x509_strict",
            "-purpose",
            "sslserver",
            "-CAfile",
            str(generated / "ca.crt"),
            str(generated / "tls.crt"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr + result.stdout
    assert result.stdout.strip().endswith(": OK")

    san = san_of(certs.load_pair(generated).certificate)
    assert san.get_values_for_type(x509.DNSName) == DNS_NAMES
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address(a) for a in IP_ADDRESSES]


def test_ca_is_a_strict_ca(generated: Path) -> None:
    ca = certs.load_pair(generated, "ca.crt", "ca.key").certificate
    constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca
    usage = ca.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical and usage.value.key_cert_sign and usage.value.crl_sign
    ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    aki = ca.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == ski.digest


@pytest.fixture
def tls_server(generated: Path) -> Iterator[int]:
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(generated / "tls.crt", generated / "tls.key")
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            conn.settimeout(5)
            # Clients that reject the certificate abort the handshake; the server just moves on.
            try:
                with server_ctx.wrap_socket(conn, server_side=True) as tls:
                    tls.sendall(b"ok")
            except OSError:
                pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join(timeout=5)
    listener.close()


def strict_client(cafile: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=cafile)
    ctx.verify_flags |= ssl.VERIFY_X509_STRICT
    return ctx


def handshake(ctx: ssl.SSLContext, port: int, server_hostname: str) -> bytes:
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname=server_hostname) as tls,
    ):
        return tls.recv(2)


def test_tls_handshake_trusts_only_the_issuing_ca(generated: Path, tls_server: int, tmp_path: Path) -> None:
    trusting = strict_client(generated / "ca.crt")
    assert handshake(trusting, tls_server, "127.0.0.1") == b"ok"
    assert handshake(trusting, tls_server, DNS_NAMES[0]) == b"ok"

    with pytest.raises(ssl.SSLCertVerificationError, match="Hostname mismatch"):
        handshake(trusting, tls_server, "other.example.svc")

    other_ca = tmp_path / "other-ca.crt"
    other_ca.write_bytes(certs.generate_ca("other-ca").cert_pem)
    with pytest.raises(ssl.SSLCertVerificationError, match="unable to get local issuer"):
        handshake(strict_client(other_ca), tls_server, "127.0.0.1")


@pytest.fixture(scope="module")
def ca() -> certs.KeyPair:
    return certs.generate_ca()


def test_needs_renewal_after_two_thirds_of_the_lifetime(ca: certs.KeyPair) -> None:
    leaf = certs.issue_certificate(ca, "short", dns_names=["short.svc"], days=3)
    issued = leaf.certificate.not_valid_before_utc + timedelta(minutes=5)
    assert not certs.needs_renewal(leaf.cert_pem, issued + timedelta(days=0.5))
    assert certs.needs_renewal(leaf.cert_pem, issued + timedelta(days=2.5))
    assert certs.needs_renewal(leaf.cert_pem, issued + timedelta(days=4))
    assert certs.needs_renewal(leaf.cert_pem, issued - timedelta(days=1))
    assert not certs.needs_renewal(leaf.cert_pem)


def snapshot(directory: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(directory.iterdir())}


def write_expiring_leaf(directory: Path, dns_names: list[str]) -> None:
    """Replace tls.crt with one signed by the directory's CA but only a day away from a ten-day expiry."""
    ca = certs.load_pair(directory, "ca.crt", "ca.key")
    ca_key = serialization.load_pem_private_key(ca.key_pem, password=None)
    assert isinstance(ca_key, rsa.RSAPrivateKey)
    key_pem = certs.generate_private_key_pem()
    key = serialization.load_pem_private_key(key_pem, password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dns_names[0])]))
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=9))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in dns_names]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    certs.write_pair(directory, certs.KeyPair(cert.public_bytes(serialization.Encoding.PEM), key_pem))


def test_ensure_serving_certificate_reissues_only_when_needed(tmp_path: Path) -> None:
    names = ["a.ns.svc"]
    assert certs.ensure_serving_certificate(tmp_path, dns_names=names)
    first = snapshot(tmp_path)
    assert set(first) == {"ca.crt", "ca.key", "tls.crt", "tls.key"}

    assert not certs.ensure_serving_certificate(tmp_path, dns_names=names)
    assert snapshot(tmp_path) == first

    assert certs.ensure_serving_certificate(tmp_path, dns_names=["b.ns.svc"])
    renamed = snapshot(tmp_path)
    assert renamed["ca.crt"] == first["ca.crt"]
    assert renamed["tls.crt"] != first["tls.crt"]
    assert san_of(certs.load_pair(tmp_path).certificate).get_values_for_type(x509.DNSName) == ["b.ns.svc"]

    assert certs.ensure_serving_certificate(tmp_path, dns_names=["b.ns.svc"], ip_addresses=["10.0.0.1"])
    assert not certs.ensure_serving_certificate(tmp_path, dns_names=["b.ns.svc"], ip_addresses=["10.0.0.1"])

    write_expiring_leaf(tmp_path, ["c.ns.svc"])
    assert certs.needs_renewal((tmp_path / "tls.crt").read_bytes())
    assert certs.ensure_serving_certificate(tmp_path, dns_names=["c.ns.svc"])
    assert not certs.needs_renewal((tmp_path / "tls.crt").read_bytes())
    assert snapshot(tmp_path)["ca.crt"] == first["ca.crt"]


def test_ensure_serving_certificate_reissues_a_leaf_from_another_ca(
    tmp_path: Path, ca: certs.KeyPair
) -> None:
    assert certs.ensure_serving_certificate(tmp_path, dns_names=["a.ns.svc"])
    foreign = certs.issue_certificate(ca, "a.ns.svc", dns_names=["a.ns.svc"])
    certs.write_pair(tmp_path, foreign)

    assert certs.ensure_serving_certificate(tmp_path, dns_names=["a.ns.svc"])
    own_ca = certs.load_pair(tmp_path, "ca.crt", "ca.key").certificate
    certs.load_pair(tmp_path).certificate.verify_directly_issued_by(own_ca)


def test_ensure_serving_certificate_replaces_an_unreadable_ca(tmp_path: Path) -> None:
    assert certs.ensure_serving_certificate(tmp_path, dns_names=["a.ns.svc"])
    old_ca = (tmp_path / "ca.crt").read_bytes()
    (tmp_path / "ca.key").write_bytes(b"garbage")

    assert certs.ensure_serving_certificate(tmp_path, dns_names=["a.ns.svc"])
    new_ca = certs.load_pair(tmp_path, "ca.crt", "ca.key")
    assert new_ca.cert_pem != old_ca
    certs.load_pair(tmp_path).certificate.verify_directly_issued_by(new_ca.certificate)


def test_admin_client_certificate(ca: certs.KeyPair) -> None:
    client = certs.issue_certificate(ca, "admin", organization="system:masters", client=True).certificate
    assert client.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "system:masters"
    assert client.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "admin"
    eku = client.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    with pytest.raises(x509.ExtensionNotFound):
        san_of(client)


def test_tls_secret_round_trips_the_pems(ca: certs.KeyPair) -> None:
    serving = certs.issue_certificate(ca, "a.ns.svc", dns_names=["a.ns.svc"])
    secret = certs.secret.tls_secret("webhook-cert", "spo", ca, serving)
    assert secret["type"] == "kubernetes.io/tls"
    assert secret["metadata"] == {"name": "webhook-cert", "namespace": "spo"}
    data = {key: base64.b64decode(value, validate=True) for key, value in secret["data"].items()}
    assert data == {"tls.crt": serving.cert_pem, "tls.key": serving.key_pem, "ca.crt": ca.cert_pem}
    assert base64.b64decode(certs.ca_bundle(ca)) == ca.cert_pem


def test_webhook_dns_names() -> None:
    assert certs.webhook_dns_names("svc", "ns") == ["svc.ns.svc", "svc.ns.svc.cluster.local"]


def test_service_account_key_is_rsa_pem() -> None:
    key = serialization.load_pem_private_key(certs.generate_private_key_pem(), password=None)
    assert isinstance(key, rsa.RSAPrivateKey)


@pytest.mark.parametrize(
    ("argv_tail", "message"),
    [
        (["--dns", "a.svc", "--ip", "not-an-ip"], "invalid IP address 'not-an-ip'"),
        (["--dns", "bücher.svc"], "invalid DNS name"),
        (["--dns", "a.svc", "--days", "0"], "at least one day"),
        ([], "at least one DNS name or IP address"),
    ],
)
def test_cli_rejects_bad_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv_tail: list[str], message: str
) -> None:
    out = tmp_path / "out"
    assert run_cli(["certs", "generate", "--out", str(out), *argv_tail]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and "Traceback" not in err
    assert not out.exists()


def test_cli_reports_an_unwritable_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    assert run_cli(generate_args(blocker / "out", ["a.svc"], [])) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot write to" in err


@pytest.mark.parametrize(
    ("argv", "expected"),
    [(["certs", "--help"], "generate"), (["certs", "generate", "--help"], "--dns NAME")],
)
def test_cli_help_explains_itself(capsys: pytest.CaptureFixture[str], argv: list[str], expected: str) -> None:
    with pytest.raises(SystemExit) as exit_info:
        make_parser().parse_args(argv)
    assert exit_info.value.code == 0
    help_text = capsys.readouterr().out
    assert expected in help_text and "certificate" in help_text
