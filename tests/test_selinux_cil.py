"""SelinuxProfile and RawSelinuxProfile -> CIL (agent/cil.py): the docs' output, upstream's shape, and
validation before anything is written."""

from __future__ import annotations

import re
from typing import Any, Literal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.cil import (
    PolicyError,
    block_inherits,
    raw_selinux_profile_policy,
    selinux_profile_policy,
)
from api import cil
from api.constants import GROUP
from api.types import (
    ObjectMeta,
    PolicyRef,
    RawSelinuxProfile,
    RawSelinuxProfileSpec,
    SelinuxProfile,
    SelinuxProfileSpec,
)
from tests.docs_examples import DOCS, EXAMPLES, docs_objects

ALLOWED = ("container", "net_container")
HEADER = {"apiVersion": f"{GROUP}/{SelinuxProfile.VERSION}", "kind": SelinuxProfile.KIND}
# What udica's templates inherit themselves (agent.selinux.ContainerTemplates reads it from the files).
UDICA_INHERITS = {"container": (), "net_container": ("container",)}


def docs_cil(file_name: str) -> str:
    """The example output the docs show for `cat /etc/selinux.d/<file_name>`, as the file's bytes."""
    lines = DOCS.read_text().splitlines()
    start = lines.index(f"    $ cat /etc/selinux.d/{file_name}")
    body = lines[lines.index("    Example output", start) + 2 :]
    end = next(number for number, line in enumerate(body) if not line.strip())
    return "".join(line.removeprefix("    ") + "\n" for line in body[:end])


def docs_profile(name: str, *, with_allow: bool = True) -> SelinuxProfile:
    found = [
        o
        for o in docs_objects()
        if o["kind"] == "SelinuxProfile"
        and o["metadata"]["name"] == name
        and ("allow" in o["spec"]) == with_allow
    ]
    return SelinuxProfile.model_validate(found[0])


def profile(name: str, **spec: Any) -> SelinuxProfile:
    return SelinuxProfile.model_validate({**HEADER, "metadata": {"name": name}, "spec": spec})


# The docs' `cat /etc/selinux.d/nginx-secure.cil` output, committed so a bare clone tests against it too.
DOCS_NGINX_SECURE_CIL = EXAMPLES / "nginx-secure.cil"


@pytest.mark.skipif(
    not DOCS.is_file(), reason=f"{DOCS} is absent (a clone with nothing beside it): examples/ is the source"
)
def test_the_committed_cil_is_the_docs_output() -> None:
    expected = docs_cil("nginx-secure.cil")
    assert expected.startswith("(block nginx-secure\n")  # the docs' text was found
    assert DOCS_NGINX_SECURE_CIL.read_text() == expected


def test_docs_nginx_secure_is_the_docs_cil_byte_for_byte() -> None:
    expected = DOCS_NGINX_SECURE_CIL.read_text()

    policy = selinux_profile_policy(docs_profile("nginx-secure"), ALLOWED, {}, UDICA_INHERITS)

    assert policy.text == expected
    assert (policy.name, policy.templates, policy.ancestors) == ("nginx-secure", ("container",), ())


def test_types_and_classes_are_sorted_and_permissions_deduplicated() -> None:
    allow = {
        "zz_t": {"file": ["write", "read", "read"], "dir": ["search"]},
        "@self": {"unix_stream_socket": ["connectto"]},
        "aa_t": {"file": ["getattr"]},
    }

    text = selinux_profile_policy(profile("p", allow=allow), ALLOWED, {}).text

    assert text.splitlines()[2:] == [
        "(allow process p.process ( unix_stream_socket ( connectto )))",
        "(allow process aa_t ( file ( getattr )))",
        "(allow process zz_t ( dir ( search )))",
        "(allow process zz_t ( file ( read write )))",
        ")",
    ]


def test_docs_permissive_profile_adds_typepermissive_after_the_inherits() -> None:
    text = selinux_profile_policy(docs_profile("nginx-secure", with_allow=False), ALLOWED, {}).text

    assert text == "(block nginx-secure\n(blockinherit container)\n(typepermissive process)\n)\n"


def test_a_template_that_inherits_container_is_not_joined_by_a_second_container() -> None:
    spec = {"inherit": [{"name": "net_container"}]}

    known = selinux_profile_policy(profile("p", **spec), ALLOWED, {}, UDICA_INHERITS)
    unknown = selinux_profile_policy(profile("p", **spec), ALLOWED, {})

    assert known.text == "(block p\n(blockinherit net_container)\n)\n"
    # Without the template files, upstream's shape: its comment says templates need container added.
    assert unknown.text == "(block p\n(blockinherit container)\n(blockinherit net_container)\n)\n"
    assert known.templates == ("container", "net_container")


