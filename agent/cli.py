"""`spo agent`: the node agent, one per node (a host process under `spo up`; in a cluster the spod
DaemonSet, one container per `--role`, agent/roles.py). Every host path is a flag with the upstream
default, so tests and `spo up` point it elsewhere."""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kubernetes import client
from prometheus_client import CollectorRegistry

from agent.agent import Agent, AgentConfig, SpodWatch
from agent.attribution import ContainerIndex, pod_selectors, watch_node_pods
from agent.audit import AuditMetrics, AuditPipeline, Dispatch, Output, audit_log_path, stdout_lines
from agent.auditsource import FileSource, KmsgSource
from agent.handlers import KindHandler, PolicyFiles, SeccompHandler, SelinuxHandler, seccomp_supported
from agent.lineage import ForkWatch
from agent.recorder import Recorder
from agent.roles import ROLES, Parts
from agent.selinux import (
    SELINUX_MODE_COMPILE_ONLY,
    SELINUX_MODE_SEMODULE,
    SELINUX_MODES,
    open_store,
    selinux_enabled,
)
from agent.server import serve
from api import constants, kinds
from api.kinds import RAW_SELINUX_PROFILE, SELINUX_PROFILE
from api.kube import ResourceCache, api_client
from api.types import KubernetesObject

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
            f"{constants.PATH_HEALTHZ}. --role runs one part of this (the spod DaemonSet runs one "
            "container per part). SIGTERM stops it."
        ),
    )
    parser.add_argument("--node-name", required=True, help="the Kubernetes node this agent serves")
    parser.add_argument(
        "--role",
        choices=tuple(ROLES),
        default=constants.AGENT_ROLE_ALL,
        help=f"{constants.AGENT_ROLE_PROFILES}: profile files, node statuses, heartbeat; "
        f"{constants.AGENT_ROLE_LOG_ENRICHER}: the log enricher's lines, audit counters and recording; "
        f"{constants.AGENT_ROLE_JSON_ENRICHER}: the JSON enricher's records; "
        f"{constants.AGENT_ROLE_ALL} (default): all of them",
    )
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
        "--selinux",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="install SelinuxProfiles and RawSelinuxProfiles (--no-selinux: leave them to no one, as "
        "the spod DaemonSet does without enableSelinux)",
    )
    parser.add_argument(
        "--selinux-mode",
        choices=SELINUX_MODES,
        default=SELINUX_MODE_SEMODULE if selinux_enabled() else SELINUX_MODE_COMPILE_ONLY,
        help="load policies with semodule (default where SELinux is enabled) or only compile them",
    )
    parser.add_argument("--proc", type=Path, default=Path(constants.PROC_DIR), help="the host's /proc")
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=Path(constants.AGENT_RECORDINGS_DIR),
        help="where the recorder keeps what it recorded of running pods (kept across restarts)",
    )
    parser.add_argument(
        "--audit-log",
        type=Path,
        default=Path(constants.AUDIT_LOG_PATH),
        help="the audit log the log and JSON enrichers follow (syslog when it does not exist at start)",
    )
    parser.add_argument(
        "--kernel-log",
        action="store_true",
        help=f"read the audit lines from the kernel's log ({constants.KMSG_PATH}) instead of --audit-log, on "
        "hosts without auditd; lossy: the kernel rate-limits them there and drops what a reader misses",
    )
    parser.add_argument("--host", default="0.0.0.0", help="address of the metrics and health server")  # noqa: S104
    parser.add_argument("--metrics-port", type=int, default=constants.SPOD_METRICS_PORT)
    parser.add_argument(
        "--metrics-from",
        action="append",
        default=[],
        metavar="URL",
        help=f"also serve on {constants.PATH_METRICS_SPOD} the families of the agent process at URL "
        "(the spod pod's log enricher, for the metrics Service); repeatable",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    parts = ROLES[args.role]
    api = api_client(args.kubeconfig)
    registry = CollectorRegistry()
    spod = SpodWatch(api, args.namespace)
    # Healthy once every part has started, and while each says it is.
    started = threading.Event()
    checks: list[Callable[[], bool]] = [spod.cache.has_synced]
    server = serve(
        args.host,
        args.metrics_port,
        registry,
        lambda: started.is_set() and all(check() for check in checks),
        also=args.metrics_from,
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    with contextlib.ExitStack() as running:
        running.callback(server.shutdown)
        running.callback(spod.cache.stop)
        spod.start()
        if parts.profiles:
            agent = _start_profiles(api, spod, registry, args, running)
            checks.append(agent.ready)
        if parts.outputs:
            checks.append(_start_audit(api, spod, registry, args, parts=parts, running=running))
        started.set()
        log.info("agent (%s) for node %s started", args.role, args.node_name)
        stop.wait()
    return 0


def _start_profiles(
    api: client.ApiClient,
    spod: SpodWatch,
    registry: CollectorRegistry,
    args: argparse.Namespace,
    running: contextlib.ExitStack,
) -> Agent:
    """Profile files, node statuses and finalizers, heartbeat; stopped with `running`."""
    proc: Path = args.proc
    handlers: list[KindHandler] = [SeccompHandler(args.kubelet_dir, lambda: seccomp_supported(proc))]
    if args.selinux:
        # What compile-only compiles every policy with (the converted base policy) is kept here.
        work_dir = Path(running.enter_context(tempfile.TemporaryDirectory(prefix="spo-agent-selinux-")))
        # Both SELinux kinds keep their policies in one directory.
        policies = PolicyFiles(open_store(args.selinux_mode, args.selinux_dir, work_dir))
        handlers += [SelinuxHandler(SELINUX_PROFILE, policies), SelinuxHandler(RAW_SELINUX_PROFILE, policies)]
    agent = Agent(api, AgentConfig(args.node_name, args.namespace), handlers, spod, registry)
    running.callback(agent.stop)
    agent.start()
    return agent


def _start_audit(
    api: client.ApiClient,
    spod: SpodWatch,
    registry: CollectorRegistry,
    args: argparse.Namespace,
    *,
    parts: Parts,
    running: contextlib.ExitStack,
) -> Callable[[], bool]:
    """The audit pipeline with the outputs of `parts`, and the watch of this node's pods it attributes
    lines to; stopped with `running`. Returns whether its watches have synced. Memory optimisation is
    read once: a spod change restarts the agent (the DaemonSet rolls)."""
    index = ContainerIndex()
    audit_log = audit_log_path(args.audit_log)
    memory_optimization = bool(spod.spec().enable_memory_optimization)
    recorder = Recorder(api, args.node_name, args.state_dir, registry=registry) if parts.recorder else None
    metrics = AuditMetrics(registry, audit_counters=Output.LOG_ENRICHER in parts.outputs)
    dispatch = Dispatch(args.node_name, args.proc, recorder, metrics, stdout_lines(), allowed=parts.outputs)
    forks = ForkWatch()
    pipeline = AuditPipeline(
        (lambda idle: KmsgSource(on_idle=idle))
        if args.kernel_log
        else (lambda idle: FileSource(audit_log, on_idle=idle)),
        dispatch,
        index,
        spod.spec,
        args.proc,
        parent_of=forks.parent,
    )
    caches: list[ResourceCache[Any]] = [
        watch_node_pods(api, args.node_name, memory_optimization, index, pipeline.new_containers)
    ]
    if recorder is not None:
        recorder.start()
        running.callback(recorder.stop)
        caches.append(_recorded_pods(api, args.node_name, memory_optimization, recorder))
    forks.start()
    running.callback(forks.stop)
    for cache in caches:
        cache.start()
        running.callback(cache.stop)
    pipeline.start()
    running.callback(pipeline.stop)
    log.info(
        "following %s for the %s",
        constants.KMSG_PATH if args.kernel_log else audit_log,
        ", ".join(sorted(o.name for o in parts.outputs)),
    )
    return lambda: all(cache.has_synced() for cache in caches)


def _recorded_pods(
    api: client.ApiClient, node_name: str, memory_optimization: bool, recorder: Recorder
) -> ResourceCache[KubernetesObject]:
    """This node's pods as the recorder needs them (annotations, containers, phase), not started."""
    fields, labels = pod_selectors(node_name, memory_optimization)
    cache = ResourceCache(api, kinds.POD, KubernetesObject, label_selector=labels, field_selector=fields)

    def changed(pod: KubernetesObject) -> None:
        body = pod.model_dump(by_alias=True, exclude_none=True)
        if cache.get(pod.metadata.name or "", pod.metadata.namespace or "") is None:
            recorder.pod_deleted(body)
        else:
            recorder.observe_pod(body)

    cache.add_event_handler(changed)
    return cache
