"""Where a node keeps what the agents read and write, as the host sees it.

The reconciler takes them as flags (`spo reconciler --node-kubelet-dir ...`, upstream's paths by
default), `spo manifests render` passes the same flags on to the reconciler's Deployment, and the spod
DaemonSet mounts each at the same path inside the agent's containers and hands it to `spo agent`
(`--kubelet-dir ...`), so the agent reads and writes exactly the paths the host sees. A node whose
kubelet or auditd keep their files elsewhere (`spo up --in-cluster`: below its state directory) is
described by these flags alone.
"""

from __future__ import annotations

import argparse
import posixpath
from dataclasses import dataclass
from typing import Final

from api import constants


@dataclass(frozen=True)
class NodePaths:
    kubelet_dir: str = constants.KUBELET_DIR
    audit_log: str = constants.AUDIT_LOG_PATH
    selinux_dir: str = constants.SELINUX_POLICY_DIR
    state_dir: str = constants.AGENT_RECORDINGS_DIR  # the recorder's, kept across agent restarts


# field -> (the reconciler's flag, what it is)
_FLAGS: Final = {
    "kubelet_dir": ("--node-kubelet-dir", "the kubelet's root directory (its seccomp/ holds the profiles)"),
    "audit_log": ("--node-audit-log", "the audit log the enrichers and the recorder follow"),
    "selinux_dir": ("--node-selinux-dir", "where SELinux policies go (with enableSelinux)"),
    "state_dir": ("--node-state-dir", "where the recorder keeps what it recorded of running pods"),
}


def host_path(value: str) -> str:
    """An absolute, normalised path other than `/`; ArgumentTypeError (a usage error) otherwise."""
    if not value.startswith("/") or posixpath.normpath(value) != value or value == "/":
        raise argparse.ArgumentTypeError(f"{value!r} is not an absolute, normalised path below /")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `--node-*` flags, defaults from NodePaths."""
    defaults = NodePaths()
    for field, (flag, what) in _FLAGS.items():
        parser.add_argument(
            flag,
            dest=f"node_{field}",
            type=host_path,
            default=getattr(defaults, field),
            metavar="PATH",
            help=f"on the nodes: {what} (default: %(default)s)",
        )


def from_arguments(args: argparse.Namespace) -> NodePaths:
    return NodePaths(**{field: getattr(args, f"node_{field}") for field in _FLAGS})


def arguments(paths: NodePaths) -> list[str]:
    """The flags that give `paths`, only those that differ from the defaults."""
    defaults = NodePaths()
    return [
        f"{flag}={getattr(paths, field)}"
        for field, (flag, _) in _FLAGS.items()
        if getattr(paths, field) != getattr(defaults, field)
    ]
