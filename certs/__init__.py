"""TLS material for the operator: a private CA, serving and client certificates.

Writing them as a Kubernetes Secret is in certs.secret, imported on its own so that users of the
PKI alone (every `spo` command registers `spo certs`) do not load the Kubernetes client's models.
"""

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

__all__ = [
    "KeyPair",
    "ca_bundle",
    "ensure_serving_certificate",
    "generate_ca",
    "generate_private_key_pem",
    "issue_certificate",
    "load_pair",
    "needs_renewal",
    "webhook_dns_names",
    "write_pair",
]
