"""The local node: containerd, the CNI bridge, the locally built images and a kubelet, as host processes.

One node per machine, guarded by a flock the node's processes inherit. Everything of the node lives under
`<state>/node`; what it must put on the host (the bridge, iptables chains, kubepods cgroups, sysctls,
shim sockets, libcni's result cache) is swept by `clean_host`, which also makes a restart after a crash
or a `kill -9` start from nothing. The configuration itself is data, in spo/nodeconfig.py.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import functools
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from api import constants
from api.kube import api_client
from spo import localcluster
from spo.images import ImageBuildError, build_node_images
from spo.nodeconfig import (
    NodePaths,
    audit_status,
    auditd_conf,
    bridge_commands,
    cni_conflist,
    containerd_config,
    empty_tables,
    iptables_cleanup,
    kubeconfig,
    kubelet_config,
    mounts_under,
    pod_gateway,
    route_localnet_sysctl,
    service_nat_commands,
    sysctl_path,
)
from spo.processes import stop_process
from spo.registry import write_hosts_dir

NODE_BUILD_SCRIPT = localcluster.REPO_ROOT / "hack" / "node" / "build.sh"
NODE_COMMANDS = ("containerd", "ctr", "containerd-shim-runc-v2", "crictl")
KUBERNETES_NODE_COMMANDS = ("kubelet", "kube-controller-manager", "kube-scheduler")
HOST_COMMANDS = (
    "runc",
    "iptables",
    "iptables-save",
    "ip6tables",
    "ip6tables-save",
    "ip",
    "auditd",
    "auditctl",
)
KUBELET_API_BINDING = "spo-local:kube-apiserver-kubelet-client"
STOP_TIMEOUT_SECONDS = 15.0
NODE_PROCESSES = ("kubelet", "containerd", "auditd")
_LIBC = ctypes.CDLL(None, use_errno=True)
_MNT_DETACH = 2


class NodeBusy(localcluster.ControlPlaneError):
    """Another state directory's node holds the machine."""


def node_binaries_dir(progress: Callable[[str], None] = print) -> Path:
    return localcluster.built_binaries(
        NODE_BUILD_SCRIPT, "SPO_NODE_BIN", "containerd", "containerd and crictl", progress
    )


def node_name() -> str:
    """The machine's hostname: it resolves to loopback, where the apiserver then reaches the kubelet."""
    return socket.gethostname().lower()


def missing_prerequisites(kubernetes_bin: Path, node_bin: Path) -> list[str]:
    missing = [] if os.geteuid() == 0 else ["root (a kubelet and containerd need it)"]
    missing += [
        f"{c} (apt-get install runc iptables iproute2 auditd)" for c in HOST_COMMANDS if not shutil.which(c)
    ]
    plugins = Path(constants.CNI_PLUGIN_DIR)
    missing += [
        f"{plugins / p} (apt-get install containernetworking-plugins)"
        for p in constants.CNI_PLUGINS
        if not (plugins / p).exists()
    ]
    missing += [
        f"{directory / c} (bash {script})"
        for directory, commands, script in (
            (kubernetes_bin, KUBERNETES_NODE_COMMANDS, localcluster.BUILD_SCRIPT),
            (node_bin, NODE_COMMANDS, NODE_BUILD_SCRIPT),
        )
        for c in commands
        if not (directory / c).exists()
    ]
    return missing


