"""The `spo` command explains itself, and components not built yet say so with exit code 2."""

from __future__ import annotations

import subprocess
import sys

import pytest

SPO = [sys.executable, "-m", "spo.cli"]
SUBCOMMANDS = ["webhook", "reconciler", "agent", "certs", "manifests", "up", "down", "status", "image"]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*SPO, *args], capture_output=True, text=True, timeout=60, check=False)


def test_top_level_help_lists_every_subcommand() -> None:
    result = _run("--help")
    assert result.returncode == 0
    for name in SUBCOMMANDS:
        assert name in result.stdout


@pytest.mark.parametrize(
    "args",
    [[name, "--help"] for name in SUBCOMMANDS]
    + [["certs", "generate", "--help"], ["manifests", "render", "--help"]]
    + [["image", command, "--help"] for command in ("build", "containerfile", "lock")],
)
def test_every_subcommand_has_help(args: list[str]) -> None:
    result = _run(*args)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: spo ")
    description = result.stdout.split("\n\n")[1]
    assert len(description.split()) >= 5, f"{args}: no description: {result.stdout}"


def test_missing_subcommand_is_a_usage_error() -> None:
    assert _run().returncode == 2
