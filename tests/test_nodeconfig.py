"""The node's configuration builders and clean-up planners, without a node."""

from __future__ import annotations

import ipaddress
import shlex
import tomllib
from pathlib import Path

import pytest

from api import constants
from spo.nodeconfig import (
    NodePaths,
    bridge_commands,
    cni_conflist,
    containerd_config,
    empty_tables,
    iptables_cleanup,
    kubeconfig,
    kubelet_config,
    kubernetes_service_ip,
    mounts_under,
    pod_gateway,
    service_nat_commands,
    to_toml,
)

PATHS = NodePaths(Path("/state/node"))


def test_containerd_config_keeps_everything_under_the_node_directory() -> None:
    config = tomllib.loads(containerd_config(PATHS, "registry.k8s.io/pause:3.10"))
    assert config["version"] == 3
    assert config["root"] == "/state/node/containerd/root"
    assert config["grpc"]["address"] == "/state/node/containerd.sock"
    runtime = config["plugins"]["io.containerd.cri.v1.runtime"]
    assert runtime["restrict_oom_score_adj"] is True
    assert runtime["netns_mounts_under_state_dir"] is True
    assert runtime["cni"]["bin_dirs"] == [constants.CNI_PLUGIN_DIR]
    assert runtime["cni"]["conf_dir"] == "/state/node/cni/net.d"
    runc = runtime["containerd"]["runtimes"]["runc"]
    assert runc["options"] == {"SystemdCgroup": False, "Root": "/state/node/runc"}
    images = config["plugins"]["io.containerd.cri.v1.images"]
    assert images["pinned_images"]["sandbox"] == "registry.k8s.io/pause:3.10"
    assert images["snapshotter"] == "overlayfs"
    assert images["registry"] == {"config_path": "/state/node/registry-hosts"}
    assert "io.containerd.internal.v1.opt" in config["disabled_plugins"]


def test_toml_strings_are_quoted_and_escaped() -> None:
    parsed = tomllib.loads(to_toml({"t": {"s": 'a "b" \\ c', "n": 3, "l": ["x"]}}, {"top": True}))
    assert parsed == {"top": True, "t": {"s": 'a "b" \\ c', "n": 3, "l": ["x"]}}
    with pytest.raises(TypeError):
        to_toml({"t": {"f": 1.5}}, {})


def test_cni_conflist_is_a_bridge_on_the_pod_subnet_without_masquerading() -> None:
    conflist = cni_conflist(PATHS)
    assert [p["type"] for p in conflist["plugins"]] == ["bridge", "portmap", "loopback"]
    bridge = conflist["plugins"][0]
    assert bridge["bridge"] == constants.CNI_BRIDGE
    assert bridge["ipMasq"] is False
    (subnet_range,) = bridge["ipam"]["ranges"]
    assert subnet_range == [{"subnet": constants.POD_SUBNET, "gateway": pod_gateway()}]
    assert bridge["ipam"]["dataDir"] == "/state/node/cni/ipam"


def test_the_bridge_is_made_with_exactly_the_gateway_the_cni_plugin_expects() -> None:
    add_link, add_address, set_up = bridge_commands("10.1.2.0/24")
    assert add_link == ["ip", "link", "add", constants.CNI_BRIDGE, "type", "bridge"]
    # The bridge plugin accepts an existing address only if it is its gateway with the subnet's prefix.
    assert add_address == ["ip", "addr", "add", "10.1.2.1/24", "dev", constants.CNI_BRIDGE]
    assert set_up == ["ip", "link", "set", constants.CNI_BRIDGE, "up"]


def test_pod_subnet_keeps_clear_of_the_service_range() -> None:
    pods, services = (
        ipaddress.ip_network(constants.POD_SUBNET),
        ipaddress.ip_network(constants.SERVICE_SUBNET),
    )
    assert not pods.overlaps(services)
    assert pod_gateway("10.1.2.0/24") == "10.1.2.1"


def test_kubelet_config_is_authenticated_and_runs_on_this_machine_kind() -> None:
    config = kubelet_config(PATHS, Path("/pki/ca.crt"), Path("/pki/k.crt"), Path("/pki/k.key"))
    assert config["failCgroupV1"] is False
    assert config["cgroupDriver"] == "cgroupfs"
    assert config["readOnlyPort"] == 0
    assert config["authentication"]["anonymous"] == {"enabled": False}
    assert config["authentication"]["webhook"] == {"enabled": True}
    assert config["authentication"]["x509"] == {"clientCAFile": "/pki/ca.crt"}
    assert config["authorization"] == {"mode": "Webhook"}
    assert config["containerRuntimeEndpoint"] == "unix:///state/node/containerd.sock"
    assert config["podLogsDir"] == "/state/node/pod-logs"
    assert PATHS.seccomp_dir == Path("/state/node/kubelet/seccomp") / constants.SECCOMP_OPERATOR_DIR


