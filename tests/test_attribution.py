"""agent/attribution.py: cgroup and stat parsing (upstream's fixtures), pid -> container id against a fake
proc tree and the real /proc (a child moved into a cgroup named like a container), the container index
fed with pods as the API returns them, the backlog's bounds, the pod watch's selectors."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.attribution import (
    Backlog,
    ContainerIds,
    ContainerIndex,
    NodePod,
    container_id_from_cgroup,
    container_id_from_status,
    containers_of,
    fd_budget,
    pod_selectors,
    start_time_from_stat,
)
from api import constants
from tests.forked import in_child

# Container ids of upstream's internal/pkg/util/containers_test.go (inventory §6.2).
CRIO_ID = "af208fd68bf39a07a439ed0c9b6609b9ae63ecd8a5f1a2af3e0db48b945b320a"
CONTAINERD_ID = "b469ca5b54e01e7724b7a990f01d54f571dd7669b87851a87bd8b849c438c580"
CONMON_ID = "5819a498721cf8bb7e334809c9e48aa310bfc98801eb8017034ad17fb0749920"
# The json enricher test's container (inventory §6.1).
JSON_TEST_ID = "218ce99dd8b33f6f9b6565863d7cd47dc880963ddd2cd987bcb2d330c65144bf"
OUTER_ID = "0" * 63 + "1"
POD_UID = "a201f46d-151a-4701-8f24-314bea77df79"
UID_SYSTEMD = POD_UID.replace("-", "_")

# The v1 lines before a container's first id-holding line, as a kubelet with cgroupfs leaves them.
_V1_HEAD = "12:hugetlb:/\n11:devices:/kubepods/burstable/pod" + POD_UID + "\n"

CGROUPS = [
    # Upstream's fixtures, quoted from inventory §6.2.
    pytest.param(
        "4:net_cls,net_prio:/kubepods/besteffort/pod26ba375c-2266-4ecc-bf2d-b626db8762af/crio-" + CRIO_ID,
        CRIO_ID,
        id="upstream-crio-v1",
    ),
    pytest.param(
        f"12:cpu,cpuacct:/kubepods/burstable/pod{POD_UID}/{CONTAINERD_ID}",
        CONTAINERD_ID,
        id="upstream-containerd-docker-cgroupfs-v1",
    ),
    pytest.param("0::/system.slice/crio.service", None, id="upstream-crio-service-host"),
    pytest.param(
        f"0::/system.slice/crio-conmon-{CONMON_ID}.scope", CONMON_ID, id="upstream-crio-conmon-scope"
    ),
    pytest.param(f"0::/kubepods/pod123/crio-{CRIO_ID}\n", CRIO_ID, id="upstream-crio-v2-cache-test"),
    # The same ids in the layouts of the other drivers and runtimes, whole files.
    pytest.param(
        "0::/kubepods.slice/kubepods-besteffort.slice/"
        f"kubepods-besteffort-pod{UID_SYSTEMD}.slice/cri-containerd-{CONTAINERD_ID}.scope\n",
        CONTAINERD_ID,
        id="containerd-systemd-v2",
    ),
    pytest.param(
        "0::/kubepods.slice/kubepods-burstable.slice/"
        f"kubepods-burstable-pod{UID_SYSTEMD}.slice/crio-{CRIO_ID}.scope\n",
        CRIO_ID,
        id="crio-systemd-v2",
    ),
    pytest.param(
        _V1_HEAD + f"10:memory:/kubepods/burstable/pod{POD_UID}/{CONTAINERD_ID}\n"
        f"0::/kubepods/burstable/pod{POD_UID}/{CONTAINERD_ID}\n",
        CONTAINERD_ID,
        id="containerd-cgroupfs-hybrid-first-line-without-id",
    ),
    pytest.param(f"0::/system.slice/docker-{CONTAINERD_ID}.scope\n", CONTAINERD_ID, id="docker-systemd-v2"),
    pytest.param(f"3:cpuset:/docker/{CONTAINERD_ID}\n", CONTAINERD_ID, id="docker-cgroupfs-v1"),
    pytest.param(
        f"0::/docker/{OUTER_ID}/docker/{CONTAINERD_ID}\n", CONTAINERD_ID, id="docker-in-docker-last-match"
    ),
    pytest.param(
        f"5:pids:/kubepods/pod1/{CRIO_ID}\n4:memory:/kubepods/pod2/{CONTAINERD_ID}\n",
        CRIO_ID,
        id="first-line-with-an-id-wins",
    ),
    # Host processes: a login session, this machine's own layout, the node's kubelet, the root.
    pytest.param("0::/user.slice/user-0.slice/session-3.scope\n", None, id="host-session-v2"),
    pytest.param(
        "9:name=systemd:/\n4:memory:/process_api/8f62824671fb33fe2db563efac3c548f\n0::/\n",
        None,
        id="host-32-hex-is-not-a-container",
    ),
    pytest.param("0::/system.slice/kubelet.service\n", None, id="host-kubelet"),
    pytest.param("0::/\n", None, id="host-root"),
    pytest.param("", None, id="empty"),
    pytest.param(f"0::/kubepods/pod1/{CRIO_ID.upper()}\n", None, id="upper-case-is-not-an-id"),
]


@pytest.mark.parametrize(("text", "expected"), CGROUPS)
def test_container_id_from_cgroup(text: str, expected: str | None) -> None:
    assert container_id_from_cgroup(text) == expected


# Upstream's /proc/<pid>/stat samples (containers_test.go): the filler is fields 3 to 21.
FILLER = "S 1 1234 1234 0 -1 4194560 1234 0 0 0 10 20 30 40 20 0 1 0"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"1234 (bash) {FILLER} 88888 1234", 88888),
        (f"1234 (my cool daemon) {FILLER} 99999 1234", 99999),
        (f"1234 (my (cool) daemon()) {FILLER} 11111 1234", 11111),
        (f"1234 ()) {FILLER} 22222 1234", 22222),
        ("1234 (bash S 1 1234", None),  # truncated
        (f"1234 (bash) {FILLER} nan 1234", None),
        (f"1234 bash {FILLER} 88888 1234", None),  # no comm
        ("", None),
    ],
)
def test_start_time_from_stat(text: str, expected: int | None) -> None:
    assert start_time_from_stat(text) == expected


# --- pid -> container id on a fake proc tree -------------------------------------------------------
class FakeProc:
    def __init__(self, root: Path) -> None:
        self.root = root

    def process(self, pid: int, start: int, cgroup: str, comm: str = "sh") -> None:
        directory = self.root / str(pid)
        directory.mkdir(exist_ok=True)
        (directory / "stat").write_text(f"{pid} ({comm}) {FILLER} {start} 1234\n")
        (directory / "cgroup").write_text(cgroup)

    def exit(self, pid: int) -> None:
        for name in ("stat", "cgroup"):
            (self.root / str(pid) / name).unlink()
        (self.root / str(pid)).rmdir()


@pytest.fixture
def fake_proc(tmp_path: Path) -> FakeProc:
    return FakeProc(tmp_path)


def _cgroup(container_id: str) -> str:
    return f"0::/kubepods/pod123/crio-{container_id}\n"


def test_a_reused_pid_is_never_given_the_old_container(fake_proc: FakeProc) -> None:
    ids = ContainerIds(fake_proc.root)
    fake_proc.process(1234, 100, _cgroup(CRIO_ID))
    assert ids.lookup(1234) == CRIO_ID
    fake_proc.exit(1234)
    fake_proc.process(1234, 200, _cgroup(CONTAINERD_ID), comm="python3")
    assert ids.lookup(1234) == CONTAINERD_ID
    fake_proc.exit(1234)
    fake_proc.process(1234, 300, "0::/user.slice\n")
    assert ids.lookup(1234) is None


def test_the_same_process_is_answered_from_the_cache(fake_proc: FakeProc) -> None:
    ids = ContainerIds(fake_proc.root)
    fake_proc.process(7, 100, _cgroup(CRIO_ID))
    assert ids.lookup(7) == CRIO_ID
    # Only the cache can still say CRIO_ID for the same start time.
    (fake_proc.root / "7" / "cgroup").write_text(_cgroup(CONTAINERD_ID))
    assert ids.lookup(7) == CRIO_ID


def test_a_host_process_is_not_remembered_as_such(fake_proc: FakeProc) -> None:
    ids = ContainerIds(fake_proc.root)
    fake_proc.process(8, 100, "0::/system.slice/runc.scope\n")
    assert ids.lookup(8) is None
    (fake_proc.root / "8" / "cgroup").write_text(_cgroup(CRIO_ID))  # runc moved it into its container
    assert ids.lookup(8) == CRIO_ID


def test_vanished_and_malformed_processes_give_none(fake_proc: FakeProc) -> None:
    ids = ContainerIds(fake_proc.root)
    fake_proc.process(9, 100, _cgroup(CRIO_ID))
    assert ids.lookup(9) == CRIO_ID
    fake_proc.exit(9)
    assert ids.lookup(9) is None
    assert len(ids) == 0
    assert ids.lookup(10) is None  # never existed
    fake_proc.process(11, 100, _cgroup(CRIO_ID))
    (fake_proc.root / "11" / "stat").write_text("11 (sh S 1")
    assert ids.lookup(11) is None


def test_the_pid_cache_is_bounded_least_recently_used_first(fake_proc: FakeProc) -> None:
    ids = ContainerIds(fake_proc.root, max_entries=2)
    for pid in (1, 2, 3):
        fake_proc.process(pid, 100, _cgroup(CRIO_ID))
    ids.lookup(1)
    ids.lookup(2)
    ids.lookup(1)  # 2 is now the least recently used
    ids.lookup(3)
    assert len(ids) == 2
    for pid in (1, 2, 3):
        (fake_proc.root / str(pid) / "cgroup").write_text(_cgroup(CONTAINERD_ID))
    assert [ids.lookup(pid) for pid in (1, 3)] == [CRIO_ID, CRIO_ID]
    assert ids.lookup(2) == CONTAINERD_ID  # evicted, so read again


def test_the_cache_holds_one_fd_per_entry_and_closes_them(fake_proc: FakeProc) -> None:
    ids = ContainerIds(fake_proc.root, max_entries=3)
    before = _open_fds()
    for pid in range(1, 8):
        fake_proc.process(pid, 100, _cgroup(CRIO_ID))
        assert ids.lookup(pid) == CRIO_ID
        assert _open_fds() - before == len(ids) == min(pid, 3)
    fake_proc.exit(7)
    assert ids.lookup(7) is None
    fake_proc.process(8, 100, "0::/user.slice\n")
    assert ids.lookup(8) is None  # a host process: not cached, its fd closed
    assert _open_fds() - before == len(ids) == 2
    ids.close()
    assert (_open_fds(), len(ids)) == (before, 0)
    assert ids.lookup(6) == CRIO_ID  # usable again after close


def test_a_batch_checks_each_cached_process_once(fake_proc: FakeProc) -> None:
    ids = ContainerIds(fake_proc.root, max_entries=1)
    fake_proc.process(1, 100, _cgroup(CRIO_ID))
    fake_proc.process(2, 100, _cgroup(CONTAINERD_ID))
    with ids.batch():
        assert ids.lookup(1) == CRIO_ID
        fake_proc.exit(1)  # after its lines were read: they are still its
        assert ids.lookup(1) == CRIO_ID
        assert ids.lookup(2) == CONTAINERD_ID  # evicts 1, which is checked again if seen again
        fake_proc.process(1, 200, _cgroup(CONTAINERD_ID))
        assert ids.lookup(1) == CONTAINERD_ID
        fake_proc.exit(1)
    assert ids.lookup(1) is None  # outside a batch, every lookup checks
    fake_proc.process(1, 300, _cgroup(CRIO_ID))
    assert ids.lookup(1) == CRIO_ID
    ids.close()


INFINITY = resource.RLIM_INFINITY


@pytest.mark.parametrize(
    ("soft", "hard", "wanted", "reserve", "expected"),
    [
        (20000, 20000, 1000, 512, (20000, 1000)),  # room already
        (1512, 4096, 1000, 512, (1512, 1000)),  # exactly enough
        (1024, 4096, 1000, 512, (1512, 1000)),  # raised as far as needed, not to the hard limit
        (1024, INFINITY, 1000, 512, (1512, 1000)),
        (INFINITY, INFINITY, 1000, 512, (INFINITY, 1000)),
        (1024, 1024, 1000, 512, (1024, 512)),  # the hard limit is the soft one: the cache shrinks
        (256, 1200, 1000, 512, (1200, 688)),  # raised to the hard limit, still too low: shrinks
        (256, 256, 1000, 512, (256, 1)),  # at least one entry
    ],
)
def test_fd_budget(soft: int, hard: int, wanted: int, reserve: int, expected: tuple[int, int]) -> None:
    assert fd_budget(soft, hard, wanted, reserve) == expected


def test_the_fd_limit_is_raised_for_the_cache() -> None:
    def body() -> bytes:
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))
        ContainerIds(Path("/proc"), max_entries=1000)
        return str(resource.getrlimit(resource.RLIMIT_NOFILE)[0]).encode()

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert int(in_child(body)) == fd_budget(64, hard, 1000, constants.PID_CACHE_FD_RESERVE)[0] > 64


def test_bounds_must_leave_room() -> None:
    with pytest.raises(ValueError, match="max_entries"):
        ContainerIds(Path("/proc"), max_entries=0)
    with pytest.raises(ValueError, match="max_entries"):
        ContainerIndex(max_entries=0)
    with pytest.raises(ValueError, match="backlog"):
        Backlog[str](max_events=0)
    with pytest.raises(ValueError, match="backlog"):
        Backlog[str](max_age=0)


# --- pid -> container id on the real /proc ---------------------------------------------------------
def test_this_process_is_read_from_the_real_proc() -> None:
    ids = ContainerIds(Path("/proc"))
    # Whatever runs the tests (a host, or a container of a CI), the answer is what its cgroup file says.
    assert ids.lookup(os.getpid()) == container_id_from_cgroup(Path("/proc/self/cgroup").read_text())
    pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
    assert ids.lookup(pid_max + 1) is None


def _cgroup_mount() -> Path | None:
    """A cgroup hierarchy to create a group in: the v2 one (pure or hybrid), else v1 `pids`."""
    mounts = [line.split() for line in Path("/proc/self/mounts").read_text().splitlines()]
    for fields in mounts:
        if fields[2] == "cgroup2":
            return Path(fields[1])
    for fields in mounts:
        if fields[2] == "cgroup" and "pids" in fields[3].split(","):
            return Path(fields[1])
    return None


Child = tuple[subprocess.Popen[bytes], str]


@contextmanager
def _in_container_cgroup(mount: Path) -> Iterator[Child]:
    """A `sleep` moved into a new cgroup named like a container (a 64-hex id), removed afterwards."""
    container_id = uuid.uuid4().hex + uuid.uuid4().hex
    parent = mount / f"spo-attribution-test-{uuid.uuid4().hex[:8]}"
    group = parent / container_id
    try:
        group.mkdir(parents=True)
    except OSError as error:
        pytest.skip(f"cgroups are not writable here ({mount}: {error.strerror})")
    child = subprocess.Popen(["sleep", "600"])
    try:
        try:
            (group / "cgroup.procs").write_text(str(child.pid))
        except OSError as error:
            pytest.skip(f"cannot move a process into {group} ({error.strerror})")
        yield child, container_id
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
        group.rmdir()
        parent.rmdir()


@pytest.fixture
def container_children() -> Callable[[], AbstractContextManager[Child]]:
    """Makes children in cgroups named like containers (see _in_container_cgroup)."""
    mount = _cgroup_mount()
    if mount is None:
        pytest.skip("no cgroup hierarchy is mounted")
    return lambda: _in_container_cgroup(mount)


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_a_child_in_a_container_cgroup_is_attributed_until_it_exits(
    container_children: Callable[[], AbstractContextManager[Child]],
) -> None:
    with container_children() as (child, container_id):
        ids = ContainerIds(Path("/proc"))
        before = _open_fds()
        assert ids.lookup(child.pid) == container_id
        assert ids.lookup(os.getpid()) != container_id
        assert (len(ids), _open_fds()) == (1, before + 1)  # the child's /proc directory, held open
        child.send_signal(signal.SIGKILL)
        child.wait()
        assert ids.lookup(child.pid) is None
        assert (len(ids), _open_fds()) == (0, before)


def test_a_pid_taken_by_another_process_is_read_again_on_the_real_proc(
    tmp_path: Path, container_children: Callable[[], AbstractContextManager[Child]]
) -> None:
    # The kernel cannot be made to reuse a pid on demand: a tree whose entry 1234 is a link to a real
    # process's directory, then to another's once the first has exited, is a pid taken again.
    entry = tmp_path / "1234"
    ids = ContainerIds(tmp_path)
    with container_children() as (first, first_id):
        entry.symlink_to(f"/proc/{first.pid}")
        found = ids.lookup_process(1234)
        assert found is not None and found[0] == first_id
    with container_children() as (second, second_id):
        entry.unlink()
        entry.symlink_to(f"/proc/{second.pid}")
        assert ids.lookup(1234) == second_id
        assert len(ids) == 1
    ids.close()


# --- container id -> pod ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (f"containerd://{CONTAINERD_ID}", CONTAINERD_ID),
        (f"cri-o://{JSON_TEST_ID}", JSON_TEST_ID),
        (f"docker://{CRIO_ID}", CRIO_ID),
        (CRIO_ID, CRIO_ID),
        ("", None),
        ("containerd://", None),
        (f"containerd://{CRIO_ID[:-1]}", None),
        (f"containerd://{CRIO_ID}0", None),
        (f"containerd://{CRIO_ID.upper()}", None),
        (None, None),
        (42, None),
    ],
)
def test_container_id_from_status(value: object, expected: str | None) -> None:
    assert container_id_from_status(value) == expected


def _pod(
    name: str = "my-pod",
    namespace: str = "my-namespace",
    *,
    containers: dict[str, Any] | None = None,
    init: dict[str, Any] | None = None,
    ephemeral: dict[str, Any] | None = None,
    annotations: dict[str, str] | None = None,
    labels: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A pod as the API returns it; each container maps a name to a containerID or a full status."""

    def statuses(named: dict[str, Any] | None) -> list[dict[str, Any]]:
        return [
            value if isinstance(value, dict) else {"name": key, "containerID": value, "ready": True}
            for key, value in (named or {}).items()
        ]

    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": "7b1e-uid",
            "labels": labels or {},
            "annotations": annotations or {},
        },
        "spec": {"nodeName": "worker-1"},
        "status": {
            "phase": "Running",
            "containerStatuses": statuses(containers),
            "initContainerStatuses": statuses(init),
            "ephemeralContainerStatuses": statuses(ephemeral),
        },
    }


