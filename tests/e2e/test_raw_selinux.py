"""RawSelinuxProfiles through the real apiserver: `kubectl create` admits upstream's example and refuses
escapes with the statement quoted, as the validating webhook registration delivers them."""

from __future__ import annotations

import uuid

import pytest
import yaml

from api import constants
from api.types import RawSelinuxProfile
from spo import localcluster
from tests.conftest import WebhookServer
from tests.kubectl import kubectl
from tests.raw_selinux_corpus import ACCEPTED, ESCAPES, Escape

pytestmark = pytest.mark.e2e

# One escape of each family: global attribute, transition, role, `in`, comment trick, block escape.
SAMPLED = {"typeattributeset-domain", "typetransition-global", "roleallow", "in-template"}
SAMPLED |= {"carriage-return-ends-a-comment", "block-escape"}


def _create(cluster: localcluster.ControlPlane, policy: str) -> tuple[int, str]:
    profile = {
        "apiVersion": f"{constants.GROUP}/{RawSelinuxProfile.VERSION}",
        "kind": RawSelinuxProfile.KIND,
        "metadata": {"name": f"raw-{uuid.uuid4().hex[:8]}"},
        "spec": {"policy": policy},
    }
    result = kubectl(cluster.kubeconfig, "create", "-f", "-", stdin=yaml.safe_dump(profile), check=False)
    return result.returncode, result.stdout + result.stderr


def test_upstream_example_is_created(
    control_plane: localcluster.ControlPlane, webhook_server: WebhookServer
) -> None:
    errorlogger = next(policy for policy in ACCEPTED if policy.id == "upstream-errorlogger")

    returncode, output = _create(control_plane, errorlogger.text)

    assert returncode == 0, output


@pytest.mark.parametrize(
    "escape", [escape for escape in ESCAPES if escape.id in SAMPLED], ids=lambda escape: escape.id
)
def test_escape_is_refused_by_the_apiserver(
    control_plane: localcluster.ControlPlane, webhook_server: WebhookServer, escape: Escape
) -> None:
    returncode, output = _create(control_plane, escape.text)

    assert returncode != 0
    assert "denied the request" in output
    assert escape.culprit in output