def test_kubeconfig_names_one_user_with_its_certificate() -> None:
    config = kubeconfig("https://127.0.0.1:6443", Path("/ca"), "vm", Path("/c"), Path("/k"))
    assert config["users"] == [{"name": "vm", "user": {"client-certificate": "/c", "client-key": "/k"}}]
    assert config["clusters"][0]["cluster"] == {
        "server": "https://127.0.0.1:6443",
        "certificate-authority": "/ca",
    }


MOUNTINFO = """\
22 1 0:21 / / rw - ext4 /dev/vda rw
90 22 0:50 / /state/node/kubelet rw - ext4 /dev/vda rw
91 90 0:51 / /state/node/kubelet/pods/u/volumes/kubernetes.io~projected/kube-api-access rw - tmpfs tmpfs rw
92 22 0:52 / /state/node/containerd/state/io.containerd.grpc.v1.cri/netns/cni-1 rw - nsfs nsfs rw
93 22 0:53 / /state/node-other rw - tmpfs tmpfs rw
94 22 0:54 / /state/node/with\\040space rw - tmpfs tmpfs rw
"""


def test_mounts_under_lists_ours_deepest_first() -> None:
    assert mounts_under(MOUNTINFO, PATHS.root) == [
        "/state/node/kubelet/pods/u/volumes/kubernetes.io~projected/kube-api-access",
        "/state/node/containerd/state/io.containerd.grpc.v1.cri/netns/cni-1",
        "/state/node/with space",
        "/state/node/kubelet",
    ]


IPTABLES_SAVE = """\
# Generated by iptables-save
*filter
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:DOCKER - [0:0]
:KUBE-FIREWALL - [0:0]
-A INPUT -j KUBE-FIREWALL
-A INPUT -s 10.9.0.0/16 -j DOCKER
-A OUTPUT -m comment --comment "keep me" -j ACCEPT
-A KUBE-FIREWALL ! -s 127.0.0.0/8 -d 127.0.0.0/8 -m comment --comment "block localnet" -j DROP
COMMIT
*nat
:POSTROUTING ACCEPT [0:0]
:CNI-HOSTPORT-MASQ - [0:0]
-A POSTROUTING -m comment --comment "CNI portfwd requiring masquerade" -j CNI-HOSTPORT-MASQ
COMMIT
*mangle
:PREROUTING ACCEPT [0:0]
COMMIT
"""


def test_iptables_cleanup_removes_our_jumps_then_our_chains_only() -> None:
    assert iptables_cleanup(IPTABLES_SAVE) == [
        ["-t", "filter", "-D", "INPUT", "-j", "KUBE-FIREWALL"],
        ["-t", "filter", "-F", "KUBE-FIREWALL"],
        ["-t", "filter", "-X", "KUBE-FIREWALL"],
        ["-t", "nat", "-D", "POSTROUTING", "-m", "comment", "--comment", "CNI portfwd requiring masquerade",
         "-j", "CNI-HOSTPORT-MASQ"],
        ["-t", "nat", "-F", "CNI-HOSTPORT-MASQ"],
        ["-t", "nat", "-X", "CNI-HOSTPORT-MASQ"],
    ]  # fmt: skip


def test_empty_tables_are_those_with_built_in_chains_only() -> None:
    assert empty_tables(IPTABLES_SAVE) == ["mangle"]
    assert empty_tables("") == []


def _as_saved(commands: list[list[str]]) -> str:
    """What `iptables-save` lists after `commands` ran on an empty nat table."""
    chains = [args[3] for args in commands if args[2] == "-N"]
    rules = [shlex.join(args[2:]) for args in commands if args[2] == "-A"]
    builtin = [":PREROUTING ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]"]
    return "\n".join(["*nat", *builtin, *(f":{c} - [0:0]" for c in chains), *rules, "COMMIT"]) + "\n"


def test_the_kubernetes_service_goes_to_the_apiserver_and_the_clean_up_removes_it_all() -> None:
    commands = service_nat_commands(6443)
    dnat = next(args for args in commands if "DNAT" in args)
    assert dnat[dnat.index("-d") + 1] == f"{kubernetes_service_ip()}/32" == "10.0.0.1/32"
    assert dnat[dnat.index("--to-destination") + 1] == "127.0.0.1:6443"
    assert dnat[dnat.index("--dport") + 1] == "443"
    cleanup = iptables_cleanup(_as_saved(commands))
    assert [args[2] for args in cleanup] == ["-D", "-D", "-F", "-X"]
    assert {args[3] for args in cleanup} == {"PREROUTING", "OUTPUT", "SPO-SERVICES"}
