"""The local node's configuration as data: containerd, CNI, kubelet, kubeconfigs, and the host clean-up
plan read from the host's own listings. Pure functions, tested without a node (spo/node.py does the I/O).
"""

from __future__ import annotations

import ipaddress
import json
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from api import constants


@dataclass(frozen=True)
class NodePaths:
    """Everything of the node under one directory, so a clean-up knows what is ours."""

    root: Path

    @property
    def containerd_root(self) -> Path:
        return self.root / "containerd" / "root"

    @property
    def containerd_state(self) -> Path:
        return self.root / "containerd" / "state"

    @property
    def containerd_config(self) -> Path:
        return self.root / "containerd" / "config.toml"

    @property
    def containerd_socket(self) -> Path:
        return self.root / "containerd.sock"

    @property
    def runc_root(self) -> Path:
        return self.root / "runc"

    @property
    def cni_conf_dir(self) -> Path:
        return self.root / "cni" / "net.d"

    @property
    def ipam_dir(self) -> Path:
        return self.root / "cni" / "ipam"

    @property
    def kubelet_root(self) -> Path:
        return self.root / "kubelet"

    @property
    def seccomp_dir(self) -> Path:
        """Where Localhost seccomp profiles `operator/<name>.json` are read from."""
        return self.kubelet_root / "seccomp" / constants.SECCOMP_OPERATOR_DIR

    @property
    def selinux_dir(self) -> Path:
        """The node's SELinux policy directory: this host has no SELinux, so the agent only compiles the
        policies it writes here, and they go with the node."""
        return self.root / "selinux.d"

    @property
    def recordings_dir(self) -> Path:
        """What the node's agent has recorded of running pods."""
        return self.root / "recordings"

    @property
    def audit_dir(self) -> Path:
        """The node's audit daemon: its configuration and its log."""
        return self.root / "audit"

    @property
    def audit_log(self) -> Path:
        return self.audit_dir / "audit.log"

    @property
    def kubelet_config(self) -> Path:
        return self.root / "kubelet-config.yaml"

    @property
    def kubelet_kubeconfig(self) -> Path:
        return self.root / "kubelet.kubeconfig"

    @property
    def pod_logs(self) -> Path:
        return self.root / "pod-logs"

    @property
    def images(self) -> Path:
        return self.root / "images"

    @property
    def registry_hosts(self) -> Path:
        """containerd's registry host configuration: every registry is our loopback one."""
        return self.root / "registry-hosts"

    @property
    def saved_host_state(self) -> Path:
        return self.root / "host-state.json"


def auditd_conf(paths: NodePaths) -> str:
    """auditd.conf for the node's audit daemon (`auditd -c <audit_dir>`): raw lines into the node's own
    log, rotated by size, no plugins, and never suspending logging (a full disk here is a test machine's,
    not an audit trail's, problem)."""
    settings = {
        "local_events": "yes",
        "write_logs": "yes",
        "log_file": str(paths.audit_log),
        "log_group": "root",
        "log_format": "RAW",
        "flush": "INCREMENTAL_ASYNC",
        "freq": "50",
        "max_log_file": str(constants.NODE_AUDIT_LOG_MAX_MB),
        "num_logs": str(constants.NODE_AUDIT_LOG_FILES),
        "max_log_file_action": "ROTATE",
        "priority_boost": "4",
        "name_format": "NONE",
        "space_left": "75",
        "space_left_action": "IGNORE",
        "admin_space_left": "50",
        "admin_space_left_action": "IGNORE",
        "disk_full_action": "IGNORE",
        "disk_error_action": "IGNORE",
        "q_depth": "2000",
        "overflow_action": "IGNORE",
        "plugin_dir": str(paths.audit_dir / "plugins.d"),
        "end_of_event_timeout": "2",
    }
    return "".join(f"{key} = {value}\n" for key, value in settings.items())


def audit_status(text: str) -> dict[str, str]:
    """`auditctl -s` as a mapping (`pid`, `backlog_limit`, `lost`, ...)."""
    return dict(line.split(" ", 1) for line in text.splitlines() if " " in line)


def _first_address(subnet: str) -> str:
    return str(next(ipaddress.ip_network(subnet).hosts()))


def pod_gateway(subnet: str = constants.POD_SUBNET) -> str:
    return _first_address(subnet)


def bridge_commands(subnet: str = constants.POD_SUBNET) -> list[list[str]]:
    """`ip` commands that make the pods' bridge with its gateway address before the kubelet starts, so
    the node's address is on the bridge `spo up` owns: no traffic of the node goes through (or depends on)
    the machine's own interfaces. The CNI bridge plugin takes over a bridge that already carries exactly
    its gateway address."""
    network = ipaddress.ip_network(subnet)
    bridge = constants.CNI_BRIDGE
    return [
        ["ip", "link", "add", bridge, "type", "bridge"],
        ["ip", "addr", "add", f"{pod_gateway(subnet)}/{network.prefixlen}", "dev", bridge],
        ["ip", "link", "set", bridge, "up"],
    ]