def test_an_inherit_listed_twice_is_inherited_once() -> None:
    twice = [{"name": "net_container"}, {"name": "net_container"}]
    parents = [{"kind": "SelinuxProfile", "name": "a"}, {"kind": "SelinuxProfile", "name": "a"}]

    system = selinux_profile_policy(profile("p", inherit=twice), ALLOWED, {}, UDICA_INHERITS)
    child = selinux_profile_policy(profile("p", inherit=parents), ALLOWED, {"a": profile("a")})

    assert system.text == "(block p\n(blockinherit net_container)\n)\n"
    assert child.text == "(block p\n(blockinherit a)\n)\n"


def test_a_selinux_profile_inherit_replaces_container_and_brings_its_templates() -> None:
    parent = profile("parent", inherit=[{"name": "net_container"}])
    middle = profile("middle", inherit=[{"kind": "SelinuxProfile", "name": "parent"}])
    child = profile("child", inherit=[{"kind": "SelinuxProfile", "name": "middle"}])
    profiles = {"parent": parent, "middle": middle}

    policy = selinux_profile_policy(child, ALLOWED, profiles, UDICA_INHERITS)

    assert policy.text == "(block child\n(blockinherit middle)\n)\n"
    assert policy.ancestors == ("parent", "middle")
    assert policy.templates == ("container", "net_container")


@pytest.mark.parametrize(
    ("inherit", "profiles", "message"),
    [
        (
            [{"name": "spc_container"}],
            {},
            "system profile spc_container not in SecurityProfilesOperatorDaemon's allow list",
        ),
        (
            [{"kind": "SelinuxProfile", "name": "gone"}],
            {},
            "couldn't find inherit reference SelinuxProfile/gone",
        ),
        (
            [{"kind": "SelinuxProfile", "name": "b"}],
            {"b": profile("b", inherit=[{"kind": "SelinuxProfile", "name": "a"}])},
            "inheritance cycle: a -> b -> a",
        ),
        (
            [{"kind": "SelinuxProfile", "name": "a"}],
            {},
            "inheritance cycle: a -> a",
        ),
    ],
)
def test_inherit_errors(
    inherit: list[dict[str, str]], profiles: dict[str, SelinuxProfile], message: str
) -> None:
    with pytest.raises(PolicyError, match=message):
        selinux_profile_policy(profile("a", inherit=inherit), ALLOWED, profiles)


@pytest.mark.parametrize(
    ("allow", "message"),
    [
        (
            {"shadow_t": {"file": ["read"]}},
            "invalid semantic rule for type shadow_t, class file: type shadow_t is denied",
        ),
        ({"kernel_t": {"system": ["module_request"]}}, "type kernel_t is denied"),
        ({"@self": {"capability": ["sys_admin"]}}, "class capability is denied"),
        ({"@self": {"capability2": ["mac_admin"]}}, "class capability2 is denied"),
        ({"security_t": {"security": ["load_policy"]}}, "type security_t is denied"),
        ({"container_file_t": {"file": ["read", "relabelto"]}}, "permission relabelto is denied"),
        ({"@self": {"dir": ["mounton"]}}, "permission mounton is denied"),
    ],
)
def test_deny_list(allow: dict[str, dict[str, list[str]]], message: str) -> None:
    with pytest.raises(PolicyError, match=message):
        selinux_profile_policy(profile("p", allow=allow), ALLOWED, {})


INJECTIONS = [
    "x)(allow process kernel_t (file (read)))",
    "x\n",
    "x y",
    "x;comment",
    '"x"',
    "../x",
    "x/y",
    "",
    "(x",
]


def constructed(
    name: str = "p",
    inherit: tuple[Literal["System", "SelinuxProfile"], str] = ("System", "container"),
    allow: dict[str, dict[str, list[str]]] | None = None,
) -> SelinuxProfile:
    """A profile built without the model's validators, as a stored object of an older CRD could be."""
    spec = SelinuxProfileSpec.model_construct(
        disabled=False,
        inherit=[PolicyRef.model_construct(kind=inherit[0], name=inherit[1])],
        permissive=False,
        allow=allow,
    )
    return SelinuxProfile.model_construct(
        api_version=HEADER["apiVersion"],
        kind=SelinuxProfile.KIND,
        metadata=ObjectMeta.model_construct(name=name),
        spec=spec,
    )


def injection_cases() -> list[tuple[str, SelinuxProfile]]:
    cases = []
    for bad in INJECTIONS:
        cases += [
            (f"name {bad!r}", constructed(name=bad)),
            (f"system inherit {bad!r}", constructed(inherit=("System", bad))),
            (f"profile inherit {bad!r}", constructed(inherit=("SelinuxProfile", bad))),
            (f"type {bad!r}", constructed(allow={bad: {"file": ["read"]}})),
            (f"class {bad!r}", constructed(allow={"@self": {bad: ["read"]}})),
            (f"permission {bad!r}", constructed(allow={"@self": {"file": [bad]}})),
        ]
    return cases


@pytest.mark.parametrize(("where", "bad"), injection_cases(), ids=[case[0] for case in injection_cases()])
def test_injection_in_any_identifier_is_rejected(where: str, bad: SelinuxProfile) -> None:
    # Every allowed name, so only the injected identifier can be the reason.
    allowed = [*ALLOWED, *INJECTIONS]
    profiles = {name: profile("q") for name in INJECTIONS}

    with pytest.raises(PolicyError):
        selinux_profile_policy(bad, allowed, profiles)


