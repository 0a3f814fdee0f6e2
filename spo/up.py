"""`spo up`, `spo down`, `spo status`: the local default a newcomer runs.

`spo up` starts etcd and kube-apiserver on loopback, installs the CRDs and the operator namespace,
and starts the operator components that exist (spo/bringup.py): the webhook, and the reconciler,
which creates the default spod and registers the webhook by URL. What it started is recorded in
<state>/processes.json so `spo down` stops exactly that. This module stays light: every `spo` command
imports it to register its parsers.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from api import constants
from spo.processes import RecordedProcess, start_time, stop_process

PROCESS_FILE = "processes.json"


def default_state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "spo"


def record(state_dir: Path, processes: dict[str, int], extra: dict[str, Any]) -> None:
    recorded = [{"name": n, "pid": p, "start_time": start_time(p)} for n, p in processes.items()]
    (state_dir / PROCESS_FILE).write_text(json.dumps({"processes": recorded, **extra}, indent=2))


def _recorded(state_dir: Path) -> tuple[list[RecordedProcess], dict[str, Any]]:
    try:
        data = json.loads((state_dir / PROCESS_FILE).read_text())
    except (OSError, ValueError):
        return [], {}
    processes = [RecordedProcess(p["name"], int(p["pid"]), str(p["start_time"])) for p in data["processes"]]
    return processes, data


def stop_recorded(state_dir: Path) -> list[str]:
    """Stop what `spo up` recorded and return the names that still ran: the node first, torn down to
    nothing even when its processes crashed, then the rest in reverse start order."""
    processes, data = _recorded(state_dir)
    running = {p.name: p.pid for p in processes if p.running()}
    if data.get("node_binaries"):
        # Imported here: `spo status` and the parsers need none of the node's machinery.
        from spo.node import NODE_PROCESSES, teardown
        from spo.nodeconfig import NodePaths

        node_running = {name: pid for name, pid in running.items() if name in NODE_PROCESSES}
        teardown(NodePaths(state_dir / "node"), Path(data["node_binaries"]), node_running)
    for process in reversed(processes):
        if process.running():
            stop_process(process.pid)
    (state_dir / PROCESS_FILE).unlink(missing_ok=True)
    return [p.name for p in processes if p.name in running]


def _up(args: argparse.Namespace) -> int:
    state_dir: Path = args.state_dir
    recorded = _recorded(state_dir)[0]
    running = [p.name for p in recorded if p.running()]
    if recorded and len(running) == len(recorded):
        print(
            f"already running under {state_dir}: {', '.join(running)} (use `spo down` first)", file=sys.stderr
        )
        return 1
    if recorded:
        # A crash or a kill of some part: what is left is stopped and its state cleaned, then a fresh start.
        print(f"cleaning up after an earlier run that lost {len(recorded) - len(running)} process(es)")
        stop_recorded(state_dir)
    if args.in_cluster and args.no_node:
        print(
            "--in-cluster runs the operator's pods on the node: it cannot go with --no-node", file=sys.stderr
        )
        return 2
    # Imported here: the control plane, Kubernetes client and PKI are only needed by `spo up`.
    from kubernetes.client.exceptions import ApiException

    from spo.bringup import bring_up
    from spo.localcluster import ControlPlaneError

    try:
        cluster, node_facts = bring_up(
            state_dir,
            args.namespace,
            args.webhook_port,
            with_node=not args.no_node,
            in_cluster=args.in_cluster,
        )
    except (ControlPlaneError, ApiException, OSError) as error:
        print(f"spo up failed: {error}", file=sys.stderr)
        return 1
    record(
        state_dir,
        {name: p.pid for name, p in cluster.processes.items()},
        {
            "kubeconfig": str(cluster.kubeconfig),
            "server": cluster.url,
            "namespace": args.namespace,
            **node_facts,
        },
    )
    print(
        "\nThe local cluster is ready.\n"
        f"  export KUBECONFIG={cluster.kubeconfig}\n"
        "  kubectl get sp\n"
        + (
            f"Node {node_facts['node']} runs pods; Localhost seccomp profiles `operator/<name>.json` "
            f"are read from {node_facts['seccomp_dir']}\n"
            if node_facts
            else "No node (--no-node): pods stay Pending.\n"
        )
        + (
            f"The operator runs in the cluster: kubectl -n {args.namespace} get pods\n"
            if args.in_cluster
            else ""
        )
        + f"Logs (apiserver audit log included): {state_dir / 'logs'}\n"
        "Stop it with `spo down`" + ("." if args.detach else " or Ctrl-C."),
        flush=True,
    )
    if args.detach:
        return 0
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    while not stop.is_set() and all(p.poll() is None for p in cluster.processes.values()):
        stop.wait(1.0)
    exited = [name for name, p in cluster.processes.items() if p.poll() is not None]
    stop_recorded(state_dir)
    if exited:
        print(f"stopped everything: {', '.join(exited)} exited; see {state_dir / 'logs'}", file=sys.stderr)
        return 1
    print("stopped everything.")
    return 0


def _down(args: argparse.Namespace) -> int:
    stopped = stop_recorded(args.state_dir)
    print(f"stopped: {', '.join(stopped)}" if stopped else f"nothing of ours runs under {args.state_dir}")
    return 0


def _status(args: argparse.Namespace) -> int:
    processes, data = _recorded(args.state_dir)
    if not processes:
        print(f"nothing started under {args.state_dir}")
        return 1
    for process in processes:
        print(f"{process.name:24} pid {process.pid:<8} {'running' if process.running() else 'NOT running'}")
    print(f"server     {data.get('server')}\nkubeconfig {data.get('kubeconfig')}")
    if data.get("node"):
        print(f"node       {data['node']} {_node_condition(data)}\nseccomp    {data.get('seccomp_dir')}")
    return 0 if all(p.running() for p in processes) else 1


def _node_condition(data: dict[str, Any]) -> str:
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    from api.kube import api_client
    from spo.node import node_ready

    try:
        return "Ready" if node_ready(api_client(str(data["kubeconfig"])), str(data["node"])) else "NotReady"
    except (ApiException, HTTPError, OSError) as error:
        return f"unknown ({error.__class__.__name__})"


def register_cli(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    state = argparse.ArgumentParser(add_help=False)
    state.add_argument(
        "--state-dir", type=Path, default=default_state_dir(),
        help="where the cluster's data, PKI, kubeconfig and logs live (default: %(default)s)",
    )  # fmt: skip
    parser = subparsers.add_parser(
        "up",
        parents=[state],
        help="start a local single-node cluster with the operator on it",
        description="Build the Kubernetes binaries, etcd and containerd if needed; start etcd, "
        "kube-apiserver, kube-controller-manager and kube-scheduler on 127.0.0.1 and a real node "
        "(containerd, runc, a CNI bridge, a kubelet; one per machine, root needed); install the CRDs, "
        "start the webhook and register it, then print how to use the cluster with kubectl.",
    )
    parser.add_argument("--detach", action="store_true", help="return once ready and leave it running")
    parser.add_argument(
        "--no-node", action="store_true",
        help="the control plane alone: no kubelet, containerd, scheduler or controller-manager; pods stay "
        "Pending (no root needed, and several such clusters may run side by side)",
    )  # fmt: skip
    parser.add_argument(
        "--in-cluster", action="store_true",
        help="deploy the operator as in a user's cluster: build the operator image offline, import it "
        "into the node and apply `spo manifests render` (Deployments for the reconciler and the webhook, "
        "the spod DaemonSet for the agent) instead of running them as host processes",
    )  # fmt: skip
    parser.add_argument("--namespace", default=constants.DEFAULT_NAMESPACE, help="operator namespace")
    parser.add_argument(
        "--webhook-port", type=int, default=constants.WEBHOOK_PORT, help="webhook port on 127.0.0.1"
    )
    parser.set_defaults(func=_up)
    down = subparsers.add_parser(
        "down", parents=[state], help="stop what `spo up` started",
        description="Stop exactly the processes `spo up` recorded; the state directory is kept.",
    )  # fmt: skip
    down.set_defaults(func=_down)
    status = subparsers.add_parser(
        "status", parents=[state], help="say what `spo up` started and whether it runs",
        description="List the processes `spo up` started, whether each still runs, and the kubeconfig.",
    )  # fmt: skip
    status.set_defaults(func=_status)
