"""The product docs' objects and spod patches (examples/docs/), shared by unit and end-to-end tests."""

from pathlib import Path
from typing import Any

import yaml

from api import constants
from api.types import default_spod

REPO_ROOT = Path(__file__).resolve().parents[1]
DOCS = REPO_ROOT.parent / "shared" / "spec" / "openshift-spo-docs.txt"
EXAMPLES = REPO_ROOT / "examples" / "docs"


def docs_objects() -> list[dict[str, Any]]:
    return [o for o in yaml.safe_load_all((EXAMPLES / "objects.yaml").read_text()) if o]


def spod_patches() -> list[dict[str, Any]]:
    patches: list[dict[str, Any]] = yaml.safe_load((EXAMPLES / "spod-patches.yaml").read_text())
    return patches


def object_id(obj: dict[str, Any]) -> str:
    return f"{obj['kind']}/{obj['metadata']['name']}"


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch, what `kubectl patch --type=merge` sends."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def default_spod_dict() -> dict[str, Any]:
    return default_spod().to_dict()


def without_nulls(value: Any) -> Any:
    """What the apiserver keeps of a merge patch: nulls delete (or are pruned), they are never stored."""
    if isinstance(value, dict):
        return {k: without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [without_nulls(v) for v in value]
    return value


# Docs 7.6.3 step 4: the workload to record (redis runs as its image's user, nginx unprivileged).
DOCS_RECORDED_POD: dict[str, Any] = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"name": "my-pod", "labels": {"app": "my-app"}},
    "spec": {
        "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [
            {
                "name": "nginx",
                "image": constants.IMAGE_TEST_NGINX_UNPRIVILEGED,
                "ports": [{"containerPort": 8080}],
                "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
            },
            {
                "name": "redis",
                "image": constants.IMAGE_REDIS,
                "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
            },
        ],
    },
}
