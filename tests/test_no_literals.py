"""Foundation acceptance 7: only api/ spells the inventory's labels, annotations, finalizers and paths."""

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ["webhooks", "reconciler", "agent", "certs", "manifests", "spo"]
# Appendix B of the upstream inventory, plus the node paths of §4; each string is distinctive enough
# that finding it in code means the name was spelled again instead of imported from api.constants.
LITERALS = [
    "spo.x-k8s.io/",
    "io.containers.trace",
    "in-use-by-active-pods",
    "active-workload-lock",
    "active-seccomp-profile-recording-lock",
    "partial-profile-finalizer",
    "has-unmerged-profiles",
    "kubectl-debug",
    "oc-debug",
    "debug.openshift.io",
    "app.kubernetes.io/managed-by",
    "kubelet.kubernetes.io/directory-location",
    "SPO_EXEC_REQUEST_UID",
    "openshift.io/scc",
    "cert-manager.io/inject-ca-from",
    "seccomp.security.alpha.kubernetes.io",
    "service.beta.openshift.io",
    "/var/lib/kubelet",
    "/var/lib/security-profiles-operator",
    "/etc/selinux.d",
    "/var/log/audit",
    "/var/log/syslog",
    "security-profiles-operator-recordings",
    "selinuxrecording.process",
    "log-enricher-trace",
    "selinux-policy-reload",
    '-deleted"',
]


def _sources() -> list[Path]:
    return sorted(p for package in PACKAGES for p in (REPO_ROOT / package).rglob("*.py"))


def test_sources_are_found() -> None:
    assert len(_sources()) > 10


@pytest.mark.parametrize("literal", LITERALS)
def test_literal_is_only_spelled_in_api(literal: str) -> None:
    offenders = [
        f"{path.relative_to(REPO_ROOT)}:{number}"
        for path in _sources()
        for number, line in enumerate(path.read_text().splitlines(), start=1)
        if literal in line
    ]
    assert not offenders, f"{literal!r} spelled outside api/: {offenders}"