def _restarted(container: str, current: str, previous: str) -> dict[str, Any]:
    """A pod whose container restarted: its status names the current and the previous instance."""
    status = {
        "name": container,
        "containerID": f"containerd://{current}",
        "restartCount": 1,
        "lastState": {"terminated": {"containerID": f"containerd://{previous}", "exitCode": 1}},
    }
    return _pod(containers={container: status})


def _ids(pod: dict[str, Any]) -> list[tuple[str, str]]:
    return [(c.container, c.container_id) for c in containers_of(pod)[0]]


CONTAINERS = [
    pytest.param(
        _pod(containers={"nginx": f"cri-o://{JSON_TEST_ID}"}), [("nginx", JSON_TEST_ID)], 0, id="crio"
    ),
    pytest.param(
        _pod(
            containers={"redis": f"containerd://{CONTAINERD_ID}"},
            init={"init": f"docker://{CRIO_ID}"},
            ephemeral={"debugger": f"containerd://{CONMON_ID}"},
        ),
        [("init", CRIO_ID), ("redis", CONTAINERD_ID), ("debugger", CONMON_ID)],
        0,
        id="init-regular-ephemeral",
    ),
    pytest.param(
        _pod(containers={"creating": "", "waiting": {"name": "waiting"}}),
        [],
        0,
        id="containers-being-created-have-no-id-yet",
    ),
    pytest.param(
        _pod(containers={"bad": "containerd://not-an-id", "good": f"containerd://{CRIO_ID}"}),
        [("good", CRIO_ID)],
        1,
        id="malformed-id-skipped-and-counted",
    ),
    pytest.param(
        _restarted("app", CONTAINERD_ID, CRIO_ID),
        [("app", CONTAINERD_ID), ("app", CRIO_ID)],
        0,
        id="restarted-container-keeps-its-previous-instance",
    ),
    pytest.param(
        _pod(containers={"x": {"containerID": f"containerd://{CRIO_ID}"}}), [], 1, id="status-without-name"
    ),
    pytest.param({"metadata": {"name": "no-namespace"}, "status": {}}, [], 0, id="no-namespace"),
    pytest.param({"metadata": "junk", "status": ["junk"]}, [], 0, id="junk"),
    pytest.param(
        {"metadata": {"name": "p", "namespace": "n"}, "status": {"containerStatuses": "junk"}},
        [],
        0,
        id="statuses-not-a-list",
    ),
]


