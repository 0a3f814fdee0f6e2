"""Applying and deleting rendered objects of any kind (the install's manifests), as `kubectl apply
--server-side` and `kubectl delete` would, without kubectl: each object's REST path comes from the
apiserver's discovery of its group and version, asked once per group version.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

_APPLY_CONTENT_TYPE = "application/apply-patch+yaml"


def _group_version_path(api_version: str) -> str:
    """Where a group version is served: the core group under /api, the others under /apis."""
    return f"/apis/{api_version}" if "/" in api_version else f"/api/{api_version}"


@dataclass(frozen=True)
class _Served:
    plural: str
    namespaced: bool


class Objects:
    """Rendered objects (dicts with apiVersion, kind, metadata.name and, if namespaced,
    metadata.namespace) written and removed through one client."""

    def __init__(self, api: client.ApiClient) -> None:
        self._api = api
        self._discovered: dict[str, dict[str, _Served]] = {}

    def apply(self, objects: Iterable[dict[str, Any]], field_manager: str) -> None:
        """Server-side apply each object in order, taking over fields another manager set."""
        for obj in objects:
            self._call(
                "PATCH",
                self._path(obj),
                body=obj,
                query=[("fieldManager", field_manager), ("force", "true")],
                content_type=_APPLY_CONTENT_TYPE,
            )

    def delete(self, objects: Iterable[dict[str, Any]]) -> list[str]:
        """Delete each object (dependents in the background); returns `Kind/name` of those that
        existed. Kinds the apiserver no longer serves (their CRD is gone) count as deleted."""
        deleted = []
        for obj in objects:
            try:
                path = self._path(obj)
            except LookupError:
                continue
            try:
                self._call("DELETE", path, body={"propagationPolicy": "Background"})
            except ApiException as error:
                if error.status != HTTPStatus.NOT_FOUND:
                    raise
                continue
            deleted.append(f"{obj['kind']}/{obj['metadata']['name']}")
        return deleted

    def _path(self, obj: dict[str, Any]) -> str:
        api_version: str = obj["apiVersion"]
        served = self._served(api_version).get(obj["kind"])
        if served is None:
            raise LookupError(f"the apiserver serves no {obj['kind']} in {api_version}")
        metadata = obj["metadata"]
        scope = f"/namespaces/{metadata['namespace']}" if served.namespaced else ""
        return f"{_group_version_path(api_version)}{scope}/{served.plural}/{metadata['name']}"

    def _served(self, api_version: str) -> dict[str, _Served]:
        if api_version not in self._discovered:
            try:
                listing = self._call("GET", _group_version_path(api_version))
            except ApiException as error:
                if error.status != HTTPStatus.NOT_FOUND:
                    raise
                listing = {"resources": []}
            self._discovered[api_version] = {
                resource["kind"]: _Served(resource["name"], resource["namespaced"])
                for resource in listing["resources"]
                if "/" not in resource["name"]  # subresources
            }
        return self._discovered[api_version]

    def _call(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        query: list[tuple[str, str]] | None = None,
        content_type: str = "application/json",
    ) -> Any:
        serialized = self._api.param_serialize(
            method,
            path,
            query_params=query or [],
            header_params={"Content-Type": content_type, "Accept": "application/json"},
            body=body,
            auth_settings=["BearerToken"],
        )
        response = self._api.call_api(*serialized)
        data = response.read()  # type: ignore[no-untyped-call]
        if not HTTPStatus.OK <= response.status < HTTPStatus.MULTIPLE_CHOICES:
            raise ApiException(http_resp=response)
        return json.loads(data)
