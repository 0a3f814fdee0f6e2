"""`spo agent`: the node agent, one per node (the spod DaemonSet in a cluster, a host process under
`spo up`). Every host path is a flag with the upstream default, so tests and `spo up` point it elsewhere."""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from pathlib import Path

from agent.agent import Agent, AgentConfig
from agent.handlers import SeccompHandler, seccomp_supported
from agent.server import serve
from api import constants
from api.kube import api_client

log = logging.getLogger(__name__)


def register_cli(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "agent",
        help="node agent: install seccomp profiles as node files, report node statuses",
        description=(
            "Watch SeccompProfiles and install each enabled one as "
            "<kubelet-dir>/seccomp/operator/<name>.json on this node (base profiles merged, the spod's "
            "allowedSyscalls enforced), keep this node's "
            "SecurityProfileNodeStatus objects and <node>-deleted finalizers, renew this node's heartbeat "
            f"Lease, and serve {constants.PATH_METRICS_SPOD}, {constants.PATH_METRICS} and "
            f"{constants.PATH_HEALTHZ}. SIGTERM stops it."
        ),
    )
    parser.add_argument("--node-name", required=True, help="the Kubernetes node this agent serves")
    parser.add_argument("--kubeconfig", default=None, help="kubeconfig (default: $KUBECONFIG, in-cluster)")
    parser.add_argument("--namespace", default=constants.DEFAULT_NAMESPACE, help="the operator's namespace")
    parser.add_argument("--kubelet-dir", type=Path, default=Path(constants.KUBELET_DIR))
    parser.add_argument(
        "--selinux-dir",
        type=Path,
        default=Path(constants.SELINUX_POLICY_DIR),
        help="where SELinux policies go (used by the SELinux handler)",
    )
    parser.add_argument("--proc", type=Path, default=Path(constants.PROC_DIR), help="the host's /proc")
    parser.add_argument("--host", default="0.0.0.0", help="address of the metrics and health server")  # noqa: S104
    parser.add_argument("--metrics-port", type=int, default=constants.SPOD_METRICS_PORT)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    proc: Path = args.proc
    handlers = [SeccompHandler(args.kubelet_dir, lambda: seccomp_supported(proc))]
    agent = Agent(api_client(args.kubeconfig), AgentConfig(args.node_name, args.namespace), handlers)
    server = serve(args.host, args.metrics_port, agent.metrics.registry, agent.ready)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    agent.start()
    log.info("agent for node %s started", args.node_name)
    stop.wait()
    server.shutdown()
    agent.stop()
    return 0