@pytest.mark.parametrize(("pod", "expected", "skipped"), CONTAINERS)
def test_containers_of(pod: dict[str, Any], expected: list[tuple[str, str]], skipped: int) -> None:
    assert _ids(pod) == expected
    assert containers_of(pod)[1] == skipped


def test_container_info_carries_the_pod_and_its_recording_annotations() -> None:
    pod = _pod(
        "my-pod",
        "my-namespace",
        containers={"nginx": f"cri-o://{JSON_TEST_ID}", "redis": f"cri-o://{CRIO_ID}"},
        # As the recording webhook writes them (docs 7.6.3): one per container and kind.
        annotations={
            "io.containers.trace-logs/nginx": "test-recording_nginx_6kmrb_1684331729",
            "io.containers.trace-avcs/redis": "test-recording_redis_6kmrb_1684331729",
            "other": "kept-out",
        },
        labels={"app": "my-app"},
    )
    nginx, redis = containers_of(pod)[0]
    assert (nginx.namespace, nginx.pod, nginx.container, nginx.pod_uid) == (
        "my-namespace",
        "my-pod",
        "nginx",
        "7b1e-uid",
    )
    assert (nginx.seccomp_recording, nginx.selinux_recording) == ("test-recording_nginx_6kmrb_1684331729", "")
    assert (redis.seccomp_recording, redis.selinux_recording) == ("", "test-recording_redis_6kmrb_1684331729")
    assert nginx.labels == {"app": "my-app"}