def test_the_models_reject_the_same_injections() -> None:
    for bad in INJECTIONS:
        with pytest.raises(ValueError):
            profile("p", allow={bad: {"file": ["read"]}})
        with pytest.raises(ValueError):
            profile("p", inherit=[{"name": bad}])


def test_a_dotted_profile_name_is_not_a_block_name() -> None:
    with pytest.raises(PolicyError, match=re.escape("'.', which a CIL block name cannot contain")):
        selinux_profile_policy(profile("nginx.secure"), ALLOWED, {})


def raw(name: str, policy: str) -> RawSelinuxProfile:
    return RawSelinuxProfile.model_validate(
        {**HEADER, "kind": RawSelinuxProfile.KIND, "metadata": {"name": name}, "spec": {"policy": policy}}
    )


def test_raw_policy_goes_into_a_block_named_after_the_profile() -> None:
    policy = raw_selinux_profile_policy(
        raw("my-raw", "(blockinherit net_container)\n(allow process my-raw.process (tcp_socket (listen)))\n"),
        ALLOWED,
    )

    # The block defines my-raw.process, the usage the status reports (upstream's my-raw_ does not).
    assert policy.text == (
        "(block my-raw\n"
        "    (blockinherit net_container)\n"
        "    (allow process my-raw.process (tcp_socket (listen)))\n"
        ")\n"
    )
    assert policy.templates == ("container", "net_container")


@pytest.mark.parametrize(
    ("policy", "message"),
    [
        ("(allow process kernel_t (file (read))))\n(typepermissive .init_t", "allows block escape"),
        ("(typeattributeset .domain (process))", "is not allowed"),
        ("(blockinherit spc_container)", "is not allowed"),
    ],
)
def test_raw_policy_is_checked_again_with_the_webhooks_allow_list(policy: str, message: str) -> None:
    with pytest.raises(PolicyError, match=message):
        raw_selinux_profile_policy(raw("r", policy), ALLOWED)


def test_raw_profile_name_with_an_injection_is_rejected() -> None:
    bad = RawSelinuxProfile.model_construct(
        api_version=HEADER["apiVersion"],
        kind=RawSelinuxProfile.KIND,
        metadata=ObjectMeta.model_construct(name="r\n(typepermissive .init_t)"),
        spec=RawSelinuxProfileSpec.model_construct(disabled=False, policy="(blockinherit container)"),
    )
    with pytest.raises(PolicyError, match="not a DNS-1123 subdomain"):
        raw_selinux_profile_policy(bad, ALLOWED)


def test_block_inherits_reads_top_level_statements() -> None:
    statements = cil.parse("(blockinherit a) (type t) (blockinherit b) (block c (blockinherit d))")

    assert block_inherits(statements) == ["a", "b"]


# Characters that mean something to CIL or to a path, mixed with plain identifier characters.
_TEXT = st.one_of(
    st.sampled_from(["a", "a-b", "a.b", "@self", "0"]),
    st.text(alphabet=st.sampled_from(list("ab.-_0@ ()\"';\n\r\t/\\")), max_size=8),
)


def _shape(node: cil.Node) -> object:
    """A parsed statement as nested lists of its symbols (strings become a marker that never matches)."""
    if isinstance(node, cil.Atom):
        return ("quoted", node.text) if node.quoted else node.text
    return [_shape(item) for item in node.items]


POSITIONS = ("name", "system", "parent", "label", "class_name", "permission")


@given(position=st.sampled_from(POSITIONS), text=_TEXT)
def test_no_identifier_adds_a_statement(position: str, text: str) -> None:
    """Whatever text lands in any one identifier, the output is refused or one block of upstream's shape."""
    ids = dict.fromkeys(POSITIONS, "a") | {"name": "p", "parent": "q", "label": "@self", position: text}
    allow = {ids["label"]: {ids["class_name"]: [ids["permission"]]}}
    candidates = [
        constructed(ids["name"], ("System", ids["system"]), allow),
        constructed(ids["name"], ("SelinuxProfile", ids["parent"])),
    ]
    target = f"{ids['name']}.process" if ids["label"] == "@self" else ids["label"]
    expected = [
        ["blockinherit", "container"],
        ["blockinherit", ids["system"]],
        ["blockinherit", ids["parent"]],
        ["allow", "process", target, [ids["class_name"], [ids["permission"]]]],
    ]
    for candidate in candidates:
        try:
            policy = selinux_profile_policy(candidate, [ids["system"]], {ids["parent"]: profile("q")}).text
        except PolicyError:
            continue
        (block,) = cil.parse(policy)
        shape = _shape(block)
        assert isinstance(shape, list)
        assert shape[:2] == ["block", ids["name"]]
        assert all(statement in expected for statement in shape[2:]), policy
