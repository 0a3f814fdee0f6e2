"""binding.spo.io decisions: which security contexts a pod gets from the ProfileBindings of its namespace."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from api.types import InvalidObject, ProfileBinding, SeccompProfile, SelinuxProfile
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


@pytest.mark.parametrize("operation", ["DELETE", "CONNECT", None])
def test_binding_only_acts_on_create_and_update(operation: str | None) -> None:
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


# --- conflicts and invalid bindings: the same answer whatever the cache's order ------------------------

CONFLICTS = [
    pytest.param(
        pod([container("c", NGINX)]),
        [NGINX_SECCOMP, binding("later", SECCOMP, "other", NGINX)],
        "ProfileBinding my-namespace/later and ProfileBinding my-namespace/nginx-binding each bind a "
        f"SeccompProfile to image {NGINX}",
        id="same-image-same-kind",
    ),
    pytest.param(
        pod([container("c", REDIS)]),
        [binding("first", SECCOMP, "profile", "*"), binding("second", SECCOMP, "other", "*")],
        "ProfileBinding my-namespace/first and ProfileBinding my-namespace/second each bind a "
        "SeccompProfile to image *",
        id="two-wildcards",
    ),
]


@pytest.mark.parametrize(("pod_object", "bindings", "message"), CONFLICTS)
def test_conflicting_bindings_deny_naming_both_in_any_order(
    pod_object: dict[str, Any], bindings: list[ProfileBinding], message: str
) -> None:
    profiles: list[Profile] = [PROFILE, seccomp_profile("other")]
    decisions = [
        decide_binding(admission(pod_object), snapshot(order, profiles))
        for order in (bindings, bindings[::-1])
    ]

    assert decisions[0] == decisions[1]
    assert not decisions[0].allowed
    assert message in decisions[0].message


def test_bindings_of_different_kinds_for_one_image_do_not_conflict() -> None:
    decision = decide_binding(
        admission(pod([container("c", NGINX)])),
        snapshot([NGINX_SECCOMP, NGINX_SELINUX], [PROFILE, SELINUX_PROFILE]),
    )

    assert decision.allowed
    assert len(decision.patch) == 1


def test_invalid_stored_binding_denies_every_pod_of_its_namespace() -> None:
    invalid = InvalidObject(
        "ProfileBinding", NAMESPACE, "bad", "spec.profileRef.name: not a DNS-1123 subdomain"
    )
    elsewhere = InvalidObject("ProfileBinding", "other", "bad", "whatever")
    pod_object = pod([container("c", REDIS)])

    decision = decide_binding(
        admission(pod_object), StaticSnapshot(invalid=[invalid, elsewhere], seccomp_profiles=[PROFILE])
    )
    unaffected = decide_binding(
        admission(pod_object, namespace="third"), StaticSnapshot(invalid=[invalid, elsewhere])
    )

    assert not decision.allowed
    assert decision.message.startswith(
        "ProfileBinding my-namespace/bad is stored but not valid "
        "(spec.profileRef.name: not a DNS-1123 subdomain)"
    )
    assert "whatever" not in decision.message
    assert unaffected.allowed


# --- updates: a changed image or a new ephemeral container ----------------------------------------------


def update(old: dict[str, Any], new: dict[str, Any], sub_resource: str | None = None) -> dict[str, Any]:
    return admission(new, operation="UPDATE", old=old, sub_resource=sub_resource)


BOUND = {"seccompProfile": localhost("operator/profile.json")}


def test_set_image_to_a_bound_image_is_refused_naming_the_binding() -> None:
    old = pod([container("c", BUSYBOX)])
    new = edited(old, ("/spec/containers/0/image", NGINX))

    decision = decide_binding(update(old, new), snapshot([NGINX_SECCOMP], [PROFILE]))

    assert not decision.allowed
    assert decision.code == 403
    assert "ProfileBinding my-namespace/nginx-binding" in decision.message
    assert f"container c would run image {NGINX} without SeccompProfile profile" in decision.message


@pytest.mark.parametrize(
    ("old", "new"),
    [
        pytest.param(
            pod([container("c", BUSYBOX, BOUND)]),
            pod([container("c", NGINX, BOUND)]),
            id="bound-image-already-under-its-profile",
        ),
        pytest.param(pod([container("c", NGINX)]), pod([container("c", REDIS)]), id="unbound-image"),
        pytest.param(
            pod([container("c", NGINX)]),
            pod([container("c", NGINX)], labels={"a": "b"}),
            id="no-image-change",
        ),
        pytest.param(
            pod([container("c", BUSYBOX)], security_context={"seccompProfile": UNCONFINED}),
            pod([container("c", REDIS)], security_context={"seccompProfile": UNCONFINED}),
            id="wildcard-cannot-apply-after-creation",
        ),
    ],
)
def test_other_updates_pass_unchanged(old: dict[str, Any], new: dict[str, Any]) -> None:
    bindings = [NGINX_SECCOMP, binding("all", SECCOMP, "profile", "*")]

    decision = decide_binding(update(old, new), snapshot(bindings, [PROFILE]))

    assert decision.allowed, decision.message
    assert decision.patch == []


def test_update_without_new_images_passes_even_with_broken_bindings() -> None:
    old = pod([container("c", NGINX)])
    broken = StaticSnapshot(
        bindings=[NGINX_SECCOMP, binding("later", SECCOMP, "other", NGINX)],
        invalid=[InvalidObject("ProfileBinding", NAMESPACE, "bad", "why")],
    )

    decision = decide_binding(update(old, edited(old, ("/metadata/finalizers", []))), broken)

    assert decision.allowed
    assert decision.patch == []


def with_debugger(pod_object: dict[str, Any], name: str, image: str) -> dict[str, Any]:
    debugger = container(name, image) | {"targetContainerName": "c"}
    ephemeral = [*pod_object["spec"].get("ephemeralContainers", []), debugger]
    return edited(pod_object, ("/spec/ephemeralContainers", ephemeral))


def test_ephemeral_container_with_a_bound_image_gets_the_profile() -> None:
    old = with_debugger(pod([container("c", REDIS)]), "old-debugger", NGINX)
    new = with_debugger(old, "debugger", NGINX)

    decision = decide_binding(update(old, new, "ephemeralcontainers"), snapshot([NGINX_SECCOMP], [PROFILE]))

    assert decision.allowed
    assert patched(new, decision) == edited(new, ("/spec/ephemeralContainers/1/securityContext", BOUND))


def test_ephemeral_container_with_a_bound_image_and_no_usable_profile_is_refused() -> None:
    old = pod([container("c", REDIS)])
    new = with_debugger(old, "debugger", NGINX)

    decision = decide_binding(update(old, new, "ephemeralcontainers"), snapshot([NGINX_SECCOMP], []))

    assert not decision.allowed
    assert 'ProfileBinding my-namespace/nginx-binding cannot be applied: SeccompProfile "profile"' in (
        decision.message
    )


def test_update_without_old_object_is_a_bad_request() -> None:
    decision = decide_binding(admission(pod([container("c", NGINX)]), operation="UPDATE"), snapshot([], []))

    assert decision.code == 400
    assert "request.oldObject must be an object, got null" in decision.message


def test_binding_to_a_stored_but_invalid_profile_says_why() -> None:
    invalid = InvalidObject("SeccompProfile", "", "profile", "spec.defaultAction: Input should be ...")

    decision = decide_binding(
        admission(pod([container("c", NGINX)])), StaticSnapshot(bindings=[NGINX_SECCOMP], invalid=[invalid])
    )

    assert not decision.allowed
    assert decision.message == (
        f'ProfileBinding {NAMESPACE}/nginx-binding cannot be applied: SeccompProfile "profile" '
        "is stored but not valid (spec.defaultAction: Input should be ...)"
    )
