"""`spo reconciler`: the leader-elected reconciler, with /healthz, /readyz and /metrics on one port."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
import threading
import uuid
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from kubernetes import client
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from api import constants
from api.kube import api_client
from reconciler import spod as spod_config
from reconciler.certificates_controller import CertificateReconciler
from reconciler.profiles_controller import ProfileControllers
from reconciler.runtime import LeaderElector, LeaseTiming, Manager
from reconciler.spod_controller import (
    Settings,
    SpodReconciler,
    ca_bundle_from_file,
    ca_bundle_from_secret,
)
from reconciler.uninstall import uninstall
from reconciler.webhook_config import Endpoint

log = logging.getLogger(__name__)


def register_cli(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "reconciler",
        help="keep the spod DaemonSet, webhook configurations and statuses in line with the spod",
        description="The reconciler: controllers on list+watch caches, active only on the replica that "
        "holds the leader Lease. Serves /healthz, /readyz (true once the caches synced) and /metrics.",
    )
    parser.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG, else in-cluster)")
    parser.add_argument(
        "--namespace",
        default=os.environ.get(constants.ENV_OPERATOR_NAMESPACE, constants.DEFAULT_NAMESPACE),
        help="the operator namespace (default: $OPERATOR_NAMESPACE or %(default)s)",
    )
    parser.add_argument(
        "--webhook-url",
        help="register the webhooks by this https URL base (local mode) instead of the in-cluster Service",
    )
    parser.add_argument(
        "--ca-file",
        help="PEM CA certificate for the webhook configurations' caBundle (default: ca.crt of the "
        f"{constants.WEBHOOK_CERT_SECRET} Secret)",
    )
    parser.add_argument(
        "--cert-manager",
        action="store_true",
        help="cert-manager issues the webhook's Secret: manage no certificates (without it, --ca-file and "
        f"--webhook-url, the reconciler keeps the {constants.WEBHOOK_CERT_SECRET} and "
        f"{constants.WEBHOOK_CA_SECRET} Secrets)",
    )
    parser.add_argument(
        "--leader-elect",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="act only while holding the leader Lease, so several replicas are safe",
    )
    parser.add_argument(
        "--manage-daemonset",
        "--daemonset",
        dest="manage_daemonset",
        action="store_true",
        default=True,
        help="render and keep the spod DaemonSet (default)",
    )
    parser.add_argument(
        "--no-daemonset",
        dest="manage_daemonset",
        action="store_false",
        help="the agents run as host processes (spo up): manage no DaemonSet",
    )
    parser.add_argument(
        "--lease-duration",
        type=float,
        default=LeaseTiming().lease_duration,
        help="seconds a standby waits on an unrenewed lease before taking over (default %(default)s)",
    )
    parser.add_argument("--health-host", default="0.0.0.0", help="address of the health/metrics server")  # noqa: S104
    parser.add_argument(
        "--health-port", type=int, default=constants.HEALTH_PORT, help="port of /healthz, /readyz, /metrics"
    )
    parser.set_defaults(func=run)

    uninstall_parser = subparsers.add_parser(
        "uninstall",
        help="remove the operator: webhook configurations first, then the profiles (and their node "
        "files), the spod, every installed object; the CRDs with --crds",
        description="Remove the operator (docs 7.11) so that pod creation never waits on a webhook that "
        "is gone: the reconciler and the webhook configurations first, then every profile, whose files "
        "each node's agent removes, then the spod DaemonSet, the spod and every object `spo manifests "
        "render` installs, the namespace last. Custom resources and their CRDs stay unless --crds.",
    )
    uninstall_parser.add_argument(
        "--kubeconfig", help="kubeconfig file (default: $KUBECONFIG, else in-cluster)"
    )
    uninstall_parser.add_argument(
        "--namespace",
        default=os.environ.get(constants.ENV_OPERATOR_NAMESPACE, constants.DEFAULT_NAMESPACE),
        help="the operator namespace (default: $OPERATOR_NAMESPACE or %(default)s)",
    )
    uninstall_parser.add_argument(
        "--crds", action="store_true", help="also delete the CRDs, and with them every custom resource left"
    )
    uninstall_parser.add_argument(
        "--wait",
        type=float,
        default=120.0,
        metavar="SECONDS",
        help="how long the agents get to remove their profile files (default: %(default)s)",
    )
    uninstall_parser.set_defaults(func=_uninstall)


def _uninstall(args: argparse.Namespace) -> int:
    done = uninstall(
        api_client(args.kubeconfig),
        args.namespace,
        crds=args.crds,
        wait_seconds=args.wait,
        progress=lambda line: print(line, flush=True),
    )
    print(f"deleted: {', '.join(done.deleted) or 'nothing of the install was left'}")
    if done.unconfirmed_nodes:
        print(
            "the agents of these nodes did not remove their profile files in time (they may remain under "
            f"the kubelet's seccomp directory): {', '.join(done.unconfirmed_nodes)}",
            file=sys.stderr,
        )
        return 1
    return 0


def _handler(ready: Callable[[], bool], metrics: Callable[[], bytes]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == constants.PATH_HEALTHZ:
                self._send(HTTPStatus.OK, b"ok", "text/plain")
            elif self.path == constants.PATH_READYZ:
                ok = ready()
                self._send(
                    HTTPStatus.OK if ok else HTTPStatus.SERVICE_UNAVAILABLE,
                    b"ok" if ok else b"caches not synced",
                    "text/plain",
                )
            elif self.path == constants.METRICS_PATHS[0]:
                self._send(HTTPStatus.OK, metrics(), CONTENT_TYPE_LATEST)
            else:
                self._send(HTTPStatus.NOT_FOUND, b"not found", "text/plain")

        def _send(self, status: HTTPStatus, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            log.debug(format, *args)

    return Handler


def build_manager(args: argparse.Namespace) -> Manager:
    api = api_client(args.kubeconfig)
    endpoint = (
        Endpoint(url=args.webhook_url) if args.webhook_url else Endpoint(service_namespace=args.namespace)
    )
    settings = Settings(
        namespace=args.namespace,
        endpoint=endpoint,
        ca_bundle=ca_bundle_from_file(args.ca_file)
        if args.ca_file
        else ca_bundle_from_secret(api, args.namespace),
        manage_daemonset=args.manage_daemonset,
        images=spod_config.Images(
            operator=os.environ.get(constants.ENV_OPERATOR_IMAGE, constants.DEFAULT_IMAGE),
            selinuxd=os.environ.get(constants.ENV_SELINUXD_IMAGE, constants.DEFAULT_SELINUXD_IMAGE),
        ),
    )
    elector = None
    if args.leader_elect:
        identity = f"{socket.gethostname()}_{os.getpid()}_{uuid.uuid4().hex[:6]}"
        duration = args.lease_duration
        # client-go's proportions (15 s / 10 s / 2 s) at any lease duration.
        timing = LeaseTiming(duration, duration * 2 / 3, duration * 2 / 15)
        elector = LeaderElector(api, args.namespace, identity, timing)
    manager = Manager(elector=elector)
    # The certificates are ours only in a cluster: with --webhook-url the webhook runs outside it and
    # reads its own files, whose CA comes with --ca-file (or from the Secret's ca.crt, kept by others).
    certificates = not (args.ca_file or args.cert_manager or args.webhook_url)
    register_controllers(manager, api, settings, certificates=certificates)
    return manager


def register_controllers(
    manager: Manager, api: client.ApiClient, settings: Settings, *, certificates: bool = False
) -> None:
    """THE place where every controller the reconciler runs is registered, with the caches it reads.

    To add one (profile status, active workloads, recording merge, default objects): build its caches
    with ``manager.cache(ResourceCache(...))`` (a cache shared by two controllers is registered once),
    then ``manager.add(Controller(...))``; the guide is the docstring of reconciler/runtime.py.
    ``settings`` carries the operator namespace and the command-line choices; ``certificates``: keep
    the webhook's certificates (not when cert-manager or a CA file provides them)."""
    spods = SpodReconciler(api, settings)
    for cache in spods.caches():
        manager.cache(cache)
    spod_controller = manager.add(spods.controller())
    if certificates:
        # A new CA bundle: the spod controller re-applies the configurations (caBundle from the Secret).
        CertificateReconciler(
            api, settings.namespace, on_bundle_change=lambda: spod_controller.enqueue(spods.key)
        ).register(manager)
    profiles = ProfileControllers(api, settings.namespace)
    for cache in profiles.caches():
        manager.cache(cache)
    for controller in profiles.controllers():
        manager.add(controller)


def run(args: argparse.Namespace) -> int:
    manager = build_manager(args)
    server = ThreadingHTTPServer(
        (args.health_host, args.health_port),
        _handler(manager.ready, lambda: generate_latest(manager.registry)),
    )
    threading.Thread(target=server.serve_forever, name="health", daemon=True).start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    manager.start()
    log.info(
        "reconciler started (namespace %s, health on %s:%d)",
        args.namespace,
        args.health_host,
        args.health_port,
    )
    stop.wait()
    log.info("stopping")
    manager.stop()
    server.shutdown()
    return 0
