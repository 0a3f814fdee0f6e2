"""/validate-rawselinuxprofile decisions: raw CIL policies must stay inside the block they live in."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from api import cil, constants
from api.types import RawSelinuxProfile, SecurityProfilesOperatorDaemon
from tests.raw_selinux_corpus import ACCEPTED, ESCAPES, INHERIT, Escape, Policy
from tests.test_decisions_support import admission, spod
from webhooks.decisions import decide_raw_selinux
from webhooks.snapshot import StaticSnapshot

KIND = RawSelinuxProfile.KIND
ERRORLOGGER = next(policy.text for policy in ACCEPTED if policy.id == "upstream-errorlogger")


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


@pytest.mark.parametrize("policy", ACCEPTED, ids=lambda policy: policy.id)
def test_docs_and_upstream_policies_are_accepted(policy: Policy) -> None:
    decision = decide(raw_profile(policy.text))

    assert decision.allowed, decision.message
    assert decision.patch == []


def test_the_corpus_has_the_escapes_the_issue_asks_for() -> None:
    assert len({escape.id for escape in ESCAPES}) == len(ESCAPES) >= 30


@pytest.mark.parametrize("escape", ESCAPES, ids=lambda escape: escape.id)
def test_escapes_are_refused_quoting_the_statement(escape: Escape) -> None:
    decision = decide(raw_profile(escape.text))

    assert not decision.allowed
    assert decision.code == 403
    assert escape.culprit in decision.message


@pytest.mark.parametrize(
    "statement", ["(typetransition .init_t .bin_t process .spc_t)", "(typeattributeset .domain (process))"]
)
def test_the_issues_examples_are_refused(statement: str) -> None:
    decision = decide(raw_profile(INHERIT + statement))

    assert not decision.allowed
    assert f"{statement!r} (line 2) is not allowed" in decision.message


NOT_POLICIES = [
    pytest.param("", "policy must not be empty", id="empty"),
    pytest.param("   \n\t  ", "policy must not be empty", id="whitespace"),
    pytest.param(None, "policy must be a string, got null", id="null"),
    pytest.param(["(allow process self (file (read)))"], "policy must be a string, got array", id="list"),
    pytest.param(
        "(allow process \x00 shadow_t (file (read)))", "policy must not contain null bytes", id="nul"
    ),
    pytest.param("(allow process \ud800 (file (read)))", "policy must be valid UTF-8", id="lone-surrogate"),
    pytest.param(
        INHERIT + "(allow process self (file (read))) ) (block x",
        "invalid policy: unmatched closing parenthesis ')' allows block escape (line 2)",
        id="unmatched-close",
    ),
    pytest.param(
        "(allow process self (file (read)",
        "invalid policy: 2 unclosed parenthesis '(' (line 1)",
        id="unclosed",
    ),
    pytest.param(
        INHERIT + '(allow process self (file (read))) "unterminated ) (block x',
        "invalid policy: unterminated string (line 2)",
        id="unterminated-string",
    ),
    pytest.param(
        INHERIT + '(typetransition a b file "x\n) (block evil" b)',
        "unterminated string (line 2)",
        id="string-across-lines",
    ),
    pytest.param(
        INHERIT + "(allow process self (file (read)))\f", "invalid character '\\x0c'", id="form-feed"
    ),
    pytest.param(INHERIT + "(allow process café (file (read)))", "invalid character 'é'", id="non-ascii"),
    pytest.param(
        INHERIT + "(" * 5000 + ")" * 5000, "parentheses nested deeper than 4096", id="nested-too-deep"
    ),
    pytest.param(
        "blockinherit container", "a policy is a list of statements in parentheses", id="bare-words"
    ),
    pytest.param(INHERIT + "()", "a statement starts with its keyword", id="empty-statement"),
    pytest.param(INHERIT + "((allow) process)", "a statement starts with its keyword", id="list-as-keyword"),
    pytest.param(
        INHERIT + "(ALLOW process self (file (read)))", "'ALLOW' is not a statement", id="capitalised"
    ),
    pytest.param(
        INHERIT + "(allow process self (file read))",
        "the form is (allow <own type>",
        id="permissions-not-a-list",
    ),
    pytest.param(INHERIT + "(allow process self (file ()))", "the form is (allow", id="no-permissions"),
    pytest.param(
        INHERIT + "(allow process self (file (read (write))))",
        "the form is (allow",
        id="permission-expression",
    ),
    pytest.param(INHERIT + "(allow process (self) (file (read)))", "the form is (allow", id="list-target"),
    pytest.param(INHERIT + "(allow process self)", "the form is (allow", id="no-class"),
    pytest.param(
        INHERIT + "(allow (process) self (file (read)))", "a list is not this profile's", id="list-source"
    ),
    pytest.param(
        INHERIT + "(typepermissive process extra)",
        "the form is (typepermissive <own type>)",
        id="typepermissive-two-names",
    ),
    pytest.param(
        "(allow process var_log_t (file (read)))",
        "'process' is not this profile's own type (none)",
        id="process-without-template-or-declaration",
    ),
    pytest.param(INHERIT + "(type a.b)", "a type is declared as (type <name>)", id="dotted-type"),
    pytest.param(INHERIT + "(type a b)", "a type is declared as (type <name>)", id="type-two-names"),
    pytest.param("(blockinherit unconfined)", "only a template from the spod's", id="template-not-allowed"),
    pytest.param("(blockinherit .container)", "only a template from the spod's", id="template-dotted"),
    pytest.param("(blockinherit container extra)", "only a template from the spod's", id="template-extra"),
    pytest.param("(blockinherit (container))", "only a template from the spod's", id="template-list"),
    pytest.param(
        INHERIT + "(allow process self (file (read)))\n" * 50 + "(typepermissive init_t)",
        "(typepermissive init_t)' (line 52)",
        id="line-of-a-late-statement",
    ),
]


@pytest.mark.parametrize(("policy", "message"), NOT_POLICIES)
def test_malformed_policies_are_refused(policy: Any, message: str) -> None:
    decision = decide(raw_profile(policy))

    assert not decision.allowed
    assert decision.code == 403
    assert message in decision.message


def test_a_long_string_is_quoted_in_part() -> None:
    decision = decide(raw_profile(INHERIT + '(typetransition process etc_t file "' + "x" * 1000 + '" etc_t)'))

    assert "quoted strings such as 'xxx" in decision.message
    assert len(decision.message) < 1000


def test_a_long_statement_is_quoted_in_part() -> None:
    decision = decide(raw_profile(INHERIT + "(allow init_t shadow_t (file (" + "read " * 1000 + ")))"))

    assert "...'" in decision.message
    assert len(decision.message) < 1000


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
    pytest.param(raw_profile(ERRORLOGGER) | {"spec": {}}, "spec.policy: Field required", id="no-policy"),
    pytest.param(raw_profile(ERRORLOGGER) | {"spec": None}, "spec: Input should be", id="null-spec"),
    pytest.param(
        raw_profile(ERRORLOGGER) | {"apiVersion": f"{constants.GROUP}/v1"},
        "apiVersion must be",
        id="wrong-api-version",
    ),
    pytest.param(raw_profile(ERRORLOGGER, name="../evil"), "metadata", id="bad-name"),
    pytest.param(
        raw_profile(ERRORLOGGER) | {"spec": {"policy": ERRORLOGGER, "extra": 1}},
        "spec.extra: Extra inputs are not permitted",
        id="unknown-field",
    ),
    pytest.param(
        raw_profile(ERRORLOGGER + " " * 500_000),
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
    old = raw_profile(ERRORLOGGER)
    new = raw_profile(ERRORLOGGER + ") (typepermissive spc_t) (block x")
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


STATEMENT_PIECES = [
    INHERIT,
    "(allow process var_log_t (file (read)))",
    "(allow init_t shadow_t (file (read)))",
    "(typepermissive process)",
    "(type t)",
    "(typeattributeset domain (process))",
    "(",
    ")",
    '"',
    ";",
    "\r",
    "\n",
    " ",
    "x",
]


@given(st.lists(st.sampled_from(STATEMENT_PIECES), max_size=30).map("".join))
def test_any_policy_text_gets_an_answer(policy: str) -> None:
    decision = decide(raw_profile(policy))

    assert decision.code in (200, 403)
    assert decision.allowed == (decision.code == 200)
    if not decision.allowed:
        assert decision.message.startswith(("invalid policy: ", "policy must not be empty"))
        return
    for statement in cil.parse(policy):
        assert isinstance(statement, cil.Expr)
        assert isinstance(statement.items[0], cil.Atom)
        assert statement.items[0].text in {cil.ALLOW, cil.BLOCKINHERIT, cil.TYPE, cil.TYPEPERMISSIVE}
