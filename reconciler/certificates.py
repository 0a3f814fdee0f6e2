"""The webhook's certificates in a cluster (pure): from the two Secrets and the caBundles the webhook
configurations publish, what the Secrets must hold and which CAs to trust.

Two Secrets: the CA Secret (`webhook-ca`, read only by the reconciler) holds the signing CA and, during a
CA change, the previous one; the webhook's Secret (`webhook-server-cert`, mounted by the webhook) holds
the serving pair and, under `ca.crt`, the bundle of CA certificates to trust - never a CA key.

A rotation never fails an admission:
- the serving certificate is renewed in the last third of its lifetime (certs.pki), signed by a CA the
  apiserver already trusts;
- a CA is replaced in the last third of its lifetime: the new one joins the bundle at once, but the
  serving certificate is signed by it only once every published caBundle contains it (until then the
  previous CA keeps signing);
- the previous CA leaves the bundle only when it has expired, when nothing it signed verifies anyway.
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from api import constants
from certs.pki import KeyPair, certificate_needs_renewal, subject_alt_names


@dataclass(frozen=True)
class Validity:
    ca: datetime.timedelta = datetime.timedelta(days=3650)
    serving: datetime.timedelta = datetime.timedelta(days=365)


DEFAULT_VALIDITY = Validity()


@dataclass(frozen=True)
class Issuer:
    """How new material is made (certs.pki in production; the plan itself stays deterministic)."""

    new_ca: Callable[[datetime.timedelta], KeyPair]
    new_serving: Callable[[KeyPair, Hosts, datetime.timedelta], KeyPair]


@dataclass(frozen=True)
class Hosts:
    """The names the apiserver reaches the webhook by: the Service's DNS names in a cluster, the
    `--webhook-url` host (often an IP address) in local mode."""

    dns_names: tuple[str, ...] = ()
    ip_addresses: tuple[str, ...] = ()

    @classmethod
    def of(cls, hosts: Sequence[str]) -> Hosts:
        dns, ips = [], []
        for host in hosts:
            try:
                ipaddress.ip_address(host)
            except ValueError:
                dns.append(host)
            else:
                ips.append(host)
        return cls(tuple(dns), tuple(ips))

    def subject_alt_names(self) -> set[x509.GeneralName]:
        return set(subject_alt_names(self.dns_names, self.ip_addresses))


@dataclass(frozen=True)
class Plan:
    ca_secret: dict[str, bytes]
    webhook_secret: dict[str, bytes]
    # Every CA certificate to trust, PEM, newest first: the webhook Secret's `ca.crt` and the caBundle.
    bundle: bytes
    # When to look again: the next renewal of the serving certificate or of a CA, or an expiry.
    next_check: datetime.datetime


def load_pair(data: Mapping[str, bytes], cert_key: str, key_key: str) -> KeyPair | None:
    """The pair stored under the two keys if both parse and belong together, else None."""
    cert_pem, key_pem = data.get(cert_key), data.get(key_key)
    if not cert_pem or not key_pem:
        return None
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        return None
    return KeyPair(cert_pem, key_pem) if cert.public_key() == key.public_key() else None


def certificates_in(bundle: bytes) -> list[x509.Certificate]:
    try:
        return x509.load_pem_x509_certificates(bundle)
    except ValueError:
        return []


def plan(
    ca_data: Mapping[str, bytes],
    webhook_data: Mapping[str, bytes],
    published: Sequence[bytes] | None,
    *,
    hosts: Hosts,
    now: datetime.datetime,
    issuer: Issuer,
    validity: Validity,
) -> Plan:
    """``published``: the caBundle of each of our webhook configurations (None while none exists, as
    on the first install, when the current CA signs at once)."""
    current = load_pair(ca_data, constants.CA_CERT_FILE, constants.CA_KEY_FILE)
    previous = load_pair(ca_data, constants.PREVIOUS_CA_CERT_FILE, constants.PREVIOUS_CA_KEY_FILE)
    if current is None:
        current, previous = issuer.new_ca(validity.ca), None
    elif certificate_needs_renewal(current.certificate, now):
        current, previous = issuer.new_ca(validity.ca), current
    if previous is not None and previous.certificate.not_valid_after_utc <= now:
        previous = None
    trusted = [current] + ([previous] if previous is not None else [])

    signer = current
    if published is not None and previous is not None and not _everywhere(current, published):
        signer = previous
    serving = load_pair(webhook_data, constants.TLS_CERT_FILE, constants.TLS_KEY_FILE)
    if serving is None or not _serving_is_current(serving.certificate, signer, hosts, now):
        serving = issuer.new_serving(signer, hosts, validity.serving)

    bundle = b"".join(pair.cert_pem for pair in trusted)
    ca_secret = {constants.CA_CERT_FILE: current.cert_pem, constants.CA_KEY_FILE: current.key_pem}
    if previous is not None:
        ca_secret[constants.PREVIOUS_CA_CERT_FILE] = previous.cert_pem
        ca_secret[constants.PREVIOUS_CA_KEY_FILE] = previous.key_pem
    webhook_secret = {
        constants.TLS_CERT_FILE: serving.cert_pem,
        constants.TLS_KEY_FILE: serving.key_pem,
        constants.CA_CERT_FILE: bundle,
    }
    checks = [_renewal_time(current.certificate), _renewal_time(serving.certificate)]
    if previous is not None:
        checks.append(previous.certificate.not_valid_after_utc)
    return Plan(ca_secret, webhook_secret, bundle, min(checks))


def _everywhere(ca: KeyPair, published: Sequence[bytes]) -> bool:
    return all(ca.certificate in certificates_in(bundle) for bundle in published)


def _serving_is_current(
    cert: x509.Certificate, signer: KeyPair, hosts: Hosts, now: datetime.datetime
) -> bool:
    if certificate_needs_renewal(cert, now):
        return False
    try:
        cert.verify_directly_issued_by(signer.certificate)
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, TypeError, InvalidSignature, x509.ExtensionNotFound):
        return False
    return set(names) == hosts.subject_alt_names()


def _renewal_time(cert: x509.Certificate) -> datetime.datetime:
    """When the certificate enters the last third of its lifetime (certs.pki renews from then on)."""
    not_before, not_after = cert.not_valid_before_utc, cert.not_valid_after_utc
    return not_after - (not_after - not_before) / 3
