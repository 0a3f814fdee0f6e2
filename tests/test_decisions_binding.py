"""binding.spo.io decisions: which security contexts a pod gets from the ProfileBindings of its namespace."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from api.types import ProfileBinding, SeccompProfile, SelinuxProfile
from tests.test_decisions_support import (
    BUSYBOX,
    NAMESPACE,
    NGINX,
    REDIS,
    admission,
    binding,
    container,
    edited,
    patched,
    pod,
    seccomp_profile,
    selinux_profile,
)
from webhooks.decisions import decide_binding
from webhooks.snapshot import StaticSnapshot

SECCOMP = "SeccompProfile"
SELINUX = "SelinuxProfile"
Profile = SeccompProfile | SelinuxProfile
Change = tuple[str, Any]


def localhost(path: str) -> dict[str, str]:
    return {"type": "Localhost", "localhostProfile": path}


UNCONFINED = {"type": "Unconfined"}
RUNTIME_DEFAULT = {"type": "RuntimeDefault"}
NGINX_SECCOMP = binding("nginx-binding", SECCOMP, "profile", NGINX)
NGINX_SELINUX = binding("nginx-selinux", SELINUX, "profile", NGINX)
PROFILE = seccomp_profile("profile")
SELINUX_PROFILE = selinux_profile("profile")


def snapshot(bindings: list[ProfileBinding], profiles: list[Profile]) -> StaticSnapshot:
    return StaticSnapshot(
        bindings=bindings,
        seccomp_profiles=[p for p in profiles if isinstance(p, SeccompProfile)],
        selinux_profiles=[p for p in profiles if isinstance(p, SelinuxProfile)],
    )


# (pod, bindings, profiles, changes the patch must make: (JSON pointer, value))
MUTATIONS = [
    pytest.param(
        pod([container("test-container", NGINX)]),
        [NGINX_SECCOMP],
        [PROFILE],
        [("/spec/containers/0/securityContext", {"seccompProfile": localhost("operator/profile.json")})],
        id="seccomp-container-without-security-context",
    ),
    pytest.param(
        pod([container("c", NGINX)]),
        [NGINX_SECCOMP],
        [seccomp_profile("profile", localhost="operator/elsewhere/profile.json")],
        [("/spec/containers/0/securityContext/seccompProfile", localhost("operator/elsewhere/profile.json"))],
        id="seccomp-status-localhost-profile-wins",
    ),
    pytest.param(
        pod([container("c", NGINX, {"runAsNonRoot": True})]),
        [NGINX_SECCOMP],
        [PROFILE],
        [("/spec/containers/0/securityContext/seccompProfile", localhost("operator/profile.json"))],
        id="seccomp-keeps-other-security-context-fields",
    ),
    pytest.param(
        pod([container("c", NGINX, {"seccompProfile": UNCONFINED})]),
        [NGINX_SECCOMP],
        [PROFILE],
        [("/spec/containers/0/securityContext/seccompProfile", localhost("operator/profile.json"))],
        id="unconfined-is-replaced",
    ),
    pytest.param(
        pod([container("c", NGINX, {"seccompProfile": localhost("operator/profile.json")})]),
        [NGINX_SECCOMP],
        [PROFILE],
        [],
        id="same-value-no-op",
    ),
    pytest.param(
        pod([container("c", NGINX, {"seccompProfile": None})]),
        [NGINX_SECCOMP],
        [PROFILE],
        [("/spec/containers/0/securityContext/seccompProfile", localhost("operator/profile.json"))],
        id="null-seccomp-profile-is-set",
    ),
    pytest.param(
        pod([container("c", NGINX)], init_containers=[container("init", NGINX), container("other", BUSYBOX)]),
        [NGINX_SECCOMP],
        [PROFILE],
        [
            (
                "/spec/initContainers/0/securityContext",
                {"seccompProfile": localhost("operator/profile.json")},
            ),
            ("/spec/containers/0/securityContext", {"seccompProfile": localhost("operator/profile.json")}),
        ],
        id="init-containers",
    ),
    pytest.param(
        pod(
            [
                container("a", NGINX),
                container("b", REDIS),
                container("c", NGINX, {"seccompProfile": UNCONFINED}),
            ]
        ),
        [NGINX_SECCOMP],
        [PROFILE],
        [
            ("/spec/containers/0/securityContext", {"seccompProfile": localhost("operator/profile.json")}),
            ("/spec/containers/2/securityContext/seccompProfile", localhost("operator/profile.json")),
        ],
        id="duplicate-images-all-bound",
    ),
    pytest.param(
        pod([container("c", REDIS)]),
        [NGINX_SECCOMP],
        [PROFILE],
        [],
        id="unmatched-image",
    ),
    pytest.param(
        pod([container("c", f"{NGINX}@sha256:{'0' * 64}"), container("d", "docker.io/" + BUSYBOX)]),
        [NGINX_SECCOMP, binding("busybox", SECCOMP, "profile", BUSYBOX)],
        [PROFILE],
        [],
        id="exact-image-match-only",
    ),
    pytest.param(
        pod([]),
        [NGINX_SECCOMP, binding("all", SECCOMP, "profile", "*")],
        [PROFILE],
        [("/spec/securityContext", {"seccompProfile": localhost("operator/profile.json")})],
        id="no-containers-only-wildcard",
    ),
    pytest.param(
        pod([container("c", NGINX)]),
        [],
        [PROFILE],
        [],
        id="no-bindings",
    ),
    pytest.param(
        pod([container("c", NGINX)]),
        [binding("nginx-binding", SECCOMP, "profile", NGINX, namespace="elsewhere")],
        [],
        [],
        id="binding-of-another-namespace",
    ),
    pytest.param(
        pod([container("test-container", NGINX)]),
        [NGINX_SELINUX],
        [SELINUX_PROFILE],
        [("/spec/containers/0/securityContext", {"seLinuxOptions": {"type": "profile.process"}})],
        id="selinux-container",
    ),
    pytest.param(
        pod([container("c", NGINX, {"seLinuxOptions": {"level": "s0:c1,c2", "type": "spc_t"}})]),
        [NGINX_SELINUX],
        [selinux_profile("profile", usage="custom.process")],
        [("/spec/containers/0/securityContext/seLinuxOptions/type", "custom.process")],
        id="selinux-status-usage-keeps-level",
    ),
    pytest.param(
        pod([container("c", NGINX, {"seLinuxOptions": {"type": "profile.process"}})]),
        [NGINX_SELINUX],
        [SELINUX_PROFILE],
        [],
        id="selinux-same-type-no-op",
    ),
    pytest.param(
        pod([container("c", NGINX, {"runAsUser": 1000})]),
        [NGINX_SECCOMP, NGINX_SELINUX],
        [PROFILE, SELINUX_PROFILE],
        [
            ("/spec/containers/0/securityContext/seccompProfile", localhost("operator/profile.json")),
            ("/spec/containers/0/securityContext/seLinuxOptions", {"type": "profile.process"}),
        ],
        id="seccomp-and-selinux-on-one-container",
    ),
    pytest.param(
        pod([container("c", NGINX)]),
        [NGINX_SECCOMP, NGINX_SELINUX],
        [PROFILE, SELINUX_PROFILE],
        [
            (
                "/spec/containers/0/securityContext",
                {
                    "seccompProfile": localhost("operator/profile.json"),
                    "seLinuxOptions": {"type": "profile.process"},
                },
            )
        ],
        id="seccomp-and-selinux-without-security-context",
    ),
    pytest.param(
        pod([container("c", NGINX)]),
        [NGINX_SECCOMP, binding("later", SECCOMP, "other", NGINX)],
        [PROFILE, seccomp_profile("other")],
        [("/spec/containers/0/securityContext", {"seccompProfile": localhost("operator/other.json")})],
        id="later-binding-of-same-kind-wins",
    ),
    pytest.param(
        pod([container("c", REDIS)]),
        [binding("all", SECCOMP, "profile", "*")],
        [PROFILE],
        [("/spec/securityContext", {"seccompProfile": localhost("operator/profile.json")})],
        id="wildcard-sets-pod-level",
    ),
    pytest.param(
        pod([container("c", REDIS)], security_context={"runAsNonRoot": True}),
        [binding("all", SELINUX, "profile", "*")],
        [SELINUX_PROFILE],
        [("/spec/securityContext/seLinuxOptions", {"type": "profile.process"})],
        id="wildcard-selinux-pod-level",
    ),
    pytest.param(
        pod([container("c", REDIS)], security_context={"seLinuxOptions": {"level": "s0"}}),
        [binding("all", SELINUX, "profile", "*")],
        [SELINUX_PROFILE],
        [("/spec/securityContext/seLinuxOptions/type", "profile.process")],
        id="wildcard-selinux-pod-level-keeps-level",
    ),
    pytest.param(
        pod(
            [container("c", REDIS, {"seccompProfile": UNCONFINED})],
            security_context={"seccompProfile": RUNTIME_DEFAULT},
        ),
        [binding("all", SECCOMP, "profile", "*")],
        [PROFILE],
        [],
        id="wildcard-keeps-existing-pod-level-and-container-unconfined",
    ),
    pytest.param(
        pod([container("c", REDIS, {"seccompProfile": UNCONFINED})]),
        [binding("all", SECCOMP, "profile", "*")],
        [PROFILE],
        [("/spec/securityContext", {"seccompProfile": localhost("operator/profile.json")})],
        id="wildcard-never-touches-container-level",
    ),
    pytest.param(
        pod([container("c", REDIS)]),
        [binding("first", SECCOMP, "profile", "*"), binding("second", SECCOMP, "other", "*")],
        [PROFILE, seccomp_profile("other")],
        [("/spec/securityContext", {"seccompProfile": localhost("operator/other.json")})],
        id="last-wildcard-wins",
    ),
    pytest.param(
        pod([container("c", NGINX), container("d", REDIS)]),
        [binding("all", SECCOMP, "default", "*"), NGINX_SECCOMP],
        [PROFILE, seccomp_profile("default")],
        [
            ("/spec/containers/0/securityContext", {"seccompProfile": localhost("operator/profile.json")}),
            ("/spec/securityContext", {"seccompProfile": localhost("operator/default.json")}),
        ],
        id="wildcard-and-image-binding",
    ),
    pytest.param(
        edited(pod([container("c", REDIS)]), ("/spec/ephemeralContainers", [container("debug", NGINX)])),
        [NGINX_SECCOMP],
        [PROFILE],
        [],
        id="ephemeral-containers-ignored",
    ),
    pytest.param(
        pod([container("c", NGINX)]),
        [binding("nginx-binding", SECCOMP, "profile.json", NGINX)],
        [seccomp_profile("profile.json")],
        [("/spec/containers/0/securityContext", {"seccompProfile": localhost("operator/profile.json")})],
        id="profile-name-with-json-suffix",
    ),
]


@pytest.mark.parametrize(("pod_object", "bindings", "profiles", "changes"), MUTATIONS)
def test_binding_patch(
    pod_object: dict[str, Any], bindings: list[ProfileBinding], profiles: list[Profile], changes: list[Change]
) -> None:
    request = admission(pod_object)
    untouched = copy.deepcopy(request)

    decision = decide_binding(request, snapshot(bindings, profiles))

    assert request == untouched
    assert decision.allowed, decision.message
    assert decision.code == 200
    assert patched(pod_object, decision) == edited(pod_object, *changes)
    assert bool(decision.patch) == bool(changes)


def test_docs_7_6_2_1_seccomp_binding_output() -> None:
    test_pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "test-pod"},
        "spec": {"containers": [{"name": "test-container", "image": NGINX}]},
    }

    decision = decide_binding(
        admission(test_pod), snapshot([NGINX_SECCOMP], [seccomp_profile("profile1"), PROFILE])
    )

    # oc get pod test-pod -o jsonpath='{.spec.containers[*].securityContext.seccompProfile}'
    output = [
        c["securityContext"]["seccompProfile"] for c in patched(test_pod, decision)["spec"]["containers"]
    ]
    assert [json.dumps(p, sort_keys=True, separators=(",", ":")) for p in output] == [
        '{"localhostProfile":"operator/profile.json","type":"Localhost"}'
    ]


def test_docs_7_7_2_2_selinux_binding_output() -> None:
    test_pod = pod([container("test-container", NGINX)])

    decision = decide_binding(admission(test_pod), snapshot([NGINX_SELINUX], [SELINUX_PROFILE]))

    # oc get pod test-pod -o jsonpath='{.spec.containers[*].securityContext.seLinuxOptions.type}'
    result = patched(test_pod, decision)
    assert [c["securityContext"]["seLinuxOptions"]["type"] for c in result["spec"]["containers"]] == [
        "profile.process"
    ]


DENIALS = [
    pytest.param(
        [NGINX_SECCOMP],
        [],
        f"ProfileBinding {NAMESPACE}/nginx-binding cannot be applied: "
        'SeccompProfile "profile" does not exist',
        id="missing-seccomp-profile",
    ),
    pytest.param(
        [NGINX_SELINUX],
        [PROFILE],
        f"ProfileBinding {NAMESPACE}/nginx-selinux cannot be applied: "
        'SelinuxProfile "profile" does not exist',
        id="missing-selinux-profile-same-name-as-seccomp",
    ),
    pytest.param(
        [NGINX_SECCOMP],
        [seccomp_profile("profile", deleting=True)],
        'SeccompProfile "profile" is being deleted',
        id="deleting-seccomp-profile",
    ),
    pytest.param(
        [NGINX_SECCOMP],
        [seccomp_profile("profile", disabled=True)],
        'SeccompProfile "profile" is disabled',
        id="disabled-seccomp-profile",
    ),
    pytest.param(
        [NGINX_SELINUX],
        [selinux_profile("profile", usage="profile.process", deleting=True)],
        'SelinuxProfile "profile" is being deleted',
        id="deleting-selinux-profile",
    ),
    pytest.param(
        [NGINX_SELINUX],
        [selinux_profile("profile", disabled=True)],
        'SelinuxProfile "profile" is disabled',
        id="disabled-selinux-profile",
    ),
    pytest.param(
        [binding("default", SECCOMP, "gone", "*")],
        [PROFILE],
        f'ProfileBinding {NAMESPACE}/default cannot be applied: SeccompProfile "gone" does not exist',
        id="missing-wildcard-profile",
    ),
    pytest.param(
        [NGINX_SECCOMP, binding("second", SELINUX, "gone", NGINX)],
        [PROFILE],
        f'ProfileBinding {NAMESPACE}/second cannot be applied: SelinuxProfile "gone" does not exist',
        id="one-of-two-bindings-missing",
    ),
]


@pytest.mark.parametrize(("bindings", "profiles", "message"), DENIALS)
def test_binding_with_unusable_profile_denies(
    bindings: list[ProfileBinding], profiles: list[Profile], message: str
) -> None:
    decision = decide_binding(admission(pod([container("c", NGINX)])), snapshot(bindings, profiles))

    assert not decision.allowed
    assert decision.code == 403
    assert message in decision.message
    assert decision.patch == []


def test_binding_names_every_unusable_profile() -> None:
    bindings = [binding("a", SECCOMP, "gone-a", NGINX), binding("b", SECCOMP, "gone-b", NGINX)]

    decision = decide_binding(admission(pod([container("c", NGINX)])), snapshot(bindings, []))

    assert not decision.allowed
    assert '"gone-a"' in decision.message
    assert '"gone-b"' in decision.message


def test_unusable_profile_of_a_binding_the_pod_does_not_need_is_ignored() -> None:
    bindings = [binding("redis", SECCOMP, "gone", REDIS), NGINX_SECCOMP]
    pod_object = pod([container("c", NGINX)])

    decision = decide_binding(admission(pod_object), snapshot(bindings, [PROFILE]))

    assert decision.allowed
    assert patched(pod_object, decision)["spec"]["containers"][0]["securityContext"] == {
        "seccompProfile": localhost("operator/profile.json")
    }


@pytest.mark.parametrize("operation", ["UPDATE", "DELETE", "CONNECT", None])
def test_binding_only_acts_on_create(operation: str | None) -> None:
    request = admission(pod([container("c", NGINX)]), operation=str(operation))
    if operation is None:
        del request["operation"]

    decision = decide_binding(request, snapshot([NGINX_SECCOMP], []))

    assert decision.allowed
    assert decision.patch == []


UNDECODABLE = [
    pytest.param({"object": None}, "request.object must be an object, got null", id="no-object"),
    pytest.param({"object": ["pod"]}, "request.object must be an object, got array", id="object-not-a-dict"),
    pytest.param({"object": {"metadata": {}}}, "spec must be an object", id="no-spec"),
    pytest.param(
        {"object": pod([container("c", NGINX)]) | {"spec": {"containers": {"c": {}}}}},
        "spec.containers must be a list, got object",
        id="containers-not-a-list",
    ),
    pytest.param(
        {"object": pod(["nginx"])},  # type: ignore[list-item]
        "spec.containers[0] must be an object, got string",
        id="container-not-a-dict",
    ),
    pytest.param(
        {"object": pod([{"name": "c", "image": 7}])},
        "spec.containers[0].image must be a string, got number",
        id="image-not-a-string",
    ),
    pytest.param(
        {"object": pod([container("c", NGINX, "privileged")])},  # type: ignore[arg-type]
        "/spec/containers/0/securityContext must be an object, got string",
        id="security-context-not-a-dict",
    ),
    pytest.param({"namespace": ""}, "request.namespace must be a non-empty string", id="no-namespace"),
]


@pytest.mark.parametrize(("overrides", "message"), UNDECODABLE)
def test_binding_rejects_undecodable_request(overrides: dict[str, Any], message: str) -> None:
    request = admission(pod([container("c", NGINX)])) | overrides

    decision = decide_binding(request, snapshot([NGINX_SECCOMP], [PROFILE]))

    assert not decision.allowed
    assert decision.code == 400
    assert message in decision.message