def test_index_follows_adds_updates_and_deletes() -> None:
    index = ContainerIndex()
    pod = _pod(containers={"nginx": f"containerd://{CRIO_ID}"})
    assert index.update(pod) == [CRIO_ID]
    info = index.get(CRIO_ID)
    assert info is not None
    assert (info.namespace, info.pod, info.container) == ("my-namespace", "my-pod", "nginx")
    assert index.update(pod) == []  # nothing new

    # The container restarts: the new instance is new, the previous one still attributes.
    assert index.update(_restarted("nginx", CONTAINERD_ID, CRIO_ID)) == [CONTAINERD_ID]
    assert index.get(CRIO_ID) is not None
    # Restarted again: the instance before the previous one is gone from the status, and from the index.
    assert index.update(_restarted("nginx", CONMON_ID, CONTAINERD_ID)) == [CONMON_ID]
    assert index.get(CRIO_ID) is None
    assert len(index) == 2

    other = _pod("other", containers={"c": f"containerd://{JSON_TEST_ID}"})
    index.update(other)
    index.remove("my-namespace", "my-pod")
    assert [index.get(i) for i in (CONMON_ID, CONTAINERD_ID)] == [None, None]
    other_info = index.get(JSON_TEST_ID)
    assert other_info is not None
    assert other_info.pod == "other"
    index.remove("my-namespace", "never-seen")
    assert len(index) == 1


