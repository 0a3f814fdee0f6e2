"""Everything needed to install the operator: CRDs generated from api.types plus the static deployment
objects, as Python data (render) or multi-document YAML (to_yaml, `spo manifests render`).

The same objects are committed as YAML for kustomize (manifests/crds/, manifests/deploy/,
manifests/kustomization.yaml); `python -m manifests --write` regenerates them after a change to the models or
to manifests.deploy, and tests/test_manifests.py fails while they are stale.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import yaml

from api.constants import DEFAULT_IMAGE, DEFAULT_NAMESPACE
from api.nodepaths import NodePaths
from manifests.crds import all_crds
from manifests.deploy import deployment_objects

__all__ = ["DEFAULT_IMAGE", "DEFAULT_NAMESPACE", "render", "to_yaml"]


def render(
    namespace: str = DEFAULT_NAMESPACE,
    image: str = DEFAULT_IMAGE,
    *,
    cert_manager: bool = False,
    node_paths: NodePaths | None = None,
) -> list[dict[str, Any]]:
    """CRDs, then the deployment objects (Namespace first): the order `kubectl apply` needs.
    `node_paths`: where the nodes keep what the agents use (the reconciler renders the DaemonSet so)."""
    objects = deployment_objects(namespace, image, cert_manager=cert_manager, node_paths=node_paths)
    return [*all_crds(), *objects]


class _Dumper(yaml.SafeDumper):
    """Block style for multi-line strings, so embedded profiles and policies stay readable in YAML."""

    def ignore_aliases(self, data: Any) -> bool:
        # Objects that share a sub-dict (e.g. selector and pod labels) must still print it twice.
        return True


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _represent_str)


def to_yaml(objects: Iterable[dict[str, Any]]) -> str:
    """Multi-document YAML, keys sorted so that the output is stable across Python-side refactorings."""
    return yaml.dump_all(objects, Dumper=_Dumper, sort_keys=True, default_flow_style=False, width=120)
