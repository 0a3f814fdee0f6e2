"""Certificate files on disk, and the self-managed serving certificate flow."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from api import constants
from certs.pki import (
    KeyPair,
    certificate_needs_renewal,
    check_days,
    generate_ca,
    issue_certificate,
    subject_alt_names,
)

_CERT_MODE = 0o644
_KEY_MODE = 0o600


def write_pair(
    directory: Path,
    pair: KeyPair,
    *,
    cert_name: str = constants.TLS_CERT_FILE,
    key_name: str = constants.TLS_KEY_FILE,
) -> tuple[Path, Path]:
    """Atomically write the certificate and key into `directory` (created if missing).

    Returns (cert_path, key_path).
    """
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / cert_name, directory / key_name
    # The key goes first: file watchers (e.g. controller-runtime's certwatcher) typically react to the
    # certificate changing, and by then the matching key must already be in place.
    _write_atomically(key_path, pair.key_pem, _KEY_MODE)
    _write_atomically(cert_path, pair.cert_pem, _CERT_MODE)
    return cert_path, key_path


def load_pair(
    directory: Path, cert_name: str = constants.TLS_CERT_FILE, key_name: str = constants.TLS_KEY_FILE
) -> KeyPair:
    return KeyPair((directory / cert_name).read_bytes(), (directory / key_name).read_bytes())


def ensure_serving_certificate(
    directory: Path, *, dns_names: Sequence[str], ip_addresses: Sequence[str] = (), days: int = 365
) -> bool:
    """Keep a CA (ca.crt/ca.key) and a serving pair (tls.crt/tls.key) in `directory` current.

    The CA is regenerated when missing, unreadable or in the last third of its lifetime. The serving
    pair is reissued when missing, unreadable, in the last third of its lifetime, not signed by the
    current CA, not matching its key, or carrying SANs other than the requested ones.
    Returns True when a new serving pair was written. Raises ValueError for invalid names or `days`
    before touching the directory, and OSError when the directory cannot be written.
    """
    check_days(days)
    wanted_names = set(subject_alt_names(dns_names, ip_addresses))
    if not wanted_names:
        raise ValueError("a serving certificate needs at least one DNS name or IP address")

    ca = _load_usable_pair(directory, constants.CA_CERT_FILE, constants.CA_KEY_FILE)
    if ca is None or certificate_needs_renewal(ca.certificate):
        ca = generate_ca()
        write_pair(directory, ca, cert_name=constants.CA_CERT_FILE, key_name=constants.CA_KEY_FILE)

    serving = _load_usable_pair(directory, constants.TLS_CERT_FILE, constants.TLS_KEY_FILE)
    if serving is not None and _serving_is_current(serving.certificate, ca.certificate, wanted_names):
        return False
    common_name = dns_names[0] if dns_names else ip_addresses[0]
    serving = issue_certificate(ca, common_name, dns_names=dns_names, ip_addresses=ip_addresses, days=days)
    write_pair(directory, serving)
    return True


def _serving_is_current(
    cert: x509.Certificate, ca_cert: x509.Certificate, wanted_names: set[x509.GeneralName]
) -> bool:
    if certificate_needs_renewal(cert):
        return False
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    return set(san) == wanted_names


def _load_usable_pair(directory: Path, cert_name: str, key_name: str) -> KeyPair | None:
    """The pair on disk if both files parse and the key belongs to the certificate, else None."""
    try:
        pair = load_pair(directory, cert_name, key_name)
    except FileNotFoundError:
        return None
    try:
        cert = pair.certificate
        key = serialization.load_pem_private_key(pair.key_pem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        return None
    if cert.public_key() != key.public_key():
        return None
    return pair


def _write_atomically(path: Path, data: bytes, mode: int) -> None:
    # A temp file in the same directory keeps os.replace a same-filesystem rename, so a reader sees
    # either the old or the new content, never a partial file.
    fd, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), mode)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp_name)
        raise