@dataclass
class NodeLock:
    """The machine-wide node lock, held on an open file the node's processes inherit."""

    fd: int
    path: str = constants.NODE_LOCK_FILE

    @classmethod
    def acquire(cls, owner: Path, wait: float = 0.0, path: str = constants.NODE_LOCK_FILE) -> NodeLock:
        deadline = time.monotonic() + wait
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                if time.monotonic() >= deadline:
                    holder = lock_holder(path)
                    raise NodeBusy(
                        f"a node already runs on this machine (state directory {holder}); "
                        f"stop it first: spo down --state-dir {holder}"
                    ) from None
                time.sleep(1.0)
                continue
            # The last holder unlinks the file on release: a lock taken on that unlinked file is no lock.
            if _same_file(fd, path):
                os.ftruncate(fd, 0)
                os.pwrite(fd, str(owner).encode(), 0)
                return cls(fd, path)
            os.close(fd)

    def hand_over(self) -> None:
        """Close our descriptor: the node's processes, which inherited it, hold the lock from now on."""
        os.close(self.fd)

    def release(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            if _same_file(self.fd, self.path):
                os.unlink(self.path)
        os.close(self.fd)


def acquire_for(state_dir: Path) -> NodeLock:
    """The node lock for a node under `state_dir`; leftovers of an earlier node of the same directory
    that still hold it (a surviving containerd, orphaned shims) are cleaned away first."""
    try:
        return NodeLock.acquire(state_dir)
    except NodeBusy:
        if lock_holder() != str(state_dir):
            raise
    clean_host(NodePaths(state_dir / "node"), machine_wide=True)
    return NodeLock.acquire(state_dir, wait=STOP_TIMEOUT_SECONDS)


def _same_file(fd: int, path: str) -> bool:
    try:
        on_disk = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (held.st_dev, held.st_ino) == (on_disk.st_dev, on_disk.st_ino)


def lock_holder(path: str = constants.NODE_LOCK_FILE) -> str:
    try:
        return Path(path).read_text().strip() or "unknown"
    except OSError:
        return "unknown"


def create_bridge(apiserver_port: int) -> str:
    """The pods' bridge, up, with the gateway address, and the `kubernetes` Service routed to the
    apiserver listening on 127.0.0.1:`apiserver_port`; returns the gateway address, the node's."""
    for argv in [
        *bridge_commands(),
        *(["iptables", "-w", *args] for args in service_nat_commands(apiserver_port)),
    ]:
        made = subprocess.run(argv, capture_output=True, text=True, check=False)
        if made.returncode != 0:
            raise localcluster.ControlPlaneError(f"{' '.join(argv)} failed: {made.stderr.strip()}")
    route_localnet_sysctl().write_text("1")
    return pod_gateway()


@dataclass
class Node:
    """containerd and a kubelet registered to `cluster`, their processes kept in `cluster.processes`."""

    cluster: localcluster.ControlPlane
    binaries: Path
    name: str = field(default_factory=node_name)
    # Where the kernel's audit lines of this node's containers go, once started.
    audit_log: Path = Path(constants.AUDIT_LOG_PATH)

    @property
    def paths(self) -> NodePaths:
        return NodePaths(self.cluster.state_dir / "node")

    def start(self, lock: NodeLock) -> None:
        paths = self.paths
        clean_host(paths, machine_wide=True)
        for directory in (
            paths.cni_conf_dir,
            paths.seccomp_dir,
            paths.pod_logs,
            paths.containerd_config.parent,
        ):
            directory.mkdir(parents=True, exist_ok=True)
        save_host_state(paths)
        self.audit_log = self._start_auditd()
        self._start_containerd(lock)
        self._import_images()
        self._start_kubelet(lock)

    def crictl(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        return crictl(self.binaries, self.paths, *args, timeout=timeout)

    def _start_auditd(self) -> Path:
        """The node's audit daemon, so that no seccomp or AVC line of a container is lost (the kernel log
        rate-limits them), unless the machine runs one already: then the node's lines are in its log.
        Returns the log the node's audit lines go to."""
        if audit_daemon_pid() is not None:
            return Path(constants.AUDIT_LOG_PATH)
        paths = self.paths
        (paths.audit_dir / "plugins.d").mkdir(parents=True, exist_ok=True)
        config = paths.audit_dir / "auditd.conf"
        config.write_text(auditd_conf(paths))
        config.chmod(0o640)  # auditd refuses a configuration others may write
        _auditctl("-b", str(constants.NODE_AUDIT_BACKLOG_LIMIT))
        process = self.cluster.spawn("auditd", ["auditd", "-n", "-s", "nochange", "-c", str(paths.audit_dir)])
        self.cluster.wait_until(
            lambda: audit_daemon_pid() == process.pid and paths.audit_log.exists(), "auditd"
        )
        return paths.audit_log

    def _start_containerd(self, lock: NodeLock) -> None:
        paths = self.paths
        paths.containerd_config.write_text(containerd_config(paths, constants.SANDBOX_IMAGE))
        (paths.cni_conf_dir / f"10-{constants.CNI_NETWORK}.conflist").write_text(
            json.dumps(cni_conflist(paths), indent=2)
        )
        self.cluster.spawn(
            "containerd",
            [str(self.binaries / "containerd"), f"--config={paths.containerd_config}"],
            pass_fds=(lock.fd,),
            env=self._env(),
        )
        # `ctr version` waits ~10 s for a socket that is not there yet: test the socket first.
        self.cluster.wait_until(
            lambda: paths.containerd_socket.exists() and self._ctr("version").returncode == 0,
            "containerd",
        )

    def _import_images(self) -> None:
        """Import the images (pods that do not pull find them) and serve them (pods that pull get them)."""
        try:
            archive = build_node_images(self.paths.images)
        except ImageBuildError as error:
            raise localcluster.ControlPlaneError(f"building the node images failed: {error}") from error
        self.import_image(archive)
        port = localcluster.free_port()
        argv = localcluster.python_module("spo.registry", str(archive), "--port", str(port))
        self.cluster.spawn("registry", argv)
        url = f"http://127.0.0.1:{port}"
        self.cluster.wait_until(functools.partial(localcluster.http_ok, f"{url}/v2/"), "node image registry")
        write_hosts_dir(self.paths.registry_hosts, url)

    def import_image(self, archive: Path) -> None:
        """Make the images of an OCI layout tar available to the node's pods (`ctr images import`)."""
        imported = self._ctr("images", "import", str(archive), timeout=300)
        if imported.returncode != 0:
            raise localcluster.ControlPlaneError(f"importing {archive} failed:\n{imported.stderr}")

    def _start_kubelet(self, lock: NodeLock) -> None:
        paths, pki = self.paths, self.cluster.pki
        address = create_bridge(self.cluster.api_port)
        pki.create_kubelet(self.name, [address])
        cert, key = pki.pair(localcluster.KUBELET_CLIENT)
        localcluster.write_yaml(
            paths.kubelet_kubeconfig, kubeconfig(self.cluster.url, pki.ca_cert, self.name, cert, key)
        )
        localcluster.write_yaml(
            paths.kubelet_config, kubelet_config(paths, pki.ca_cert, *pki.pair(localcluster.KUBELET_SERVING))
        )
        api = api_client(str(self.cluster.kubeconfig))
        grant_kubelet_api(api)
        self.cluster.spawn(
            "kubelet",
            [
                str(self.cluster.binaries / "kubelet"),
                f"--config={paths.kubelet_config}",
                f"--kubeconfig={paths.kubelet_kubeconfig}",
                f"--root-dir={paths.kubelet_root}",
                f"--hostname-override={self.name}",
                f"--node-ip={address}",
            ],
            pass_fds=(lock.fd,),
            env=self._env(),
        )
        self.cluster.wait_until(lambda: node_ready(api, self.name), f"node {self.name} Ready")

    def _env(self) -> dict[str, str]:
        # containerd finds its shim on PATH.
        return {**os.environ, "PATH": f"{self.binaries}:{os.environ.get('PATH', '/usr/sbin:/usr/bin')}"}

    def _ctr(self, *args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.binaries / "ctr"), "--address", str(self.paths.containerd_socket), "-n",
             constants.CRI_NAMESPACE, *args],
            capture_output=True, text=True, timeout=timeout, check=False,
        )  # fmt: skip

    def stop(self) -> None:
        """Tear the node down (the control plane keeps running)."""
        running = {
            name: process.pid
            for name, process in self.cluster.processes.items()
            if name in NODE_PROCESSES and process.poll() is None
        }
        teardown(self.paths, self.binaries, running)
        for name in NODE_PROCESSES:
            process = self.cluster.processes.pop(name, None)
            if process is not None:
                process.wait(5)


