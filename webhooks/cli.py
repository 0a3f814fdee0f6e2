"""`spo webhook`: serve the admission webhooks over HTTPS from list+watch caches."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from api import constants

# argparse's own usage errors exit with 2; unusable certificate files get the same code.
_USAGE_ERROR = 2
# Every interface, as upstream's controller-runtime server: the kube-apiserver reaches the pod IP
# through the webhook Service.
_ALL_INTERFACES = "0.0.0.0"  # noqa: S104


def register_cli(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "webhook",
        help="serve the admission webhooks (binding, recording, exec metadata, validation)",
        description=(
            f"Serve the mutating webhooks {constants.WEBHOOK_BINDING}, {constants.WEBHOOK_RECORDING}, "
            f"{constants.WEBHOOK_EXEC_METADATA} and {constants.WEBHOOK_NODE_DEBUGGING_POD} and the "
            f"validating webhooks {constants.WEBHOOK_RAW_SELINUX} and {constants.WEBHOOK_PROFILE_BINDING} "
            "over HTTPS, plus /healthz, /readyz and "
            "/metrics. Decisions are computed from list+watch caches of the operator's resources; /readyz "
            "answers 503 until they are synced. The certificate is reloaded when its files change. "
            "SIGTERM stops accepting connections, finishes in-flight requests and exits 0."
        ),
    )
    parser.add_argument(
        "--host",
        default=_ALL_INTERFACES,
        help=f"address to listen on, e.g. 127.0.0.1 (default: {_ALL_INTERFACES})",
    )
    parser.add_argument(
        "--port", type=int, default=constants.WEBHOOK_PORT, help=f"port (default: {constants.WEBHOOK_PORT})"
    )
    parser.add_argument(
        "--cert-dir",
        type=Path,
        default=Path(constants.WEBHOOK_CERT_DIR),
        metavar="DIR",
        help=(
            f"directory holding {constants.TLS_CERT_FILE} and {constants.TLS_KEY_FILE} "
            f"(default: {constants.WEBHOOK_CERT_DIR})"
        ),
    )
    parser.add_argument(
        "--kubeconfig",
        default=None,
        metavar="PATH",
        help="kubeconfig to reach the cluster (default: in-cluster configuration or $KUBECONFIG)",
    )
    parser.add_argument(
        "--namespace",
        default=os.environ.get(constants.ENV_OPERATOR_NAMESPACE, constants.DEFAULT_NAMESPACE),
        metavar="NS",
        help=(
            "namespace the operator runs in, where the spod object lives "
            f"(default: $OPERATOR_NAMESPACE or {constants.DEFAULT_NAMESPACE})"
        ),
    )
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    # Imported here so that other `spo` commands do not pay for FastAPI, uvicorn and the Kubernetes client.
    from webhooks.app import create_app
    from webhooks.cache import start_cached_snapshot
    from webhooks.server import serve, server_context

    cert_dir: Path = args.cert_dir
    cert_file, key_file = cert_dir / constants.TLS_CERT_FILE, cert_dir / constants.TLS_KEY_FILE
    # Checked before any watch starts, so a missing Secret mount fails fast with one line.
    missing = [str(path) for path in (cert_file, key_file) if not path.is_file()]
    if missing:
        return _fail(f"missing {' and '.join(missing)}")
    try:
        server_context(cert_file, key_file)
    except OSError as exc:  # ssl.SSLError included
        return _fail(f"cannot load {cert_file} / {key_file}: {exc}")
    snapshot, ready = start_cached_snapshot(args.kubeconfig, args.namespace)
    return serve(
        create_app(snapshot, ready), host=args.host, port=args.port, cert_file=cert_file, key_file=key_file
    )


def _fail(message: str) -> int:
    print(f"spo webhook: error: {message}", file=sys.stderr)
    return _USAGE_ERROR
