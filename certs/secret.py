"""The serving pair as a `kubernetes.io/tls` Secret: a pure manifest builder and the API call apart."""

from __future__ import annotations

import base64
from http import HTTPStatus
from typing import Any

from kubernetes.client import CoreV1Api, V1Secret
from kubernetes.client.exceptions import ApiException

from api import constants
from certs.pki import KeyPair

# Create and replace race with other writers: a 409 on create means someone else created it first, a
# 404 on replace means it was deleted in between. Each retry makes progress unless both keep racing.
_APPLY_ATTEMPTS = 3


def tls_secret(name: str, namespace: str, ca: KeyPair, serving: KeyPair) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace},
        "type": "kubernetes.io/tls",
        "data": {
            constants.TLS_CERT_FILE: _b64(serving.cert_pem),
            constants.TLS_KEY_FILE: _b64(serving.key_pem),
            constants.CA_CERT_FILE: _b64(ca.cert_pem),
        },
    }


def apply_tls_secret(core_v1: CoreV1Api, secret: dict[str, Any]) -> None:
    """Create the Secret, or replace it wholesale when it already exists."""
    name, namespace = secret["metadata"]["name"], secret["metadata"]["namespace"]
    body = V1Secret.model_validate(secret)
    for _ in range(_APPLY_ATTEMPTS):
        try:
            core_v1.create_namespaced_secret(namespace, body)
            return
        except ApiException as exc:
            if exc.status != HTTPStatus.CONFLICT:
                raise
        try:
            core_v1.replace_namespaced_secret(name, namespace, body)
            return
        except ApiException as exc:
            if exc.status != HTTPStatus.NOT_FOUND:
                raise
    raise RuntimeError(f"Secret {namespace}/{name} kept being created and deleted concurrently")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