def crictl(
    binaries: Path, paths: NodePaths, *args: str, timeout: float = 60.0
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(binaries / "crictl"), "--runtime-endpoint", f"unix://{paths.containerd_socket}", *args],
        capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip


def grant_kubelet_api(api: client.ApiClient) -> None:
    """Let the apiserver's kubelet client identity use the kubelet API (logs, exec) and nothing else."""
    binding = client.V1ClusterRoleBinding(
        metadata=client.V1ObjectMeta(name=KUBELET_API_BINDING),
        role_ref=client.V1RoleRef(
            api_group="rbac.authorization.k8s.io", kind="ClusterRole", name="system:kubelet-api-admin"
        ),
        subjects=[
            client.RbacV1Subject(
                api_group="rbac.authorization.k8s.io", kind="User", name=localcluster.APISERVER_KUBELET_CLIENT
            )
        ],
    )
    try:
        client.RbacAuthorizationV1Api(api).create_cluster_role_binding(binding)
    except ApiException as error:
        if error.status != 409:
            raise


def node_ready(api: client.ApiClient, name: str) -> bool:
    try:
        node = client.CoreV1Api(api).read_node(name)
    except ApiException:
        return False
    conditions = (node.status.conditions if node.status else None) or []
    return any(c.type == "Ready" and c.status == "True" for c in conditions)