def test_index_counts_malformed_ids() -> None:
    index = ContainerIndex()
    assert index.update(_pod(containers={"bad": "containerd://xyz", "creating": ""})) == []
    assert index.skipped == 1


def test_index_is_bounded_least_recently_updated_first() -> None:
    index = ContainerIndex(max_entries=2)
    index.update(_pod("a", containers={"c": f"containerd://{CRIO_ID}"}))
    index.update(_pod("b", containers={"c": f"containerd://{CONTAINERD_ID}"}))
    index.update(_pod("a", containers={"c": f"containerd://{CRIO_ID}"}))  # a is now the newer
    assert index.update(_pod("c", containers={"c": f"containerd://{CONMON_ID}"})) == [CONMON_ID]
    assert (index.get(CRIO_ID) is not None, index.get(CONTAINERD_ID), index.get(CONMON_ID) is not None) == (
        True,
        None,
        True,
    )
    assert index.evicted == 1
    # A pod with more containers than the bound keeps the last ones; only those are reported new.
    crowded = _pod("d", containers={"x": f"docker://{OUTER_ID}", "y": f"docker://{JSON_TEST_ID}"})
    assert index.update(crowded) == [OUTER_ID, JSON_TEST_ID]
    index.remove("my-namespace", "a")  # already evicted: nothing left to forget, nothing broken
    assert len(index) == 2