def kubernetes_service_ip(subnet: str = constants.SERVICE_SUBNET) -> str:
    """The `kubernetes` Service's ClusterIP: the apiserver gives it the first address of the range."""
    return _first_address(subnet)


def service_nat_commands(apiserver_port: int, subnet: str = constants.SERVICE_SUBNET) -> list[list[str]]:
    """`iptables` arguments that make the `kubernetes` Service reach the apiserver on 127.0.0.1, from pods
    (in-cluster clients dial its ClusterIP) and from the host: what kube-proxy would do for it, and no more.
    Pods' packets to 127.0.0.1 need `route_localnet` on the bridge (`route_localnet_sysctl`)."""
    chain = constants.NODE_SERVICES_CHAIN
    service = kubernetes_service_ip(subnet)
    return [
        ["-t", "nat", "-N", chain],
        ["-t", "nat", "-A", chain, "-d", f"{service}/32", "-p", "tcp",
         "--dport", str(constants.KUBERNETES_SERVICE_PORT),
         "-j", "DNAT", "--to-destination", f"127.0.0.1:{apiserver_port}"],
        ["-t", "nat", "-A", "PREROUTING", "-i", constants.CNI_BRIDGE, "-j", chain],
        ["-t", "nat", "-A", "OUTPUT", "-d", f"{service}/32", "-j", chain],
    ]  # fmt: skip


def route_localnet_sysctl() -> Path:
    """Lets packets from the bridge be routed to 127.0.0.1 (the DNAT above); it goes with the bridge."""
    return Path("/proc/sys/net/ipv4/conf") / constants.CNI_BRIDGE / "route_localnet"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML form for {value!r}")


def to_toml(tables: dict[str, dict[str, Any]], top: dict[str, Any]) -> str:
    """The TOML subset containerd's config needs: top-level keys, then flat tables of scalars and lists."""
    lines = [f"{key} = {_toml_value(value)}" for key, value in top.items()]
    for table, values in tables.items():
        lines += ["", f"[{table}]", *(f"  {key} = {_toml_value(value)}" for key, value in values.items())]
    return "\n".join(lines) + "\n"


def containerd_config(paths: NodePaths, sandbox_image: str) -> str:
    runtime = 'plugins."io.containerd.cri.v1.runtime"'
    top = {
        "version": 3,
        "root": str(paths.containerd_root),
        "state": str(paths.containerd_state),
        # NRI would open a socket under /var/run/nri and opt would populate /opt/containerd: neither is
        # used, and both would leave files outside the node's directory.
        "disabled_plugins": ["io.containerd.nri.v1.nri", "io.containerd.internal.v1.opt"],
    }
    tables: dict[str, dict[str, Any]] = {
        "grpc": {"address": str(paths.containerd_socket)},
        "ttrpc": {"address": f"{paths.containerd_socket}.ttrpc"},
        runtime: {
            # Root here lacks CAP_SYS_RESOURCE: runc cannot lower a sandbox's oom_score_adj to -998.
            "restrict_oom_score_adj": True,
            # Pod network namespaces mounted under our state, not /run/netns, so a clean-up finds them.
            "netns_mounts_under_state_dir": True,
        },
        f"{runtime}.containerd": {"default_runtime_name": "runc", "snapshotter": "overlayfs"},
        f"{runtime}.containerd.runtimes.runc": {"runtime_type": "io.containerd.runc.v2"},
        f"{runtime}.containerd.runtimes.runc.options": {
            "SystemdCgroup": False,
            "Root": str(paths.runc_root),
        },
        f"{runtime}.cni": {
            "bin_dirs": [constants.CNI_PLUGIN_DIR],
            "conf_dir": str(paths.cni_conf_dir),
            # containerd brings lo up itself: libcni's cache gets no "cni-loopback" entry that a
            # crash could leave behind.
            "use_internal_loopback": True,
        },
        'plugins."io.containerd.cri.v1.images"': {"snapshotter": "overlayfs"},
        # Pulls (imagePullPolicy Always, the default for `:latest` and untagged images) go to the node's
        # loopback registry of the same images: nothing leaves the machine.
        'plugins."io.containerd.cri.v1.images".registry': {"config_path": str(paths.registry_hosts)},
        'plugins."io.containerd.cri.v1.images".pinned_images': {"sandbox": sandbox_image},
        'plugins."io.containerd.grpc.v1.cri"': {"stream_server_address": "127.0.0.1"},
    }
    return to_toml(tables, top)


