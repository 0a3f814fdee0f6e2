"""`spo certs` subcommands."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from api import constants

# argparse's own usage errors exit with 2; input rejected by the handler uses the same code.
_USAGE_ERROR = 2


def register_cli(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    certs_parser = subparsers.add_parser(
        "certs",
        help="manage the operator's self-signed TLS certificates",
        description=(
            "Manage the private CA and the serving certificate the operator's webhook presents to the "
            "kube-apiserver, without cert-manager."
        ),
    )
    commands = certs_parser.add_subparsers(dest="certs_command", metavar="COMMAND", required=True)
    generate = commands.add_parser(
        "generate",
        help="create or renew a CA and a serving certificate in a directory",
        description=(
            f"Write {constants.CA_CERT_FILE}, {constants.CA_KEY_FILE}, {constants.TLS_CERT_FILE} and "
            f"{constants.TLS_KEY_FILE} into DIR. Existing "
            "files are kept while still valid; the serving certificate is reissued when missing, in the "
            "last third of its lifetime, signed by another CA, or naming other hosts than requested. "
            "At least one --dns or --ip is required."
        ),
    )
    generate.add_argument(
        "--out", type=Path, required=True, metavar="DIR", help="directory to write the files into"
    )
    generate.add_argument(
        "--dns",
        action="append",
        default=[],
        metavar="NAME",
        help="DNS name for the serving certificate, e.g. webhook.ns.svc (repeatable)",
    )
    generate.add_argument(
        "--ip",
        action="append",
        default=[],
        metavar="IP",
        help="IP address for the serving certificate, e.g. 127.0.0.1 (repeatable)",
    )
    generate.add_argument(
        "--days", type=int, default=365, metavar="N", help="serving certificate validity (default: 365)"
    )
    generate.set_defaults(func=_generate)


def _generate(args: argparse.Namespace) -> int:
    # Imported here: every `spo` command registers this parser, and cryptography costs ~15 MiB.
    from certs.files import ensure_serving_certificate

    out: Path = args.out
    try:
        ensure_serving_certificate(out, dns_names=args.dns, ip_addresses=args.ip, days=args.days)
    except ValueError as exc:
        return _fail(str(exc))
    except OSError as exc:
        return _fail(f"cannot write to {out}: {exc.strerror or exc}")
    for name in (
        constants.CA_CERT_FILE,
        constants.CA_KEY_FILE,
        constants.TLS_CERT_FILE,
        constants.TLS_KEY_FILE,
    ):
        print(out / name)
    return 0


def _fail(message: str) -> int:
    print(f"spo certs generate: error: {message}", file=sys.stderr)
    return _USAGE_ERROR
