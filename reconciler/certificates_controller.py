"""The certificates controller: keeps the CA Secret and the webhook's Secret as reconciler.certificates
plans them, and says when the bundle to trust changed, so the webhook configurations' caBundle follows.

Not registered when cert-manager issues the webhook's Secret (`spo manifests render --cert-manager`):
then cert-manager owns the Secret and injects the caBundle itself.

One key; a pass reads the two Secrets by name (two GETs, a few times per certificate lifetime, rather
than a cluster-wide Secret watch that would bring every Secret of the cluster into memory), and runs
again when a webhook configuration changes (a new bundle published lets the serving certificate move
to a new CA), when the plan says the next renewal is due, and at least every RESYNC seconds, which
repairs a Secret someone edited or deleted.
"""

from __future__ import annotations

import base64
import datetime
import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

import certs
from api import constants, kinds
from api.kube import ResourceCache
from api.types import KubernetesObject
from certs.pki import KeyPair
from reconciler.certificates import DEFAULT_VALIDITY, Hosts, Issuer, Validity, plan
from reconciler.runtime import Controller, Manager, Watch

log = logging.getLogger(__name__)

RESYNC_SECONDS = 60.0
_KEY = "certificates"
_HTTP_NOT_FOUND = 404
_APPLY_CONTENT_TYPE = "application/apply-patch+yaml"
_OUR_CONFIGURATIONS = (constants.MUTATING_WEBHOOK_CONFIGURATION, constants.VALIDATING_WEBHOOK_CONFIGURATION)


def _issue_serving(ca: KeyPair, hosts: Hosts, lifetime: datetime.timedelta) -> KeyPair:
    common_name = (hosts.dns_names or hosts.ip_addresses)[0]
    return certs.issue_certificate(
        ca, common_name, dns_names=hosts.dns_names, ip_addresses=hosts.ip_addresses, lifetime=lifetime
    )


PKI_ISSUER = Issuer(new_ca=lambda lifetime: certs.generate_ca(lifetime=lifetime), new_serving=_issue_serving)


class CertificateReconciler:
    """``hosts``: the serving certificate's names (default: the webhook Service's DNS names; with
    `--webhook-url`, its host). ``on_bundle_change`` should make the webhook configurations' owner
    re-apply them (their caBundle is the webhook Secret's `ca.crt`)."""

    def __init__(
        self,
        api: client.ApiClient,
        namespace: str,
        *,
        hosts: Sequence[str] = (),
        validity: Validity = DEFAULT_VALIDITY,
        on_bundle_change: Callable[[], None] = lambda: None,
    ) -> None:
        self.core = client.CoreV1Api(api)
        self.namespace = namespace
        self.validity = validity
        self.on_bundle_change = on_bundle_change
        self.hosts = Hosts.of(hosts or certs.webhook_dns_names(constants.WEBHOOK_SERVICE, namespace))
        self.mutating: ResourceCache[KubernetesObject] = ResourceCache(
            api, kinds.MUTATING_WEBHOOK_CONFIGURATION, KubernetesObject
        )
        self.validating: ResourceCache[KubernetesObject] = ResourceCache(
            api, kinds.VALIDATING_WEBHOOK_CONFIGURATION, KubernetesObject
        )

    def caches(self) -> list[ResourceCache[Any]]:
        return [self.mutating, self.validating]

    def register(self, manager: Manager) -> Controller:
        """Add the caches and the controller to ``manager``."""
        for cache in self.caches():
            manager.cache(cache)
        return manager.add(self.controller())

    def controller(self) -> Controller:
        watches = [Watch(cache, self._configuration_keys) for cache in self.caches()]
        return Controller("certificates", self.reconcile, watches, resync_keys=lambda: (_KEY,))

    def _configuration_keys(self, obj: KubernetesObject) -> Iterable[str]:
        return (_KEY,) if obj.metadata.name in _OUR_CONFIGURATIONS else ()

    def published_bundles(self) -> list[bytes] | None:
        """The caBundle of every webhook of our configurations; None while neither exists."""
        found: list[bytes] | None = None
        for cache, name in zip(self.caches(), _OUR_CONFIGURATIONS, strict=True):
            configuration = cache.get(name)
            if configuration is None:
                continue
            found = found or []
            for webhook in (configuration.model_extra or {}).get("webhooks") or []:
                bundle = (webhook.get("clientConfig") or {}).get("caBundle") or ""
                found.append(base64.b64decode(bundle))
        return found

    def reconcile(self, _key: str) -> float | None:
        ca_data = self._read(constants.WEBHOOK_CA_SECRET)
        webhook_data = self._read(constants.WEBHOOK_CERT_SECRET)
        now = datetime.datetime.now(datetime.UTC)
        wanted = plan(
            ca_data,
            webhook_data,
            self.published_bundles(),
            hosts=self.hosts,
            now=now,
            issuer=PKI_ISSUER,
            validity=self.validity,
        )
        # The CA first: a crash between the two writes leaves a serving pair the next pass can re-sign.
        if wanted.ca_secret != ca_data:
            log.info("writing the webhook CA Secret %s", constants.WEBHOOK_CA_SECRET)
            self._apply(constants.WEBHOOK_CA_SECRET, wanted.ca_secret, "Opaque")
        if any(webhook_data.get(key) != value for key, value in wanted.webhook_secret.items()):
            log.info("writing the webhook serving Secret %s", constants.WEBHOOK_CERT_SECRET)
            self._apply(constants.WEBHOOK_CERT_SECRET, wanted.webhook_secret, "kubernetes.io/tls")
        published = self.published_bundles()
        if published is not None and any(bundle != wanted.bundle for bundle in published):
            # Level-triggered: asked again on every pass until every configuration publishes the bundle.
            self.on_bundle_change()
        due = (wanted.next_check - now).total_seconds()
        return max(0.0, min(due, RESYNC_SECONDS))

    def _read(self, name: str) -> dict[str, bytes]:
        try:
            secret = self.core.read_namespaced_secret(name, self.namespace)
        except ApiException as error:
            if error.status == _HTTP_NOT_FOUND:
                return {}
            raise
        return {key: base64.b64decode(value) for key, value in (secret.data or {}).items()}

    def _apply(self, name: str, data: dict[str, bytes], secret_type: str) -> None:
        body = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": name, "namespace": self.namespace},
            "type": secret_type,
            "data": {key: base64.b64encode(value).decode("ascii") for key, value in data.items()},
        }
        # Server-side apply as our field manager: a key we stop writing (the previous CA) is removed.
        self.core.patch_namespaced_secret(
            name,
            self.namespace,
            body,
            field_manager=constants.FIELD_MANAGER,
            force=True,
            _content_type=_APPLY_CONTENT_TYPE,
        )