def test_node_pod_keeps_only_identity_and_containers() -> None:
    pod = NodePod.model_validate(
        _pod(containers={"nginx": f"cri-o://{JSON_TEST_ID}", "bad": "cri-o://x"}, labels={"a": "b"})
    )
    assert [c.container_id for c in pod.containers] == [JSON_TEST_ID]
    assert pod.skipped_ids == 1
    assert (pod.metadata.name, pod.metadata.namespace, pod.metadata.labels) == (
        "my-pod",
        "my-namespace",
        None,
    )
    assert "status" not in pod.model_dump(by_alias=True)


# --- the backlog -----------------------------------------------------------------------------------
def test_backlog_releases_a_containers_events_in_order() -> None:
    backlog = Backlog[str](max_events=10, max_age=60)
    backlog.add(CRIO_ID, "a1", now=0)
    backlog.add(CONTAINERD_ID, "b1", now=1)
    backlog.add(CRIO_ID, "a2", now=2)
    assert len(backlog) == 3
    assert backlog.release(CRIO_ID, now=3) == ["a1", "a2"]
    assert backlog.release(CRIO_ID, now=3) == []
    assert backlog.release("unknown", now=3) == []
    assert backlog.release(CONTAINERD_ID, now=3) == ["b1"]
    assert len(backlog) == 0
    assert (backlog.dropped_full, backlog.dropped_expired) == (0, 0)


