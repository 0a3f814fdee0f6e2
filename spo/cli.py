"""The `spo` command: one entry point for every component of the operator."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Mapping, Sequence

import agent.cli
import certs.cli
import manifests.cli
import reconciler.cli
import webhooks.cli
from api import constants
from spo import operator_image, up


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spo",
        description="Security Profiles Operator: seccomp and SELinux profiles as Kubernetes resources, "
        "bound to pods, recorded from workloads, and exec sessions audited.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at debug level")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    webhooks.cli.register_cli(subparsers)
    reconciler.cli.register_cli(subparsers)
    agent.cli.register_cli(subparsers)
    certs.cli.register_cli(subparsers)
    manifests.cli.register_cli(subparsers)
    up.register_cli(subparsers)
    operator_image.register_cli(subparsers)
    return parser


def log_level(verbose: bool, environ: Mapping[str, str]) -> int:
    """Debug with -v, or with the spod's `verbosity` 1 (docs 7.5.3), which the DaemonSet hands its
    containers in the environment; info otherwise (an unreadable value included)."""
    verbosity = environ.get(constants.ENV_VERBOSITY, "0")
    return logging.DEBUG if verbose or (verbosity.isdigit() and int(verbosity) >= 1) else logging.INFO


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=log_level(args.verbose, os.environ),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    exit_code: int = args.func(args)
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
