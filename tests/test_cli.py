"""The `spo` command explains itself, and components not built yet say so with exit code 2."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest

from spo.cli import log_level

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


@pytest.mark.parametrize(
    ("verbose", "environ", "level"),
    [
        (False, {}, logging.INFO),
        (True, {}, logging.DEBUG),
        (False, {"SPO_VERBOSITY": "0"}, logging.INFO),
        (False, {"SPO_VERBOSITY": "1"}, logging.DEBUG),
        (False, {"SPO_VERBOSITY": "x"}, logging.INFO),
    ],
)
def test_the_spods_verbosity_sets_the_log_level(verbose: bool, environ: dict[str, str], level: int) -> None:
    assert log_level(verbose, environ) == level
