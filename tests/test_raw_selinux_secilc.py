"""The RawSelinuxProfile corpus compiled by secilc, the way the node agent will install a raw policy.

Each policy goes into its profile's block, `(block <name> <policy>)`, next to the container template
(udica's base_container.cil, the `container` that `allowedSystemProfiles` names by default) and a
real base policy (Debian's reference policy). The accepted policies compile, so the allow-list does
not refuse what the docs show; every escape compiles too, so each refusal stops a policy secilc would
have installed, not a typo.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from agent.selinux import CONTAINER_SELINUX_SHIM, ToolError, udica_templates_dir, write_reference_base
from api.constants import SELINUX_POLICY_SUFFIX, UDICA_BASE_TEMPLATE
from tests.raw_selinux_corpus import ACCEPTED, ESCAPES, Escape, Policy

SECILC = shutil.which("secilc")
pytestmark = pytest.mark.skipif(SECILC is None, reason="secilc is not installed (hack/setup.sh installs it)")

ESCAPE_BLOCK = "escapetest"


def agent_file(block: str, policy: str) -> str:
    """The CIL file the node agent writes for a raw policy (upstream's shape, inventory §4.8)."""
    return f"(block {block}\n{policy}\n)\n"


def udica_template() -> Path:
    directory = udica_templates_dir()
    if directory is None:
        pytest.fail(f"the udica package has no {UDICA_BASE_TEMPLATE} (pip install -e . installs udica)")
    return directory / UDICA_BASE_TEMPLATE


def reference_base(directory: Path) -> Path:
    try:
        return write_reference_base(directory / f"base{SELINUX_POLICY_SUFFIX}")
    except ToolError as error:
        pytest.fail(f"{error} (hack/setup.sh installs them)")


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
