"""`spo manifests` subcommands."""

from __future__ import annotations

import argparse
import sys

from api import nodepaths, validation
from manifests import DEFAULT_IMAGE, DEFAULT_NAMESPACE, render, to_yaml

# argparse's own usage errors exit with 2; a namespace the apiserver would refuse gets the same code.
_USAGE_ERROR = 2


def register_cli(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    manifests_parser = subparsers.add_parser(
        "manifests",
        help="print the objects that install the operator",
        description="Print the Kubernetes objects that install the operator (CRDs, RBAC, Deployments, ...).",
    )
    commands = manifests_parser.add_subparsers(dest="manifests_command", metavar="COMMAND", required=True)
    render_parser = commands.add_parser(
        "render",
        help="print the install manifests as multi-document YAML",
        description=(
            "Print the CRDs and the deployment objects as multi-document YAML, in apply order, e.g. "
            "`spo manifests render | kubectl apply --server-side -f -`. Without --cert-manager the "
            "reconciler creates the webhook's serving certificate Secret itself."
        ),
    )
    render_parser.add_argument(
        "--namespace",
        default=DEFAULT_NAMESPACE,
        metavar="NS",
        help=f"namespace to install the operator into (default: {DEFAULT_NAMESPACE})",
    )
    render_parser.add_argument(
        "--image", default=DEFAULT_IMAGE, metavar="IMG", help=f"operator image (default: {DEFAULT_IMAGE})"
    )
    render_parser.add_argument(
        "--cert-manager",
        action="store_true",
        help="add a self-signed cert-manager Issuer and Certificate for the webhook's serving Secret",
    )
    nodepaths.add_arguments(render_parser)
    render_parser.set_defaults(func=_render)


def _render(args: argparse.Namespace) -> int:
    try:
        validation.dns1123_label(args.namespace)
    except ValueError as exc:
        print(f"spo manifests render: error: --namespace: {exc}", file=sys.stderr)
        return _USAGE_ERROR
    objects = render(
        args.namespace,
        args.image,
        cert_manager=args.cert_manager,
        node_paths=nodepaths.from_arguments(args),
    )
    sys.stdout.write(to_yaml(objects))
    return 0
