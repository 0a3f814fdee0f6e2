"""/validate-rawselinuxprofile decisions: raw CIL policies must stay inside the block they live in."""

from __future__ import annotations

from typing import Any

import pytest

from api import constants
from api.types import RawSelinuxProfile, SecurityProfilesOperatorDaemon
from tests.test_decisions_support import admission, spod
from webhooks.decisions import decide_raw_selinux
from webhooks.snapshot import StaticSnapshot

KIND = RawSelinuxProfile.KIND
# Upstream's examples/rawselinuxprofile.yaml, which upstream's own validation rejects.
ERRORLOGGER = """(blockinherit container)
(allow process var_log_t ( dir ( open read getattr lock search ioctl add_name remove_name write )))
(allow process var_log_t ( file ( getattr read write append ioctl lock map open create  )))
(allow process var_log_t ( sock_file ( getattr read write append open  )))
"""


def raw_profile(policy: Any, name: str = "errorlogger") -> dict[str, Any]:
    return {
        "apiVersion": f"{constants.GROUP}/{RawSelinuxProfile.VERSION}",
        "kind": KIND,
        "metadata": {"name": name},
        "spec": {"policy": policy},
    }


def decide(obj: Any, operation: str = "CREATE", daemon: SecurityProfilesOperatorDaemon | None = None) -> Any:
    request = admission(obj, operation=operation, kind=KIND, namespace="")
    return decide_raw_selinux(request, StaticSnapshot(daemon=daemon))


ALLOWED = [
    pytest.param("(allow container_t shadow_t (file (read open)))", id="basic"),
    pytest.param(ERRORLOGGER, id="upstream-example-blockinherit-container"),
    pytest.param("(blockinherit container)", id="blockinherit-container"),
    pytest.param(
        "(  blockinherit\n\tcontainer ) ; inherit the template\n(allow process self (file (read)))",
        id="spacing",
    ),
    pytest.param("(((( )))) () (())", id="deeply-nested-balanced"),
    pytest.param("(allow typepermissive file (read))", id="restricted-keyword-as-argument"),
    pytest.param(
        "(type my_container_t) (typealias my_alias_t (my_container_t))", id="similar-allowed-directives"
    ),
    pytest.param(
        "(allow process self (file (read))) ; a comment with ) and (block x", id="parens-in-comment"
    ),
    pytest.param('(typetransition process var_log_t file "a ) (block x" var_log_t)', id="parens-in-string"),
    pytest.param("(allow process self (file (read)));)\n", id="comment-right-after-close"),
]


@pytest.mark.parametrize("policy", ALLOWED)
def test_policy_allowed(policy: str) -> None:
    decision = decide(raw_profile(policy))

    assert decision.allowed, decision.message
    assert decision.patch == []


DENIED = [
    pytest.param("", "policy must not be empty", id="empty"),
    pytest.param("   \n\t  ", "policy must not be empty", id="whitespace"),
    pytest.param(None, "policy must be a string, got null", id="null"),
    pytest.param(["(allow a b (c (d)))"], "policy must be a string, got array", id="list"),
    pytest.param(
        "(allow container_t \x00 shadow_t (file (read)))", "policy must not contain null bytes", id="nul"
    ),
    pytest.param("(allow a \ud800 (file (read)))", "policy must be valid UTF-8", id="lone-surrogate"),
    pytest.param(
        ") (typepermissive spc_t) (block x",
        "invalid policy: unmatched closing parenthesis ')' allows block escape (line 1)",
        id="block-escape",
    ),
    pytest.param(
        "(allow a b (c (d))) ) (block evil",
        "invalid policy: unmatched closing parenthesis ')' allows block escape",
        id="injection-after-balanced-statement",
    ),
    pytest.param(
        "(allow container_t self (capability (sys_admin))) ) \n"
        "\t\t\t(typepermissive spc_t) (allow container_t shadow_t (file (read open))) (block x",
        "unmatched closing parenthesis",
        id="upstream-cve-payload",
    ),
    pytest.param(
        "(allow container_t (file (read)", "invalid policy: unbalanced parentheses", id="unbalanced-open"
    ),
    pytest.param(
        '(allow a b (file (read))) "unterminated ) (block x',
        "invalid policy: unterminated string on line 1",
        id="unterminated-string",
    ),
    pytest.param(
        '(allow a b (file (read)))\n(typetransition a b file "x\n) (block evil" b)',
        "unterminated string on line 2",
        id="string-across-lines",
    ),
    pytest.param(
        "(typepermissive spc_t)",
        "invalid policy: use of restricted global directive 'typepermissive' is not allowed",
        id="typepermissive",
    ),
    pytest.param("(classorder (file dir))", "restricted global directive 'classorder'", id="classorder"),
    pytest.param("( \t \n typepermissive spc_t)", "directive 'typepermissive'", id="irregular-spacing"),
    pytest.param("(TYPEPERMISSIVE spc_t)", "directive 'typepermissive'", id="capitalised"),
    pytest.param(
        "(allow my_t my_test_t (file (read))) (mls (sensitivity s0))",
        "restricted global directive 'mls'",
        id="embedded-mls",
    ),
    pytest.param(
        "( ; hide it\n typepermissive spc_t)", "directive 'typepermissive'", id="comment-before-directive"
    ),
    pytest.param('("typepermissive" spc_t)', "directive 'typepermissive'", id="quoted-directive"),
    pytest.param("(typepermissive.x spc_t)", "directive 'typepermissive'", id="directive-prefix"),
    pytest.param(
        "(blockinherit unconfined)", "directive 'blockinherit'", id="blockinherit-not-allowed-template"
    ),
    pytest.param(
        "(blockinherit container extra)", "directive 'blockinherit'", id="blockinherit-extra-argument"
    ),
    pytest.param("(blockinherit (container))", "directive 'blockinherit'", id="blockinherit-list-argument"),
    pytest.param("(BlockInherit container)", "directive 'blockinherit'", id="blockinherit-capitalised"),
    pytest.param("(in container (allow process self (file (write))))", "directive 'in'", id="in-other-block"),
    pytest.param(
        "(allow a b (file (read (blockinherit container))))",
        "directive 'blockinherit'",
        id="blockinherit-nested",
    ),
    pytest.param("(block inner (allow a b (file (read))))", "directive 'block'", id="block"),
    pytest.param("(optional o (allow a b (file (read))))", "directive 'optional'", id="optional"),
    pytest.param("(userrole unconfined_u system_r)", "directive 'userrole'", id="userrole"),
    pytest.param('(filecon "/etc/shadow" file ())', "directive 'filecon'", id="filecon"),
]


