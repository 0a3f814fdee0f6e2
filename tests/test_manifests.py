"""manifests/: CRDs generated from the models, the static deployment objects, the committed kustomize tree
and `spo manifests render`. Real-apiserver checks of the same objects live in the e2e tests."""

from __future__ import annotations

import argparse
import json
import re
import subprocess
from pathlib import Path
from typing import Any, ClassVar, get_args

import pytest
import yaml
from pydantic import BaseModel, Field

import manifests
from api import access, constants, validation
from api.kinds import (
    ALL_KINDS,
    NODE_STATUS,
    PROFILE_BINDING,
    PROFILE_RECORDING,
    RAW_SELINUX_PROFILE,
    SECCOMP_PROFILE,
    SELINUX_PROFILE,
    SPOD,
    ResourceKind,
)
from api.types import ProfileRecordingSpec, Resource, SeccompAction
from manifests import deploy
from manifests.cli import register_cli
from manifests.crds import SchemaConversionError, all_crds, crd, is_structural
from manifests.layout import PACKAGE_DIR, REGENERATE_COMMAND, generated_files, stale_files, write
from spo.cli import build_parser
from tests.kubectl import KUBECTL

CLUSTER_SCOPED_KINDS = {"Namespace", "CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding"}
READ_VERBS = {"get", "list", "watch"}
OTHER_NAMESPACE = "other"


