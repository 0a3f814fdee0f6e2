"""The RawSelinuxProfile corpus compiled by secilc, the way the node agent will install a raw policy.

Each policy goes into its profile's block, `(block <name> <policy>)`, next to the container template
(udica's base_container.cil, the `container` that `allowedSystemProfiles` names by default) and a
real base policy (Debian's reference policy). The accepted policies compile, so the allow-list does
not refuse what the docs show; every escape compiles too, so each refusal stops a policy secilc would
have installed, not a typo.
"""

from __future__ import annotations

import bz2
import os
import shutil
import subprocess
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata
from pathlib import Path

import pytest

from tests.raw_selinux_corpus import ACCEPTED, ESCAPES, Escape, Policy

SECILC = shutil.which("secilc")
pytestmark = pytest.mark.skipif(SECILC is None, reason="secilc is not installed (hack/setup.sh installs it)")

# Debian's reference policy (package selinux-policy-default) and the .pp to CIL converter
# (policycoreutils): hack/setup.sh installs both with secilc.
REFPOLICY_BASE = Path("/usr/share/selinux/default/base.pp.bz2")
PP_TO_CIL = Path("/usr/libexec/selinux/hll/pp")
# Debian's refpolicy has no container module: these are the names of container-selinux that the udica
# template refers to, and its privileged container type spc_t.
CONTAINER_SELINUX_SHIM = """\
(typeattribute svirt_sandbox_domain)
(typeattribute container_domain)
(typeattribute sandbox_net_domain)
(type container_runtime_t)
(roletype system_r container_runtime_t)
(type spc_t)
(roletype system_r spc_t)
"""
TEMPLATE = "base_container.cil"
ESCAPE_BLOCK = "escapetest"


def agent_file(block: str, policy: str) -> str:
    """The CIL file the node agent writes for a raw policy (upstream's shape, inventory §4.8)."""
    return f"(block {block}\n{policy}\n)\n"


def udica_template() -> Path:
    files = metadata.distribution("udica").files or []
    found = [file.locate() for file in files if file.name == TEMPLATE]
    if not found:
        pytest.fail(f"the udica package has no {TEMPLATE} (pip install -e '.[test]' installs udica)")
    return Path(found[0])


def reference_base(directory: Path) -> Path:
    if not (REFPOLICY_BASE.exists() and PP_TO_CIL.exists()):
        pytest.fail(
            f"{REFPOLICY_BASE} or {PP_TO_CIL} is missing: install selinux-policy-default and "
            "policycoreutils (hack/setup.sh does)"
        )
    converted = subprocess.run(
        [PP_TO_CIL], input=bz2.decompress(REFPOLICY_BASE.read_bytes()), capture_output=True, check=True
    ).stdout.decode()
    # The login mappings name users of modules that are not in base; one default mapping replaces them.
    lines = [line for line in converted.splitlines() if not line.startswith("(selinuxuser")]
    base = directory / "base.cil"
    base.write_text("\n".join([*lines, "(selinuxuserdefault user_u ((s0) (s0)))", ""]))
    return base


def compile_all(directory: Path, policies: Mapping[str, tuple[str, str]]) -> dict[str, str | None]:
    """secilc's error for each named (block, policy), or None where it compiled."""
    shim = directory / "shim.cil"
    shim.write_text(CONTAINER_SELINUX_SHIM)
    common = [reference_base(directory), shim, udica_template()]

    def compile_one(name: str) -> str | None:
        source = directory / f"{name}.cil"
        source.write_text(agent_file(*policies[name]))
        # -N: udica's template itself breaks refpolicy's neverallow rules (proc_type files).
        result = subprocess.run(
            [str(SECILC), "-N", "-o", os.devnull, "-f", os.devnull, *map(str, common), str(source)],
            capture_output=True,
            text=True,
            check=False,
        )
        return None if result.returncode == 0 else f"rc={result.returncode}: {result.stderr.strip()}"

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        return dict(zip(policies, pool.map(compile_one, policies), strict=True))


TYPO = "typo-unknown-type"


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str | None]:
    policies = {f"accepted-{policy.id}": (policy.block, policy.text) for policy in ACCEPTED}
    policies |= {f"escape-{escape.id}": (ESCAPE_BLOCK, escape.text) for escape in ESCAPES}
    policies[TYPO] = (ESCAPE_BLOCK, "(blockinherit container)\n(allow process no_such_t (file (read)))")
    return compile_all(tmp_path_factory.mktemp("secilc"), policies)


@pytest.mark.parametrize("policy", ACCEPTED, ids=lambda policy: policy.id)
def test_accepted_policies_compile(compiled: dict[str, str | None], policy: Policy) -> None:
    assert compiled[f"accepted-{policy.id}"] is None


@pytest.mark.parametrize("escape", ESCAPES, ids=lambda escape: escape.id)
def test_every_refused_escape_would_have_compiled(compiled: dict[str, str | None], escape: Escape) -> None:
    assert compiled[f"escape-{escape.id}"] is None


def test_secilc_refuses_a_policy_with_a_typo(compiled: dict[str, str | None]) -> None:
    """The compile check can fail: an unknown type does not resolve."""
    error = compiled[TYPO]

    assert error is not None
    assert "Failed to resolve allow statement" in error
