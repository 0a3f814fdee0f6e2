"""Certificate authority and leaf certificate issuance, built on `cryptography` only."""

from __future__ import annotations

import base64
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# RSA 2048 rather than ECDSA P-256: the leaf keyUsage carries keyEncipherment, which RFC 5480 forbids
# for EC keys (strict verifiers such as OpenSSL's -x509_strict reject that combination), and every
# consumer of these files (kube-apiserver calling webhooks, Go's crypto/tls, OpenSSL, Python's ssl)
# accepts RSA 2048 without special configuration.
_RSA_KEY_SIZE = 2048
_RSA_PUBLIC_EXPONENT = 65537

# Back-dating notBefore tolerates clocks on other nodes running slightly behind ours.
_CLOCK_SKEW = timedelta(minutes=5)


@dataclass(frozen=True)
class KeyPair:
    """A PEM certificate and its PEM (PKCS#8, unencrypted) private key."""

    cert_pem: bytes
    key_pem: bytes

    @property
    def certificate(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.cert_pem)


def generate_private_key_pem() -> bytes:
    """Return a fresh RSA private key as unencrypted PKCS#8 PEM."""
    return _key_to_pem(_new_private_key())


def generate_ca(
    common_name: str = "spo-ca", days: int = 3650, *, lifetime: timedelta | None = None
) -> KeyPair:
    """Create a self-signed certificate authority valid for `days` days (or exactly `lifetime`)."""
    check_days(days)
    key = _new_private_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    builder = (
        _base_builder(lifetime or timedelta(days=days))
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_key_usage(key_cert_sign=True, crl_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        # Optional on a self-signed root (RFC 5280 4.2.1.1), but certificate linters flag its absence.
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()), critical=False)
    )
    cert = builder.sign(key, hashes.SHA256())
    return KeyPair(cert.public_bytes(serialization.Encoding.PEM), _key_to_pem(key))


def issue_certificate(
    ca: KeyPair,
    common_name: str,
    *,
    dns_names: Sequence[str] = (),
    ip_addresses: Sequence[str] = (),
    organization: str | None = None,
    client: bool = False,
    days: int = 365,
    lifetime: timedelta | None = None,
) -> KeyPair:
    """Issue a leaf certificate signed by `ca`, valid for `days` days (or exactly `lifetime`, which lets
    tests and short-lived setups exercise renewal).

    `client=True` makes a TLS client certificate; otherwise it is a server certificate.
    Raises ValueError for an invalid IP address, a non-ASCII DNS name or a non-positive `days`.
    """
    check_days(days)
    alt_names = subject_alt_names(dns_names, ip_addresses)
    ca_cert = ca.certificate
    ca_key = serialization.load_pem_private_key(ca.key_pem, password=None)
    # A CA brought from elsewhere may hold an EC key; both sign with SHA-256 just the same.
    if not isinstance(ca_key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise ValueError("the CA private key is neither an RSA nor an EC key")
    key = _new_private_key()
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if organization is not None:
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    builder = (
        _base_builder(lifetime or timedelta(days=days))
        .subject_name(x509.Name(attributes))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(digital_signature=True, key_encipherment=True), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        # X509_STRICT (the default in Python 3.13's ssl) rejects a non-root certificate without an AKI.
        .add_extension(_authority_key_identifier(ca_cert, ca_key), critical=False)
    )
    # An empty SAN extension is malformed (RFC 5280 4.2.1.6), so client certs without names omit it.
    if alt_names:
        builder = builder.add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    return KeyPair(cert.public_bytes(serialization.Encoding.PEM), _key_to_pem(key))


def subject_alt_names(dns_names: Sequence[str], ip_addresses: Sequence[str]) -> list[x509.GeneralName]:
    """Validate and convert SAN strings; raises ValueError naming the offending entry."""
    names: list[x509.GeneralName] = []
    for name in dns_names:
        if not name or not name.isascii():
            raise ValueError(f"invalid DNS name {name!r}: must be non-empty ASCII (IDNA A-label form)")
        names.append(x509.DNSName(name))
    for address in ip_addresses:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(address)))
        except ValueError:
            raise ValueError(f"invalid IP address {address!r}") from None
    return names


def needs_renewal(cert_pem: bytes, now: datetime | None = None) -> bool:
    """True when less than a third of the certificate's lifetime remains, or it is not valid at `now`."""
    return certificate_needs_renewal(x509.load_pem_x509_certificate(cert_pem), now)


def certificate_needs_renewal(cert: x509.Certificate, now: datetime | None = None) -> bool:
    current = datetime.now(UTC) if now is None else now
    not_before, not_after = cert.not_valid_before_utc, cert.not_valid_after_utc
    if current < not_before or current >= not_after:
        return True
    return (not_after - current) < (not_after - not_before) / 3


def ca_bundle(ca: KeyPair) -> str:
    """The CA certificate PEM in base64, the form a webhook configuration's `caBundle` takes."""
    return base64.b64encode(ca.cert_pem).decode("ascii")


def webhook_dns_names(service: str, namespace: str) -> list[str]:
    """The names the kube-apiserver may use to reach a webhook Service."""
    return [f"{service}.{namespace}.svc", f"{service}.{namespace}.svc.cluster.local"]


def check_days(days: int) -> None:
    if days < 1:
        raise ValueError(f"validity must be at least one day, got {days}")


def _authority_key_identifier(
    ca_cert: x509.Certificate, ca_key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
) -> x509.AuthorityKeyIdentifier:
    # The AKI must repeat the CA's own SKI for chain building to match them up; only a CA brought from
    # elsewhere without an SKI gets one derived from its public key.
    try:
        ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key())
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


def _key_usage(
    *,
    digital_signature: bool = False,
    key_encipherment: bool = False,
    key_cert_sign: bool = False,
    crl_sign: bool = False,
) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=key_encipherment,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=key_cert_sign,
        crl_sign=crl_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _new_private_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=_RSA_PUBLIC_EXPONENT, key_size=_RSA_KEY_SIZE)


def _key_to_pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _base_builder(lifetime: timedelta) -> x509.CertificateBuilder:
    if lifetime <= timedelta():
        raise ValueError(f"validity must be positive, got {lifetime}")
    now = datetime.now(UTC)
    # The back-dating stays a small part of a short lifetime, so that renewal in its last third does
    # not start at once.
    skew = min(_CLOCK_SKEW, lifetime / 10)
    return (
        x509.CertificateBuilder()
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - skew)
        .not_valid_after(now + lifetime)
    )