def schema_of(kind: ResourceKind) -> dict[str, Any]:
    schema: dict[str, Any] = crd(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def spec_of(kind: ResourceKind) -> dict[str, Any]:
    spec: dict[str, Any] = schema_of(kind)["properties"]["spec"]["properties"]
    return spec


def version_of(kind: ResourceKind) -> dict[str, Any]:
    version: dict[str, Any] = crd(kind)["spec"]["versions"][0]
    return version


def identity(obj: dict[str, Any]) -> tuple[str, str, str]:
    return obj["kind"], obj["metadata"].get("namespace", ""), obj["metadata"]["name"]


def find(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    matches = [obj for obj in objects if obj["kind"] == kind and obj["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind} {name}, found {len(matches)}"
    return matches[0]


def run_render(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser(prog="spo")
    register_cli(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["manifests", "render", *argv])
    code: int = args.func(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# --- (a) structural schemas ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ALL_KINDS, ids=lambda kind: kind.kind)
def test_generated_crd_schema_is_structural(kind: ResourceKind) -> None:
    assert is_structural(schema_of(kind)) == []


def _root(**properties: Any) -> dict[str, Any]:
    return {"type": "object", "properties": properties}


# Each of these is refused by kube-apiserver 1.37 in a CRD (checked by hand; the e2e tests need no copy).
NON_STRUCTURAL = {
    "missing type": (_root(spec={"properties": {"a": {"type": "string"}}}), ".properties.spec.type"),
    "$ref": (_root(spec={"$ref": "#/$defs/Spec"}), "$ref: is not supported"),
    "properties and additionalProperties": (
        _root(
            spec={
                "type": "object",
                "properties": {"a": {"type": "string"}},
                "additionalProperties": {"type": "string"},
            }
        ),
        "exclusive",
    ),
    "nullable in anyOf": (
        _root(spec={"type": "string", "anyOf": [{"nullable": True}, {"pattern": "^a"}]}),
        "anyOf[0].nullable",
    ),
    "type in allOf": (_root(spec={"type": "string", "allOf": [{"type": "string"}]}), "allOf[0].type"),
    "junctor about an unspecified field": (
        {"type": "object", "anyOf": [{"properties": {"b": {"minLength": 1}}}]},
        "not specified outside the junctor",
    ),
    "metadata beyond name": (
        _root(metadata={"type": "object", "properties": {"labels": {"type": "object"}}}),
        "only name and generateName",
    ),
    "items as a list": (_root(spec={"type": "array", "items": [{"type": "string"}]}), "single schema"),
    "array without items": (_root(spec={"type": "array"}), "items: must be specified"),
    "type null": (_root(spec={"type": "null"}), "is not one of"),
    "root not an object": ({"type": "string"}, "must be object at the root"),
    "patternProperties": (
        _root(spec={"type": "object", "patternProperties": {"^a": {"type": "string"}}}),
        "patternProperties: is not supported",
    ),
}


@pytest.mark.parametrize(("schema", "fragment"), NON_STRUCTURAL.values(), ids=NON_STRUCTURAL.keys())
def test_non_structural_schema_is_reported(schema: dict[str, Any], fragment: str) -> None:
    problems = is_structural(schema)
    assert any(fragment in problem for problem in problems), problems


def test_exceptions_to_the_type_rule_are_structural() -> None:
    schema = _root(
        port={"x-kubernetes-int-or-string": True, "anyOf": [{"type": "integer"}, {"type": "string"}]},
        blob={"x-kubernetes-preserve-unknown-fields": True},
        metadata={"type": "object", "properties": {"name": {"type": "string", "maxLength": 63}}},
    )
    assert is_structural(schema) == []


class _UnionSpec(BaseModel):
    value: int | str


class _Node(BaseModel):
    children: list[_Node] = []


class _TupleSpec(BaseModel):
    pair: tuple[int, str]


class _ExclusiveSpec(BaseModel):
    count: int = Field(gt=0)


@pytest.mark.parametrize(
    ("spec_model", "fragment"),
    [
        (_UnionSpec, "union"),
        (_Node, "recursive model"),
        (_TupleSpec, "prefixItems"),
        (_ExclusiveSpec, "exclusiveMinimum"),
    ],
    ids=["union", "recursion", "tuple", "exclusiveMinimum"],
)
def test_unconvertible_model_fails_loudly(spec_model: type[BaseModel], fragment: str) -> None:
    class Broken(Resource):
        KIND: ClassVar[str] = "Broken"
        VERSION: ClassVar[str] = "v1"
        spec: spec_model  # type: ignore[valid-type]

    with pytest.raises(SchemaConversionError, match=fragment):
        crd(ResourceKind(Broken, "brokens", namespaced=True))


# --- (b) the committed YAML is what the code generates -------------------------------------------------


def test_committed_yaml_matches_the_code() -> None:
    stale = stale_files()
    assert stale == [], f"committed manifests are stale: {stale}; run `{REGENERATE_COMMAND}`"


def test_writer_regenerates_and_prunes(tmp_path: Path) -> None:
    obsolete = tmp_path / "deploy" / "service-gone.yaml"
    obsolete.parent.mkdir()
    obsolete.write_text("kind: Service\n")
    written = write(tmp_path)
    assert "deploy/service-gone.yaml" in written
    assert not obsolete.exists()
    assert stale_files(tmp_path) == []
    assert {path.relative_to(tmp_path).as_posix() for path in tmp_path.rglob("*.yaml")} == set(
        generated_files()
    )


def test_one_crd_file_per_kind() -> None:
    assert {f"crds/{kind.plural}.yaml" for kind in ALL_KINDS} <= set(generated_files())


# --- (c) the CRDs carry the models' constraints and the registry's serving details ---------------------


def test_seccomp_default_action_enum_is_the_model_literal() -> None:
    spec = spec_of(SECCOMP_PROFILE)
    assert spec["defaultAction"]["enum"] == list(get_args(SeccompAction))
    assert spec["syscalls"]["items"]["properties"]["action"]["enum"] == list(get_args(SeccompAction))
    assert "defaultAction" in schema_of(SECCOMP_PROFILE)["properties"]["spec"]["required"]


def test_syscall_name_pattern_and_list_bounds() -> None:
    syscall = spec_of(SECCOMP_PROFILE)["syscalls"]["items"]["properties"]
    assert syscall["names"]["items"]["pattern"] == validation.SYSCALL_NAME_PATTERN
    assert syscall["names"]["minItems"] == 1
    assert syscall["names"]["x-kubernetes-list-type"] == "set"
    assert syscall["args"]["maxItems"] == 6
    assert syscall["args"]["items"]["properties"]["index"]["minimum"] == 0


def test_recording_kind_recorder_cel_rules_are_present() -> None:
    rules = schema_of(PROFILE_RECORDING)["properties"]["spec"]["x-kubernetes-validations"]
    declared = ProfileRecordingSpec.model_json_schema()["x-kubernetes-validations"]
    assert declared and all(rule in rules for rule in declared)
    assert any(
        "'SelinuxProfile'" in rule["rule"]
        and "'logs'" in rule["rule"]
        and "SelinuxProfile" in rule["message"]
        for rule in rules
    )


def test_selinux_allow_map_keys_are_checked_by_cel() -> None:
    allow = spec_of(SELINUX_PROFILE)["allow"]
    assert "patternProperties" not in allow
    rules = [rule["rule"] for rule in allow["x-kubernetes-validations"]]
    assert any("@self" in rule for rule in rules)
    inner_rules = [rule["rule"] for rule in allow["additionalProperties"]["x-kubernetes-validations"]]
    assert any(validation.SELINUX_IDENTIFIER_PATTERN in rule for rule in inner_rules)


def test_defaults_and_open_kubernetes_objects() -> None:
    assert spec_of(SELINUX_PROFILE)["inherit"]["default"] == [{"kind": "System", "name": "container"}]
    assert spec_of(PROFILE_RECORDING)["mergeStrategy"]["default"] == "none"
    spod = spec_of(SPOD)
    assert spod["affinity"] == {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
    assert spod["tolerations"]["items"]["x-kubernetes-preserve-unknown-fields"] is True
    # Optional fields are simply absent: no null defaults, no titles survive the conversion.
    dumped = json.dumps(all_crds())
    assert '"title"' not in dumped and '"default": null' not in dumped and '"anyOf"' not in dumped


def test_seccomp_profile_serving_details() -> None:
    definition = crd(SECCOMP_PROFILE)
    assert definition["metadata"]["name"] == f"seccompprofiles.{constants.GROUP}"
    names = definition["spec"]["names"]
    assert names["shortNames"] == ["sp"]
    assert names["listKind"] == "SeccompProfileList"
    assert names["categories"] == ["security"]
    assert definition["spec"]["scope"] == "Cluster"
    version = version_of(SECCOMP_PROFILE)
    assert (version["name"], version["served"], version["storage"]) == ("v1beta1", True, True)
    assert version["subresources"] == {"status": {}}
    column = {c["name"]: c for c in version["additionalPrinterColumns"]}["LocalhostProfile"]
    assert column["priority"] == 10
    assert column["jsonPath"] == ".status.localhostProfile"


def test_selinux_profile_columns() -> None:
    columns = version_of(SELINUX_PROFILE)["additionalPrinterColumns"]
    assert [(c["name"], c["jsonPath"]) for c in columns] == [
        ("Usage", ".status.usage"),
        ("State", ".status.status"),
    ]
    assert version_of(RAW_SELINUX_PROFILE)["additionalPrinterColumns"] == columns


def test_node_status_is_flat_without_status_subresource() -> None:
    schema = schema_of(NODE_STATUS)
    assert "subresources" not in version_of(NODE_STATUS)
    assert schema["properties"]["nodeName"] == {"type": "string", "minLength": 1}
    assert schema["properties"]["status"]["type"] == "string"
    assert "Installed" in schema["properties"]["status"]["enum"]
    assert schema["required"] == ["nodeName"]
    assert crd(NODE_STATUS)["spec"]["names"]["shortNames"] == ["spns"]


def test_scopes_and_metadata() -> None:
    scopes = {definition["spec"]["names"]["kind"]: definition["spec"]["scope"] for definition in all_crds()}
    assert scopes == {kind.kind: "Namespaced" if kind.namespaced else "Cluster" for kind in ALL_KINDS}
    assert scopes[PROFILE_BINDING.kind] == "Namespaced"
    for kind in ALL_KINDS:
        properties = schema_of(kind)["properties"]
        if kind.kind in {"SeccompProfile", "SelinuxProfile", "RawSelinuxProfile"}:
            # A profile's name becomes a node file name: the apiserver refuses what the model would.
            name = properties["metadata"]["properties"]["name"]
            assert name["pattern"] == validation.DNS1123_SUBDOMAIN_PATTERN
        else:
            assert properties["metadata"] == {"type": "object"}
        assert properties["apiVersion"] == properties["kind"] == {"type": "string"}
        assert ("additionalPrinterColumns" in version_of(kind)) == bool(kind.columns)


# --- (d) `spo manifests render` ------------------------------------------------------------------------


def test_render_prints_every_object(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_render([], capsys)
    assert code == 0
    objects = list(yaml.safe_load_all(out))
    assert objects == manifests.render()
    kinds = [obj["kind"] for obj in objects]
    assert kinds.count("CustomResourceDefinition") == 7
    for kind in ("ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"):
        assert kind in kinds
    assert kinds.count("Deployment") == 2
    assert kinds.count("Service") == 2
    assert kinds.count("ConfigMap") == kinds.count("PodDisruptionBudget") == kinds.count("Namespace") == 1
    assert "Issuer" not in kinds and "Certificate" not in kinds
    # Plain YAML for any consumer: no anchors and aliases even where objects share a sub-dict.
    assert "&id" not in out and "*id" not in out


def test_render_other_namespace_moves_everything(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_render(
        ["--namespace", OTHER_NAMESPACE, "--image", "example.org/spo:dev", "--cert-manager"], capsys
    )
    assert code == 0
    objects = list(yaml.safe_load_all(out))
    assert find(objects, "Namespace", OTHER_NAMESPACE)
    for obj in objects:
        if obj["kind"] in CLUSTER_SCOPED_KINDS:
            assert "namespace" not in obj["metadata"], identity(obj)
        else:
            assert obj["metadata"]["namespace"] == OTHER_NAMESPACE, identity(obj)
        for subject in obj.get("subjects", []):
            assert subject["namespace"] == OTHER_NAMESPACE, identity(obj)
    for name in (constants.RECONCILER_DEPLOYMENT, constants.WEBHOOK_DEPLOYMENT):
        (container,) = find(objects, "Deployment", name)["spec"]["template"]["spec"]["containers"]
        assert container["image"] == "example.org/spo:dev"
    certificate = find(objects, "Certificate", constants.WEBHOOK_CERTIFICATE)
    assert certificate["spec"]["dnsNames"] == [
        f"{constants.WEBHOOK_SERVICE}.{OTHER_NAMESPACE}.svc",
        f"{constants.WEBHOOK_SERVICE}.{OTHER_NAMESPACE}.svc.cluster.local",
    ]
    assert certificate["spec"]["secretName"] == constants.WEBHOOK_CERT_SECRET
    issuer = find(objects, "Issuer", certificate["spec"]["issuerRef"]["name"])
    assert issuer["spec"] == {"selfSigned": {}}
    assert constants.DEFAULT_NAMESPACE not in {obj["metadata"].get("namespace") for obj in objects}


def _reconciler_args(objects: list[dict[str, Any]]) -> list[str]:
    (container,) = find(objects, "Deployment", constants.RECONCILER_DEPLOYMENT)["spec"]["template"]["spec"][
        "containers"
    ]
    args: list[str] = container["args"]
    return args


def test_render_passes_the_node_paths_on_to_the_reconciler(capsys: pytest.CaptureFixture[str]) -> None:
    """Only the paths that differ from upstream's, as the reconciler's own flags: the reconciler parses
    them and renders the spod DaemonSet with them."""
    code, out, _ = run_render(
        ["--node-kubelet-dir", "/srv/kubelet", "--node-audit-log=/srv/audit/audit.log"], capsys
    )
    assert code == 0
    args = _reconciler_args(list(yaml.safe_load_all(out)))
    assert args == [
        "reconciler",
        "--leader-elect",
        "--node-kubelet-dir=/srv/kubelet",
        "--node-audit-log=/srv/audit/audit.log",
    ]
    parsed = build_parser().parse_args(args)
    assert (parsed.node_kubelet_dir, parsed.node_audit_log) == ("/srv/kubelet", "/srv/audit/audit.log")
    assert (parsed.node_selinux_dir, parsed.node_state_dir) == (
        constants.SELINUX_POLICY_DIR,
        constants.AGENT_RECORDINGS_DIR,
    )
    assert _reconciler_args(manifests.render()) == ["reconciler", "--leader-elect"]


@pytest.mark.parametrize("path", ["relative/kubelet", "/srv/../kubelet", "/", "/srv/kubelet/"])
def test_render_rejects_a_node_path_that_is_not_absolute_and_normalised(
    path: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        run_render(["--node-kubelet-dir", path], capsys)
    assert exit_info.value.code == 2
    assert "--node-kubelet-dir" in capsys.readouterr().err


def test_render_rejects_an_invalid_namespace(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_render(["--namespace", "Not_A_Namespace"], capsys)
    assert code == 2
    assert out == ""
    assert "--namespace" in err


def test_spo_entry_point_renders() -> None:
    pytest.importorskip("spo.cli", reason="the spo command is not wired up yet")
    spo = KUBECTL.parent / "spo"
    result = subprocess.run(
        [str(spo), "manifests", "render", "--namespace", OTHER_NAMESPACE],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert list(yaml.safe_load_all(result.stdout)) == manifests.render(OTHER_NAMESPACE)


# --- (e) kustomize renders the same objects -----------------------------------------------------------


def test_kustomize_renders_the_same_objects() -> None:
    result = subprocess.run(
        [str(KUBECTL), "kustomize", str(PACKAGE_DIR)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    kustomized = {identity(obj): obj for obj in yaml.safe_load_all(result.stdout)}
    rendered = {identity(obj): obj for obj in manifests.render()}
    assert sorted(kustomized) == sorted(rendered)
    for key, obj in rendered.items():
        assert kustomized[key] == obj, key


# --- (f) RBAC -----------------------------------------------------------------------------------------


def rules_of(objects: list[dict[str, Any]], service_account: str) -> list[tuple[str | None, dict[str, Any]]]:
    """(namespace the rule applies in, or None for cluster-wide; rule) for every rule bound to the SA."""
    bound: list[tuple[str | None, dict[str, Any]]] = []
    for binding in objects:
        if binding["kind"] not in ("ClusterRoleBinding", "RoleBinding"):
            continue
        if not any(subject["name"] == service_account for subject in binding["subjects"]):
            continue
        role = find(objects, binding["roleRef"]["kind"], binding["roleRef"]["name"])
        scope = binding["metadata"].get("namespace")
        bound.extend((scope, rule) for rule in role["rules"])
    return bound


def can(
    objects: list[dict[str, Any]],
    service_account: str,
    verb: str,
    group: str,
    resource: str,
    namespace: str | None = None,
    name: str | None = None,
) -> bool:
    """What the RBAC authorizer answers, for the subset of rules these manifests use."""
    return any(
        (scope is None or scope == namespace)
        and verb in rule["verbs"]
        and group in rule.get("apiGroups", [])
        and resource in rule.get("resources", [])
        and ("resourceNames" not in rule or name in rule["resourceNames"])
        for scope, rule in rules_of(objects, service_account)
    )


NS = constants.DEFAULT_NAMESPACE
GROUP = constants.GROUP
PROFILES = [SECCOMP_PROFILE.plural, SELINUX_PROFILE.plural, RAW_SELINUX_PROFILE.plural]
COMPONENTS = [
    (constants.RECONCILER_SERVICE_ACCOUNT, access.RECONCILER),
    (constants.WEBHOOK_SERVICE_ACCOUNT, access.WEBHOOK),
    (constants.SPOD_SERVICE_ACCOUNT, access.AGENT),
]


def granted(objects: list[dict[str, Any]], service_account: str) -> frozenset[access.Grant]:
    """Every (verb, resource, object name) the rendered roles bound to the SA allow, one by one."""
    found = set()
    for namespace, rule in rules_of(objects, service_account):
        assert namespace in (None, NS), rule
        scope = access.Scope.CLUSTER if namespace is None else access.Scope.NAMESPACE
        found |= {
            access.Grant(scope, group, resource, verb, name)
            for group in rule["apiGroups"]
            for resource in rule["resources"]
            for verb in rule["verbs"]
            for name in rule.get("resourceNames", [""])
        }
    return frozenset(found)


@pytest.mark.parametrize(("service_account", "accesses"), COMPONENTS, ids=["reconciler", "webhook", "agent"])
def test_roles_grant_exactly_the_accesses(service_account: str, accesses: tuple[access.Access, ...]) -> None:
    """Every rule is one the component's code uses (api.access), and every access it makes is granted."""
    rendered = granted(manifests.render(), service_account)
    declared = access.grants(accesses)
    assert sorted(rendered - declared) == [], "granted but never used"
    assert sorted(declared - rendered) == [], "used but not granted"


@pytest.mark.parametrize(
    ("accesses", "rules"),
    [
        (
            [access.Access(access.Scope.CLUSTER, "", "pods", ("watch", "get", "list"))],
            [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}],
        ),
        # Same group and verbs: one rule; a name restriction keeps its own rule.
        (
            [
                access.Access(access.Scope.CLUSTER, "apps", "daemonsets", ("create",)),
                access.Access(access.Scope.CLUSTER, "apps", "deployments", ("create",)),
                access.Access(access.Scope.CLUSTER, "apps", "deployments", ("patch",), ("a", "b")),
            ],
            [
                {"apiGroups": ["apps"], "resources": ["daemonsets", "deployments"], "verbs": ["create"]},
                {
                    "apiGroups": ["apps"],
                    "resources": ["deployments"],
                    "verbs": ["patch"],
                    "resourceNames": ["a", "b"],
                },
            ],
        ),
        # The other scope's accesses are not this role's.
        ([access.Access(access.Scope.NAMESPACE, "", "secrets", ("get",))], []),
    ],
)
def test_rules_merge_accesses(accesses: list[access.Access], rules: list[dict[str, Any]]) -> None:
    assert deploy._rules(accesses, access.Scope.CLUSTER) == rules


def test_rules_refuse_an_unknown_verb() -> None:
    with pytest.raises(ValueError, match="apply"):
        deploy._rules([access.Access(access.Scope.CLUSTER, "", "pods", ("apply",))], access.Scope.CLUSTER)


def test_webhook_reads_its_caches_and_writes_nothing() -> None:
    objects = manifests.render()
    rules = rules_of(objects, constants.WEBHOOK_SERVICE_ACCOUNT)
    assert rules
    for _, rule in rules:
        assert set(rule["verbs"]) <= READ_VERBS, rule
    readable = {resource for _, rule in rules for resource in rule["resources"]}
    assert readable == {
        PROFILE_BINDING.plural,
        PROFILE_RECORDING.plural,
        *PROFILES,
        SPOD.plural,
    }


def test_least_privilege_boundaries() -> None:
    objects = manifests.render()
    reconciler, agent = constants.RECONCILER_SERVICE_ACCOUNT, constants.SPOD_SERVICE_ACCOUNT
    # Namespace-local powers stay in the operator namespace.
    assert not can(objects, reconciler, "create", "", "secrets", "kube-system")
    assert not can(objects, reconciler, "get", "coordination.k8s.io", "leases", "kube-system")
    assert not can(objects, agent, "create", "coordination.k8s.io", "leases", "kube-system")
    # Only the operator's own webhook configurations can be changed.
    admission = "admissionregistration.k8s.io"
    mutating = (admission, "mutatingwebhookconfigurations")
    assert can(objects, reconciler, "patch", *mutating, name=constants.MUTATING_WEBHOOK_CONFIGURATION)
    assert not can(objects, reconciler, "patch", *mutating, name="someone-elses-webhook")
    validating = (admission, "validatingwebhookconfigurations")
    assert can(objects, reconciler, "delete", *validating, name=constants.VALIDATING_WEBHOOK_CONFIGURATION)
    # The agent writes node state, never cluster plumbing or profile statuses.
    assert not can(objects, agent, "patch", *mutating, name=constants.MUTATING_WEBHOOK_CONFIGURATION)
    assert not can(objects, agent, "update", GROUP, f"{SECCOMP_PROFILE.plural}/status")
    assert not can(objects, agent, "get", "", "secrets", NS)
    # Nobody gets a wildcard.
    for obj in objects:
        for rule in obj.get("rules", []):
            assert "*" not in rule.get("verbs", []) and "*" not in rule.get("resources", []), identity(obj)


def test_rbac_names_real_resources() -> None:
    plurals = {kind.plural for kind in ALL_KINDS}
    for obj in manifests.render():
        for rule in obj.get("rules", []):
            if rule.get("apiGroups") == [GROUP]:
                assert {resource.split("/")[0] for resource in rule["resources"]} <= plurals, rule


def test_metrics_client_binding() -> None:
    objects = manifests.render()
    role = find(objects, "ClusterRole", constants.METRICS_CLIENT_ROLE)
    assert role["rules"] == [{"nonResourceURLs": ["/metrics", "/metrics-spod"], "verbs": ["get"]}]
    binding = find(objects, "ClusterRoleBinding", constants.METRICS_CLIENT_ROLE)
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "default", "namespace": NS}]


def test_every_subject_and_workload_account_exists() -> None:
    objects = manifests.render()
    accounts = {obj["metadata"]["name"] for obj in objects if obj["kind"] == "ServiceAccount"}
    assert accounts == {"security-profiles-operator", "spo-webhook", "spod"}
    for obj in objects:
        for subject in obj.get("subjects", []):
            assert subject["name"] in accounts | {constants.METRICS_CLIENT_SERVICE_ACCOUNT}
        if obj["kind"] == "Deployment":
            assert obj["spec"]["template"]["spec"]["serviceAccountName"] in accounts


# --- deployment objects --------------------------------------------------------------------------------


def pod_spec(objects: list[dict[str, Any]], name: str) -> dict[str, Any]:
    spec: dict[str, Any] = find(objects, "Deployment", name)["spec"]["template"]["spec"]
    return spec


def test_apply_order() -> None:
    kinds = [obj["kind"] for obj in manifests.render()]
    assert kinds[:8] == ["CustomResourceDefinition"] * 7 + ["Namespace"]
    assert kinds.index("ServiceAccount") < kinds.index("ClusterRoleBinding") < kinds.index("Deployment")
    assert kinds.index("ConfigMap") < kinds.index("Deployment")


def test_namespace_admits_the_privileged_daemon() -> None:
    labels = find(manifests.render(), "Namespace", NS)["metadata"]["labels"]
    for mode in ("enforce", "audit", "warn"):
        assert labels[f"pod-security.kubernetes.io/{mode}"] == "privileged"


@pytest.mark.parametrize("name", [constants.RECONCILER_DEPLOYMENT, constants.WEBHOOK_DEPLOYMENT])
def test_deployments_are_hardened(name: str) -> None:
    spec = pod_spec(manifests.render(), name)
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = spec["containers"]
    context = container["securityContext"]
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"] == {"drop": ["ALL"]}
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    assert container["command"] == ["spo"]
    namespace_env = {
        "name": "OPERATOR_NAMESPACE",
        "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}},
    }
    assert namespace_env in container["env"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"


@pytest.mark.parametrize(
    ("cert_manager", "args"),
    [(False, ["reconciler", "--leader-elect"]), (True, ["reconciler", "--leader-elect", "--cert-manager"])],
)
def test_reconciler_deployment(cert_manager: bool, args: list[str]) -> None:
    objects = manifests.render(cert_manager=cert_manager)
    deployment = find(objects, "Deployment", constants.RECONCILER_DEPLOYMENT)
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["args"] == args
    assert container["ports"][0]["containerPort"] == constants.HEALTH_PORT
    assert {"name": constants.ENV_OPERATOR_IMAGE, "value": manifests.DEFAULT_IMAGE} in container["env"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert labels == {"app": "security-profiles-operator", "name": "security-profiles-operator"}


def test_webhook_deployment_service_and_budget() -> None:
    objects = manifests.render()
    deployment = find(objects, "Deployment", constants.WEBHOOK_DEPLOYMENT)
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert labels == {"app": "security-profiles-operator", "name": "security-profiles-operator-webhook"}
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    spec = deployment["spec"]["template"]["spec"]
    assert spec["topologySpreadConstraints"][0]["labelSelector"] == {"matchLabels": labels}
    (container,) = spec["containers"]
    assert container["args"] == [
        "webhook",
        "--port",
        "9443",
        "--cert-dir",
        "/tmp/k8s-webhook-server/serving-certs",
    ]
    (mount,) = container["volumeMounts"]
    assert mount["mountPath"] == constants.WEBHOOK_CERT_DIR
    volume = {v["name"]: v for v in spec["volumes"]}[mount["name"]]
    assert volume["secret"]["secretName"] == "webhook-server-cert"
    readiness = container["readinessProbe"]["httpGet"]
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert (readiness["scheme"], ports[readiness["port"]]) == ("HTTPS", 9443)

    service = find(objects, "Service", constants.WEBHOOK_SERVICE)
    assert service["spec"]["selector"] == labels
    assert [(p["port"], p["targetPort"]) for p in service["spec"]["ports"]] == [(443, 9443)]
    budget = find(objects, "PodDisruptionBudget", constants.WEBHOOK_DEPLOYMENT)
    assert budget["spec"] == {"minAvailable": 1, "selector": {"matchLabels": labels}}


def test_metrics_service_selects_the_daemon() -> None:
    service = find(manifests.render(), "Service", constants.METRICS_SERVICE)
    assert service["spec"]["selector"] == {"app": "security-profiles-operator", "name": "spod"}
    assert [(p["port"], p["targetPort"]) for p in service["spec"]["ports"]] == [(443, 9443)]


def test_no_runtime_rendered_objects() -> None:
    kinds = {obj["kind"] for obj in manifests.render(cert_manager=True)}
    assert not kinds & {
        "DaemonSet",
        "MutatingWebhookConfiguration",
        "ValidatingWebhookConfiguration",
        "Secret",
    }


def test_profile_configmap() -> None:
    data = find(manifests.render(), "ConfigMap", constants.PROFILE_CONFIGMAP)["data"]
    assert set(data) == {
        "security-profiles-operator.json",
        "bpf-recorder.json",
        "selinuxd.cil",
        "selinuxrecording.cil",
        "selinuxd-image-mapping.json",
        "json-enricher-log-volume-source.json",
        "json-enricher-log-volume-mount-path",
    }
    assert data["selinuxrecording.cil"].strip() == (
        "(block selinuxrecording (blockinherit container) (typepermissive process))"
    )
    assert json.loads(data["json-enricher-log-volume-source.json"]) == {"emptyDir": {"sizeLimit": "500Mi"}}
    assert data["json-enricher-log-volume-mount-path"] == "/data/logs/jsonenricher"
    assert data["selinuxd.cil"].lstrip().count("(block selinuxd") == 1
    for entry in json.loads(data["selinuxd-image-mapping.json"]):
        assert set(entry) == {"regex", "imageFromVar"}
        re.compile(entry["regex"])


@pytest.mark.parametrize("key", ["security-profiles-operator.json", "bpf-recorder.json"])
def test_daemon_seccomp_profiles(key: str) -> None:
    data = find(manifests.render(), "ConfigMap", constants.PROFILE_CONFIGMAP)["data"]
    profile = json.loads(data[key])
    assert profile["defaultAction"] == "SCMP_ACT_ERRNO"
    (allowed,) = profile["syscalls"]
    assert allowed["action"] == "SCMP_ACT_ALLOW"
    names = allowed["names"]
    assert names == sorted(set(names))
    assert all(re.fullmatch(validation.SYSCALL_NAME_PATTERN, name) for name in names)
    # What any Python process needs to start, thread, poll and talk TLS.
    assert {"execve", "mmap", "futex", "clone3", "epoll_wait", "connect", "getrandom", "exit_group"} <= set(
        names
    )
    assert ("bpf" in names) == (key == "bpf-recorder.json")