def test_backlog_drops_the_oldest_event_when_full() -> None:
    backlog = Backlog[str](max_events=3, max_age=60)
    for n, (container, event) in enumerate([(CRIO_ID, "a1"), (CONTAINERD_ID, "b1"), (CRIO_ID, "a2")]):
        backlog.add(container, event, now=n)
    backlog.add(CONTAINERD_ID, "b2", now=3)  # drops a1
    backlog.add(CONTAINERD_ID, "b3", now=4)  # drops b1
    assert backlog.dropped_full == 2
    assert len(backlog) == 3
    assert backlog.release(CRIO_ID, now=5) == ["a2"]
    assert backlog.release(CONTAINERD_ID, now=5) == ["b2", "b3"]


def test_backlog_drops_events_past_the_maximum_age() -> None:
    backlog = Backlog[str](max_events=10, max_age=30)
    backlog.add(CRIO_ID, "old", now=0)
    backlog.add(CONTAINERD_ID, "other-old", now=5)
    backlog.add(CRIO_ID, "young", now=20)
    assert backlog.release(CRIO_ID, now=31) == ["young"]
    assert backlog.dropped_expired == 1
    backlog.expire(now=36)
    assert len(backlog) == 0
    assert backlog.dropped_expired == 2
    backlog.add(CRIO_ID, "fresh", now=100)
    assert backlog.release(CRIO_ID, now=130) == ["fresh"]  # exactly the maximum age still waits