def teardown(paths: NodePaths, binaries: Path, running: Mapping[str, int]) -> None:
    """Stop the node and leave nothing behind: the kubelet first (or it would restart the pods), the pods
    through the CRI while containerd still runs (so CNI DEL and the shims' clean-up happen), containerd,
    then the sweep of whatever a crash may have left. The machine-wide part of the sweep only happens
    when no other state directory's node holds the machine."""
    if "kubelet" in running:
        stop_process(running["kubelet"], timeout=STOP_TIMEOUT_SECONDS)
    if "containerd" in running:
        if paths.containerd_socket.exists():
            crictl(binaries, paths, "rmp", "--all", "--force", timeout=120)
        stop_process(running["containerd"], timeout=STOP_TIMEOUT_SECONDS)
    if "auditd" in running:
        stop_process(running["auditd"], timeout=STOP_TIMEOUT_SECONDS)
    owner = paths.root.parent
    try:
        lock = NodeLock.acquire(owner)
    except NodeBusy:
        ours = lock_holder() == str(owner)
        clean_host(paths, machine_wide=ours)
        if ours:
            # Orphaned shims held it and are gone now: release it, unless this very process holds it.
            with contextlib.suppress(NodeBusy):
                NodeLock.acquire(owner).release()
        return
    try:
        clean_host(paths, machine_wide=True)
    finally:
        lock.release()


def clean_host(paths: NodePaths, machine_wide: bool) -> None:
    """Remove every trace of the node under `paths`, whether it stopped cleanly or not, and with
    `machine_wide` what a node puts on the host. Idempotent."""
    _kill_all(paths, machine_wide)
    # A killed shim leaves its socket in the machine-wide directory; its task state says which one.
    for bootstrap in paths.containerd_state.glob("io.containerd.runtime.v2.task/*/*/bootstrap.json"):
        with contextlib.suppress(OSError, ValueError, KeyError):
            socket_path = Path(str(json.loads(bootstrap.read_text())["address"]).removeprefix("unix://"))
            if socket_path.parent == Path(constants.CONTAINERD_MACHINE_STATE_DIR) / "s":
                socket_path.unlink(missing_ok=True)
    for point in mounts_under(Path("/proc/self/mountinfo").read_text(), paths.root):
        # umount2 directly: util-linux's umount would leave /run/mount/utab behind.
        if _LIBC.umount2(point.encode(), 0) != 0:
            _LIBC.umount2(point.encode(), _MNT_DETACH)
    if machine_wide:
        _clean_machine(paths)
    shutil.rmtree(paths.root, ignore_errors=True)


