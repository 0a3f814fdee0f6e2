"""`spo agent --role`: which parts each role runs, and that every role is a choice of the real parser."""

from __future__ import annotations

import pytest

from agent.audit import Output
from agent.roles import ROLES
from api import constants
from spo.cli import build_parser


@pytest.mark.parametrize(
    ("role", "profiles", "outputs", "recorder"),
    [
        (constants.AGENT_ROLE_ALL, True, {Output.LOG_ENRICHER, Output.JSON_ENRICHER}, True),
        (constants.AGENT_ROLE_PROFILES, True, set(), False),
        (constants.AGENT_ROLE_LOG_ENRICHER, False, {Output.LOG_ENRICHER}, True),
        (constants.AGENT_ROLE_JSON_ENRICHER, False, {Output.JSON_ENRICHER}, False),
    ],
)
def test_role_parts(role: str, profiles: bool, outputs: set[Output], recorder: bool) -> None:
    parts = ROLES[role]
    assert (parts.profiles, set(parts.outputs), parts.recorder) == (profiles, outputs, recorder)


def test_every_part_is_run_by_exactly_one_role_besides_all() -> None:
    split = [parts for role, parts in ROLES.items() if role != constants.AGENT_ROLE_ALL]
    assert sum(parts.profiles for parts in split) == 1
    for output in Output:
        assert sum(output in parts.outputs for parts in split) == 1


@pytest.mark.parametrize("role", sorted(ROLES))
def test_the_parser_takes_every_role(role: str) -> None:
    args = build_parser().parse_args(["agent", "--node-name", "n", f"--role={role}"])
    assert args.role == role


def test_the_default_role_is_all_with_selinux() -> None:
    args = build_parser().parse_args(["agent", "--node-name", "n"])
    assert (args.role, args.selinux) == (constants.AGENT_ROLE_ALL, True)
