"""TLS material for the operator: a private CA, serving and client certificates, and their Secret."""

from certs.files import ensure_serving_certificate, load_pair, write_pair
from certs.pki import (
    KeyPair,
    ca_bundle,
    generate_ca,
    generate_private_key_pem,
    issue_certificate,
    needs_renewal,
    webhook_dns_names,
)
from certs.secret import apply_tls_secret, tls_secret

__all__ = [
    "KeyPair",
    "apply_tls_secret",
    "ca_bundle",
    "ensure_serving_certificate",
    "generate_ca",
    "generate_private_key_pem",
    "issue_certificate",
    "load_pair",
    "needs_renewal",
    "tls_secret",
    "webhook_dns_names",
    "write_pair",
]