class ReferenceBacklog:
    """The backlog's rules spelled as plainly as possible: one list, oldest first."""

    def __init__(self, max_events: int, max_age: float) -> None:
        self.max_events, self.max_age = max_events, max_age
        self.events: list[tuple[str, float, int]] = []
        self.dropped_full = self.dropped_expired = 0

    def expire(self, now: float) -> None:
        while self.events and self.events[0][1] < now - self.max_age:
            self.events.pop(0)
            self.dropped_expired += 1

    def add(self, container: str, event: int, now: float) -> None:
        self.expire(now)
        if len(self.events) >= self.max_events:
            self.events.pop(0)
            self.dropped_full += 1
        self.events.append((container, now, event))

    def release(self, container: str, now: float) -> list[int]:
        self.expire(now)
        released = [e for c, _, e in self.events if c == container]
        self.events = [item for item in self.events if item[0] != container]
        return released


OPERATIONS = st.lists(
    st.tuples(st.sampled_from(["add", "release", "expire"]), st.sampled_from("abc"), st.integers(0, 20)),
    max_size=60,
)


@given(OPERATIONS, st.integers(1, 6), st.integers(1, 40))
def test_backlog_behaves_as_the_plain_reference(
    operations: list[tuple[str, str, int]], max_events: int, max_age: int
) -> None:
    backlog, reference = Backlog[int](max_events, max_age), ReferenceBacklog(max_events, max_age)
    now = 0.0
    for number, (operation, container, step) in enumerate(operations):
        now += step  # the caller's clock never goes back
        if operation == "add":
            backlog.add(container, number, now)
            reference.add(container, number, now)
        elif operation == "release":
            assert backlog.release(container, now) == reference.release(container, now)
        else:
            backlog.expire(now)
            reference.expire(now)
        assert len(backlog) == len(reference.events) <= max_events
        assert (backlog.dropped_full, backlog.dropped_expired) == (
            reference.dropped_full,
            reference.dropped_expired,
        )


# --- the watch's selectors -------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("optimised", "labels"), [(False, None), (True, "spo.x-k8s.io/enable-recording=true")]
)
def test_pod_selectors(optimised: bool, labels: str | None) -> None:
    assert pod_selectors("worker-1", optimised) == ("spec.nodeName=worker-1", labels)