@pytest.mark.parametrize(("policy", "message"), DENIED)
def test_policy_denied(policy: Any, message: str) -> None:
    decision = decide(raw_profile(policy))

    assert not decision.allowed
    assert decision.code == 403
    assert message in decision.message


@pytest.mark.parametrize(
    ("daemon", "policy", "allowed"),
    [
        pytest.param(None, "(blockinherit container)", True, id="no-spod-container"),
        pytest.param(None, "(blockinherit net_container)", False, id="no-spod-net-container"),
        pytest.param(spod(None), "(blockinherit container)", True, id="spod-without-selinux-options"),
        pytest.param(
            spod(["container", "net_container"]), "(blockinherit net_container)", True, id="spod-allows"
        ),
        pytest.param(spod(["net_container"]), "(blockinherit container)", False, id="spod-restricts"),
        pytest.param(spod([]), "(blockinherit container)", False, id="spod-allows-none"),
    ],
)
def test_blockinherit_templates_come_from_the_spod(
    daemon: SecurityProfilesOperatorDaemon | None, policy: str, allowed: bool
) -> None:
    decision = decide(raw_profile(policy), daemon=daemon)

    assert decision.allowed is allowed, decision.message


UNDECODABLE = [
    pytest.param(None, "request.object must be an object, got null", id="no-object"),
    pytest.param("policy", "request.object must be an object, got string", id="object-not-a-dict"),
    pytest.param(
        raw_profile("(allow a b (file (read)))") | {"spec": {}}, "spec.policy: Field required", id="no-policy"
    ),
    pytest.param(
        raw_profile("(allow a b (file (read)))") | {"spec": None}, "spec: Input should be", id="null-spec"
    ),
    pytest.param(
        raw_profile("(allow a b (file (read)))") | {"apiVersion": f"{constants.GROUP}/v1"},
        "apiVersion must be",
        id="wrong-api-version",
    ),
    pytest.param(raw_profile("(allow a b (file (read)))", name="../evil"), "metadata", id="bad-name"),
    pytest.param(
        raw_profile("(allow a b (file (read)))")
        | {"spec": {"policy": "(allow a b (file (read)))", "extra": 1}},
        "spec.extra: Extra inputs are not permitted",
        id="unknown-field",
    ),
    pytest.param(
        raw_profile("x" * 500_001),
        "spec.policy: String should have at most 500000 characters",
        id="policy-too-long",
    ),
]


@pytest.mark.parametrize(("obj", "message"), UNDECODABLE)
def test_undecodable_object_is_denied_with_400(obj: Any, message: str) -> None:
    decision = decide(obj)

    assert not decision.allowed
    assert decision.code == 400
    assert message in decision.message


def test_update_is_validated() -> None:
    old = raw_profile("(allow a b (file (read)))")
    new = raw_profile("(allow a b (file (read)))) (typepermissive spc_t")
    request = admission(new, operation="UPDATE", kind=KIND, old=old, namespace="")

    decision = decide_raw_selinux(request, StaticSnapshot())

    assert not decision.allowed
    assert "unmatched closing parenthesis" in decision.message


def test_update_keeping_an_old_policy_is_allowed() -> None:
    """A profile admitted before validation existed must still get its finalizers removed."""
    old = raw_profile("(typepermissive spc_t)")
    new = raw_profile("(typepermissive spc_t)") | {"metadata": {"name": "errorlogger", "finalizers": []}}
    request = admission(new, operation="UPDATE", kind=KIND, old=old, namespace="")

    decision = decide_raw_selinux(request, StaticSnapshot())

    assert decision.allowed


@pytest.mark.parametrize(
    ("kind", "operation"),
    [
        pytest.param(KIND, "DELETE", id="delete"),
        pytest.param(KIND, "CONNECT", id="connect"),
        pytest.param("SelinuxProfile", "CREATE", id="other-kind"),
        pytest.param("Pod", "CREATE", id="pod"),
    ],
)
def test_other_requests_are_allowed(kind: str, operation: str) -> None:
    request = admission(raw_profile("(typepermissive spc_t)"), operation=operation, kind=kind, namespace="")

    assert decide_raw_selinux(request, StaticSnapshot()).allowed
