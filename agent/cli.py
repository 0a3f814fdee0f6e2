"""`spo agent`: the node agent, one per node (the spod DaemonSet in a cluster, a host process under
`spo up`). Every host path is a flag with the upstream default, so tests and `spo up` point it elsewhere."""

from __future__ import annotations

import argparse
import logging
import signal
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

from kubernetes import client

from agent.agent import Agent, AgentConfig
from agent.attribution import ContainerIndex, watch_node_pods
from agent.audit import AuditMetrics, AuditPipeline, Dispatch, audit_log_path, stdout_lines
from agent.auditsource import FileSource
from agent.handlers import KindHandler, PolicyFiles, SeccompHandler, SelinuxHandler, seccomp_supported
from agent.lineage import ForkWatch
from agent.selinux import (
    SELINUX_MODE_COMPILE_ONLY,
    SELINUX_MODE_SEMODULE,
    SELINUX_MODES,
    open_store,
    selinux_enabled,
)
from agent.server import serve
from api import constants
from api.kinds import RAW_SELINUX_PROFILE, SELINUX_PROFILE
from api.kube import api_client

log = logging.getLogger(__name__)


def register_cli(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "agent",
        help="node agent: install seccomp and SELinux profiles on the node, report node statuses",
        description=(
            "Watch SeccompProfiles and install each enabled one as "
            "<kubelet-dir>/seccomp/operator/<name>.json on this node (base profiles merged, the spod's "
            "allowedSyscalls enforced); watch SelinuxProfiles and RawSelinuxProfiles and install each "
            "as <selinux-dir>/<name>.cil, loaded with semodule or, where SELinux is not enabled, only "
            "compiled with secilc (--selinux-mode); keep this node's "
            "SecurityProfileNodeStatus objects and <node>-deleted finalizers, renew this node's heartbeat "
            "Lease; follow the audit log (--audit-log) and, as the spod enables them, print the log "
            "enricher's lines and the JSON enricher's records for this node's containers; "
            f"serve {constants.PATH_METRICS_SPOD}, {constants.PATH_METRICS} and "
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
        help="where SELinux policies go",
    )
    parser.add_argument(
        "--selinux-mode",
        choices=SELINUX_MODES,
        default=SELINUX_MODE_SEMODULE if selinux_enabled() else SELINUX_MODE_COMPILE_ONLY,
        help="load policies with semodule (default where SELinux is enabled) or only compile them",
    )
    parser.add_argument("--proc", type=Path, default=Path(constants.PROC_DIR), help="the host's /proc")
    parser.add_argument(
        "--audit-log",
        type=Path,
        default=Path(constants.AUDIT_LOG_PATH),
        help="the audit log the log and JSON enrichers follow (syslog when it does not exist at start)",
    )
    parser.add_argument("--host", default="0.0.0.0", help="address of the metrics and health server")  # noqa: S104
    parser.add_argument("--metrics-port", type=int, default=constants.SPOD_METRICS_PORT)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="spo-agent-selinux-") as work_dir:
        return _run(args, Path(work_dir))


def _run(args: argparse.Namespace, selinux_work_dir: Path) -> int:
    """`selinux_work_dir` keeps what compile-only compiles every policy with (the converted base policy)."""
    proc: Path = args.proc
    # Both SELinux kinds keep their policies in one directory.
    policies = PolicyFiles(open_store(args.selinux_mode, args.selinux_dir, selinux_work_dir))
    handlers: list[KindHandler] = [
        SeccompHandler(args.kubelet_dir, lambda: seccomp_supported(proc)),
        SelinuxHandler(SELINUX_PROFILE, policies),
        SelinuxHandler(RAW_SELINUX_PROFILE, policies),
    ]
    api = api_client(args.kubeconfig)
    agent = Agent(api, AgentConfig(args.node_name, args.namespace), handlers)
    server = serve(args.host, args.metrics_port, agent.metrics.registry, agent.ready)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    agent.start()
    stop_audit = _start_audit(api, agent, args)
    log.info("agent for node %s started", args.node_name)
    stop.wait()
    server.shutdown()
    stop_audit()
    agent.stop()
    return 0


def _start_audit(api: client.ApiClient, agent: Agent, args: argparse.Namespace) -> Callable[[], None]:
    """The audit pipeline and the watch of this node's pods it attributes lines to; returns its stop.
    Memory optimisation is read once: a spod change restarts the agent (the DaemonSet rolls)."""
    index = ContainerIndex()
    audit_log = audit_log_path(args.audit_log)
    dispatch = Dispatch(args.node_name, args.proc, None, AuditMetrics(agent.metrics.registry), stdout_lines())
    forks = ForkWatch()
    forks.start()
    pipeline = AuditPipeline(
        lambda idle: FileSource(audit_log, on_idle=idle),
        dispatch,
        index,
        agent.spod_spec,
        args.proc,
        parent_of=forks.parent,
    )
    memory_optimization = bool(agent.spod_spec().enable_memory_optimization)
    pods = watch_node_pods(api, args.node_name, memory_optimization, index, pipeline.new_containers)
    pods.start()
    pipeline.start()
    log.info("following %s for the enrichers", audit_log)

    def stop() -> None:
        pipeline.stop()
        pods.stop()
        forks.stop()

    return stop