def cni_conflist(paths: NodePaths, subnet: str = constants.POD_SUBNET) -> dict[str, Any]:
    return {
        "cniVersion": "1.0.0",
        "name": constants.CNI_NETWORK,
        "plugins": [
            {
                "type": "bridge",
                "bridge": constants.CNI_BRIDGE,
                "isGateway": True,
                # Pods talk to the host and each other only: no masquerading out of the machine.
                "ipMasq": False,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": subnet, "gateway": pod_gateway(subnet)}]],
                    # Service addresses go to the node (its NAT sends the `kubernetes` one to the
                    # apiserver); no default route: nothing else is reachable from a pod.
                    "routes": [{"dst": constants.SERVICE_SUBNET}],
                    "dataDir": str(paths.ipam_dir),
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
            {"type": "loopback"},
        ],
    }


def kubelet_config(paths: NodePaths, ca_cert: Path, serving_cert: Path, serving_key: Path) -> dict[str, Any]:
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        # This machine kind boots with cgroup v1 and no systemd (KEP-5573 would refuse to start).
        "failCgroupV1": False,
        "cgroupDriver": "cgroupfs",
        "containerRuntimeEndpoint": f"unix://{paths.containerd_socket}",
        "failSwapOn": False,
        "address": "127.0.0.1",
        "port": constants.KUBELET_PORT,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "podCIDR": constants.POD_SUBNET,
        "podLogsDir": str(paths.pod_logs),
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": str(ca_cert)},
        },
        "authorization": {"mode": "Webhook"},
        "tlsCertFile": str(serving_cert),
        "tlsPrivateKeyFile": str(serving_key),
        # A busy, small development machine must not evict the pods under test, nor collect the
        # locally built images (nothing could pull them back).
        "evictionHard": {
            "memory.available": "50Mi",
            "nodefs.available": "1%",
            "nodefs.inodesFree": "1%",
            "imagefs.available": "1%",
        },
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "resolvConf": "/etc/resolv.conf",
        "clusterDomain": "cluster.local",
    }


def kubeconfig(server: str, ca_cert: Path, user: str, cert: Path, key: Path) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "spo-local", "cluster": {"server": server, "certificate-authority": str(ca_cert)}}
        ],
        "users": [{"name": user, "user": {"client-certificate": str(cert), "client-key": str(key)}}],
        "contexts": [{"name": "spo-local", "context": {"cluster": "spo-local", "user": user}}],
        "current-context": "spo-local",
    }


def mounts_under(mountinfo: str, root: Path) -> list[str]:
    """Mount points at or below `root` from /proc/self/mountinfo, deepest (and latest) first."""
    prefix = str(root).rstrip("/") + "/"
    points = []
    for line in mountinfo.splitlines():
        fields = line.split()
        if len(fields) > 4:
            # mountinfo escapes spaces and the like as octal (\040).
            point = fields[4].encode().decode("unicode_escape")
            if point == str(root) or point.startswith(prefix):
                points.append(point)
    return sorted(reversed(points), key=lambda p: p.count("/"), reverse=True)


def iptables_cleanup(save_output: str) -> list[list[str]]:
    """Arguments for `iptables` (or ip6tables) that remove our chains from an `iptables-save` listing:
    first the rules that jump to them or live in them, then the chains themselves."""
    commands: list[list[str]] = []
    table = ""
    chains: list[str] = []

    def ours(chain: str) -> bool:
        return chain.startswith(constants.IPTABLES_CHAIN_PREFIXES)

    def finish() -> None:
        commands.extend(["-t", table, "-F", chain] for chain in chains)
        commands.extend(["-t", table, "-X", chain] for chain in chains)

    for line in save_output.splitlines():
        if line.startswith("*"):
            table, chains = line[1:], []
        elif line.startswith(":") and ours(line[1:].split()[0]):
            chains.append(line[1:].split()[0])
        elif line.startswith("-A "):
            words = shlex.split(line)
            chain = words[1]
            target = words[words.index("-j") + 1] if "-j" in words else ""
            if not ours(chain) and ours(target):
                commands.append(["-t", table, "-D", *words[1:]])
        elif line == "COMMIT":
            finish()
            chains = []
    return commands


def empty_tables(save_output: str) -> list[str]:
    """Tables of an `iptables-save` listing with no rule and no chain but the built-in ones: what
    iptables-nft leaves behind once our chains are gone, which nft can delete outright."""
    empty, table, used = [], "", False
    for line in save_output.splitlines():
        if line.startswith("*"):
            table, used = line[1:], False
        elif line.startswith("-A ") or (line.startswith(":") and " - " in line):
            used = True  # a rule, or a user-defined chain (built-in ones carry a policy, not "-")
        elif line == "COMMIT" and not used:
            empty.append(table)
    return empty


def sysctl_path(name: str) -> Path:
    return Path("/proc/sys") / name.replace(".", "/")
