"""certs writes the webhook's serving certificate as a kubernetes.io/tls Secret (real apiserver)."""

from __future__ import annotations

import base64

import pytest
from kubernetes import client

import certs
import certs.secret

pytestmark = pytest.mark.e2e


def test_tls_secret_is_created_then_replaced(kube: client.ApiClient, namespace: str) -> None:
    core = client.CoreV1Api(kube)
    ca = certs.generate_ca()
    dns = certs.webhook_dns_names("webhook-service", namespace)
    first = certs.issue_certificate(ca, dns[0], dns_names=dns)
    certs.secret.apply_tls_secret(core, certs.secret.tls_secret("webhook-server-cert", namespace, ca, first))
    renewed = certs.issue_certificate(ca, dns[0], dns_names=dns)
    certs.secret.apply_tls_secret(
        core, certs.secret.tls_secret("webhook-server-cert", namespace, ca, renewed)
    )

    stored = core.read_namespaced_secret("webhook-server-cert", namespace)
    assert stored.type == "kubernetes.io/tls"
    data = stored.data or {}
    assert base64.b64decode(data["tls.crt"]) == renewed.cert_pem
    assert base64.b64decode(data["tls.key"]) == renewed.key_pem
    assert base64.b64decode(data["ca.crt"]) == ca.cert_pem