def _clean_machine(paths: NodePaths) -> None:
    if Path("/sys/class/net", constants.CNI_BRIDGE).exists():
        subprocess.run(["ip", "link", "delete", constants.CNI_BRIDGE], capture_output=True, check=False)
    for tool, family in (("iptables", "ip"), ("ip6tables", "ip6")):
        for arguments in iptables_cleanup(_save(tool)):
            subprocess.run([tool, "-w", *arguments], capture_output=True, check=False)
        # iptables-nft creates its tables on first use; empty ones go too when nft is there to do it.
        if shutil.which("nft") and "nf_tables" in _save(tool, "--version"):
            for table in empty_tables(_save(tool)):
                subprocess.run(["nft", "delete", "table", family, table], capture_output=True, check=False)
    for hierarchy in _kubepods_cgroups():
        for cgroup, _, _ in os.walk(hierarchy, topdown=False):
            with contextlib.suppress(OSError):
                os.rmdir(cgroup)
    for cached in Path(constants.CNI_RESULTS_CACHE_DIR).glob(f"{constants.CNI_NETWORK}-*"):
        cached.unlink(missing_ok=True)
    # The kubelet keeps these two outside its --root-dir whatever the configuration.
    (Path(constants.KUBELET_DIR) / "device-plugins" / "kubelet.sock").unlink(missing_ok=True)
    for link in Path(constants.CONTAINER_LOG_LINKS_DIR).glob("*.log"):
        if link.is_symlink() and str(paths.pod_logs) in os.readlink(link):
            link.unlink()
    restore_host_state(paths)


def _auditctl(*args: str) -> str:
    """auditctl's output; empty where it cannot talk to the kernel (no audit support)."""
    return subprocess.run(["auditctl", *args], capture_output=True, text=True, check=False).stdout


def audit_daemon_pid() -> int | None:
    """The pid of the audit daemon the kernel sends its records to, if one is alive."""
    pid = int(audit_status(_auditctl("-s")).get("pid") or 0)
    return pid if pid and Path(f"/proc/{pid}").exists() else None


def _save(tool: str, *args: str) -> str:
    return subprocess.run([f"{tool}-save", *args], capture_output=True, text=True, check=False).stdout


def _kill_all(paths: NodePaths, machine_wide: bool) -> None:
    """SIGKILL the node's leftovers: processes naming its directory (containerd, kubelet, shims) and
    every process in the kubepods cgroups (containers whose shim is gone)."""
    victims = set(_processes_naming(paths.root))
    for hierarchy in _kubepods_cgroups() if machine_wide else []:
        for procs in hierarchy.rglob("cgroup.procs"):
            with contextlib.suppress(OSError):
                victims.update(int(pid) for pid in procs.read_text().split())
    victims.discard(os.getpid())
    for pid in victims:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    for pid in victims:
        stop_process(pid, timeout=STOP_TIMEOUT_SECONDS)


def _processes_naming(root: Path) -> Iterator[int]:
    needle = str(root).encode()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if needle in (entry / "cmdline").read_bytes():
                    yield int(entry.name)


def _kubepods_cgroups() -> list[Path]:
    root = Path(constants.CGROUP_V1_ROOT)
    if not root.is_dir():
        return []
    return [
        hierarchy / constants.KUBEPODS_CGROUP
        for hierarchy in root.iterdir()
        if not hierarchy.is_symlink() and (hierarchy / constants.KUBEPODS_CGROUP).is_dir()
    ]


def save_host_state(paths: NodePaths) -> None:
    """Note the sysctls and the kernel's audit backlog limit the node changes, and which of the host
    directories it creates are missing."""
    sysctls = {}
    for name in constants.NODE_SYSCTLS:
        with contextlib.suppress(OSError):
            sysctls[name] = sysctl_path(name).read_text().strip()
    absent = [d for d in constants.NODE_HOST_DIRS if not Path(d).exists()]
    backlog = audit_status(_auditctl("-s")).get("backlog_limit")
    paths.saved_host_state.parent.mkdir(parents=True, exist_ok=True)
    paths.saved_host_state.write_text(
        json.dumps({"sysctls": sysctls, "absent": absent, "audit_backlog_limit": backlog}, indent=2)
    )


def restore_host_state(paths: NodePaths) -> None:
    """Put the sysctls back, and remove the host directories the node created once they are empty."""
    try:
        saved = json.loads(paths.saved_host_state.read_text())
    except (OSError, ValueError):
        return
    for name, value in saved["sysctls"].items():
        with contextlib.suppress(OSError):
            if sysctl_path(name).read_text().strip() != value:
                sysctl_path(name).write_text(value)
    if saved.get("audit_backlog_limit"):
        _auditctl("-b", saved["audit_backlog_limit"])
    for directory in saved["absent"]:
        for current, _, _ in os.walk(directory, topdown=False):
            with contextlib.suppress(OSError):
                os.rmdir(current)
    paths.saved_host_state.unlink()
