"""The runtime packages import only runtime dependencies: test tools stay in the `test` extra."""

import ast
import tomllib
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
RUNTIME_PACKAGES = ["api", "webhooks", "reconciler", "agent", "certs", "manifests", "spo"]
TEST_ONLY = {"httpx", "pytest", "hypothesis"}


def _imported_top_levels(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name.partition(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.partition(".")[0])
    return names


def _requirement_names(requirements: list[str]) -> set[str]:
    return {r.partition(">")[0].partition("[")[0].partition("<")[0].strip().lower() for r in requirements}


def test_runtime_code_does_not_import_test_tools() -> None:
    offenders = {
        f"{path.relative_to(REPO_ROOT)}: {sorted(found)}"
        for package in RUNTIME_PACKAGES
        for path in (REPO_ROOT / package).rglob("*.py")
        if (found := _imported_top_levels(path) & TEST_ONLY)
    }
    assert not offenders


def test_test_tools_are_only_in_the_test_extra() -> None:
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    runtime = _requirement_names(project["dependencies"])
    assert not runtime & TEST_ONLY
    assert _requirement_names(project["optional-dependencies"]["test"]) >= TEST_ONLY
