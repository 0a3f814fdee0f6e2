"""The agent's pure seccomp logic (base profiles, allow-lists, file bytes), its node files, and the
written files loaded into the real kernel with libseccomp in a child process."""

from __future__ import annotations

import errno
import json
import multiprocessing
import os
import stat
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import pytest

from agent import seccomp_logic
from agent.files import DirectoryFiles
from agent.seccomp_logic import ProfileError, check_allowed, render, resolve_syscalls, union_syscalls
from api.baseprofiles import BUILTIN_SYSCALLS, builtin_base_profiles, builtin_spec
from api.types import SeccompProfileSpec, Syscall


def spec(**fields: Any) -> SeccompProfileSpec:
    return SeccompProfileSpec.model_validate({"defaultAction": "SCMP_ACT_ERRNO", **fields})


def allow(*names: str, action: str = "SCMP_ACT_ALLOW") -> dict[str, Any]:
    return {"names": list(names), "action": action}


def _none(_: str) -> SeccompProfileSpec | None:
    return None


# --- file bytes ----------------------------------------------------------------------------------


def test_docs_profile1_renders_as_upstream() -> None:
    profile1 = SeccompProfileSpec.model_validate({"defaultAction": "SCMP_ACT_LOG"})
    assert render(profile1, []) == b'{"defaultAction":"SCMP_ACT_LOG"}'


def test_render_keeps_field_order_and_omits_zero_values() -> None:
    full = spec(
        baseProfileName="runc-v1.0.0",
        architectures=["SCMP_ARCH_X86_64"],
        syscalls=[
            {"names": ["mkdir"], "action": "SCMP_ACT_ERRNO", "errnoRet": 0},
            {
                "names": ["personality"],
                "action": "SCMP_ACT_ALLOW",
                "args": [{"index": 0, "value": 0, "op": "SCMP_CMP_EQ"}],
            },
        ],
        flags=["SECCOMP_FILTER_FLAG_LOG"],
    )
    assert full.syscalls is not None
    assert render(full, full.syscalls) == (
        b'{"baseProfileName":"runc-v1.0.0","defaultAction":"SCMP_ACT_ERRNO",'
        b'"architectures":["SCMP_ARCH_X86_64"],"syscalls":[{"names":["mkdir"],"action":"SCMP_ACT_ERRNO"},'
        b'{"names":["personality"],"action":"SCMP_ACT_ALLOW","args":[{"index":0,"op":"SCMP_CMP_EQ"}]}],'
        b'"flags":["SECCOMP_FILTER_FLAG_LOG"]}'
    )


# --- base profiles -------------------------------------------------------------------------------


def test_union_one_name_per_entry_less_restrictive_wins_sorted() -> None:
    base = [
        Syscall.model_validate(allow("write", "read")),
        Syscall.model_validate(allow("mkdir", action="SCMP_ACT_LOG")),
    ]
    own = [
        Syscall.model_validate({"names": ["mkdir", "write"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13}),
        Syscall.model_validate(allow("chmod", action="SCMP_ACT_KILL")),
    ]
    merged = union_syscalls(base, own)
    assert [(s.names, s.action, s.errno_ret) for s in merged] == [
        (["chmod"], "SCMP_ACT_KILL", None),
        (["mkdir"], "SCMP_ACT_LOG", None),
        (["read"], "SCMP_ACT_ALLOW", None),
        (["write"], "SCMP_ACT_ALLOW", None),
    ]


def test_union_of_conditional_and_unconditional_is_unconditional() -> None:
    conditional = Syscall.model_validate(
        {"names": ["personality"], "action": "SCMP_ACT_ALLOW", "args": [{"index": 0, "op": "SCMP_CMP_EQ"}]}
    )
    merged = union_syscalls([conditional], [Syscall.model_validate(allow("personality"))])
    assert merged[0].args is None


def test_base_profiles_resolve_recursively() -> None:
    specs = {
        "middle": spec(baseProfileName="bottom", syscalls=[allow("read")]),
        "bottom": spec(syscalls=[allow("write")]),
    }
    top = spec(baseProfileName="middle", syscalls=[allow("exit_group")])
    resolved = resolve_syscalls("top", top, specs.get)
    assert [s.names[0] for s in resolved] == ["exit_group", "read", "write"]


def test_base_profile_cycle_is_named() -> None:
    specs = {"a": spec(baseProfileName="b"), "b": spec(baseProfileName="a")}
    with pytest.raises(ProfileError, match=r"cycle: a -> b -> a") as caught:
        resolve_syscalls("a", specs["a"], specs.get)
    assert caught.value.reason == seccomp_logic.INVALID


def test_base_profile_depth_is_limited() -> None:
    specs = {f"p{i}": spec(baseProfileName=f"p{i + 1}") for i in range(40)}
    with pytest.raises(ProfileError, match="deeper than 15"):
        resolve_syscalls("p0", specs["p0"], specs.get)


def test_missing_base_profile_is_an_error() -> None:
    with pytest.raises(ProfileError, match="'absent' of 'mine' does not exist"):
        resolve_syscalls("mine", spec(baseProfileName="absent"), _none)


def test_oci_base_profile_is_not_supported_yet() -> None:
    with pytest.raises(ProfileError, match="OCI base profiles are not supported yet") as caught:
        resolve_syscalls("mine", spec(baseProfileName="oci://ghcr.io/security-profiles/runc:v1.4.2"), _none)
    assert caught.value.reason == seccomp_logic.CANNOT_PULL


def test_docs_example_on_builtin_runc_base() -> None:
    example = spec(baseProfileName="runc-v1.0.0", syscalls=[allow("exit_group")])
    resolved = resolve_syscalls("example-name", example, builtin_spec)
    assert [s.names[0] for s in resolved] == sorted({"exit_group", *BUILTIN_SYSCALLS["runc-v1.0.0"]})
    assert {p.metadata.name for p in builtin_base_profiles()} == set(BUILTIN_SYSCALLS)
    assert len(BUILTIN_SYSCALLS["runc-v1.4.2"]) == 40 and len(BUILTIN_SYSCALLS["runc-v1.3.0"]) == 37


# --- spod allow-lists (docs 7.8.1, inventory §4.4) -------------------------------------------------

ALLOWED = ["exit", "exit_group", "futex", "nanosleep"]


@pytest.mark.parametrize(
    "profile",
    [spec(syscalls=[allow(*ALLOWED)]), spec(), spec(syscalls=[allow("bpf", action="SCMP_ACT_ERRNO")])],
)
def test_compliant_profiles_pass(profile: SeccompProfileSpec) -> None:
    check_allowed(profile, profile.syscalls or [], ALLOWED, None)


@pytest.mark.parametrize(
    ("profile", "actions", "message"),
    [
        (spec(syscalls=[allow("exit", "bpf")]), None, "syscall not allowed: bpf"),
        (spec(defaultAction="SCMP_ACT_ALLOW"), None, "seccomp profile not allowed"),
        (spec(syscalls=[allow("mkdir", action="SCMP_ACT_LOG")]), None, "syscall not allowed: mkdir"),
        (spec(), ["SCMP_ACT_KILL"], "seccomp action not allowed: SCMP_ACT_KILL"),
    ],
)
def test_non_compliant_profiles_say_why(
    profile: SeccompProfileSpec, actions: list[str] | None, message: str
) -> None:
    with pytest.raises(ProfileError, match=message) as caught:
        check_allowed(profile, profile.syscalls or [], ALLOWED, actions)
    assert caught.value.reason == seccomp_logic.NOT_ALLOWED


def test_nothing_is_checked_without_allowed_syscalls() -> None:
    check_allowed(spec(defaultAction="SCMP_ACT_ALLOW"), [], None, ["SCMP_ACT_LOG"])


# --- node files ----------------------------------------------------------------------------------


def test_files_are_written_atomically_with_modes_and_only_on_change(tmp_path: Path) -> None:
    files = DirectoryFiles(tmp_path / "seccomp" / "operator", ".json")
    assert files.write("profile1", b"{}") is True
    path = tmp_path / "seccomp" / "operator" / "profile1.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o744
    inode = path.stat().st_ino
    assert files.write("profile1", b"{}") is False
    assert path.stat().st_ino == inode
    assert files.write("profile1", b"[]") is True and path.read_bytes() == b"[]"
    assert files.names() == {"profile1.json"}
    assert files.remove("profile1") is True and files.remove("profile1") is False


@pytest.mark.parametrize("name", ["../escape", "a/b", "..", ".", "UPPER", "", "x\x00y"])
def test_names_never_leave_the_directory(tmp_path: Path, name: str) -> None:
    files = DirectoryFiles(tmp_path / "operator", ".json")
    with pytest.raises(ValueError, match="cannot name a file"):
        files.write(name, b"{}")
    assert not any(tmp_path.rglob("*.json"))


def test_sweep_removes_temporary_files(tmp_path: Path) -> None:
    files = DirectoryFiles(tmp_path, ".json")
    (tmp_path / ".tmp-abc").write_bytes(b"{")
    files.write("kept", b"{}")
    files.sweep()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept.json"]


# --- the written files, enforced by the kernel ------------------------------------------------------


def _load_and_try(profile_json: bytes, sender: Connection, probe_dir: str) -> None:
    """In a child: load the profile with libseccomp as runc would, then try a few syscalls."""
    import pyseccomp as seccomp  # type: ignore[import-untyped]

    def action(name: str, errno_ret: int | None) -> Any:
        fixed = {"SCMP_ACT_ALLOW": seccomp.ALLOW, "SCMP_ACT_LOG": seccomp.LOG, "SCMP_ACT_KILL": seccomp.KILL}
        return fixed.get(name) or seccomp.ERRNO(errno_ret if errno_ret is not None else errno.EPERM)

    profile = json.loads(profile_json)
    result: dict[str, int] = {}
    try:
        scfilter = seccomp.SyscallFilter(action(profile["defaultAction"], None))
        for entry in profile.get("syscalls", []):
            for name in entry["names"]:
                scfilter.add_rule(action(entry["action"], entry.get("errnoRet")), name)
        scfilter.load()
    except Exception as error:
        sender.send({"load_error": 1, "detail": hash(str(error))})
        return
    for label, call in (
        ("mkdir", lambda: os.mkdir(os.path.join(probe_dir, "made"))),
        ("getpid", os.getpid),
    ):
        try:
            call()
            result[label] = 0
        except OSError as error:
            result[label] = error.errno or -1
    sender.send(result)


def _enforced(content: bytes, probe_dir: Path) -> dict[str, int]:
    context = multiprocessing.get_context("fork")
    # A pipe, not a Queue: a Queue's feeder thread needs clone(), which the filter may deny.
    receiver, sender = context.Pipe(duplex=False)
    child = context.Process(target=_load_and_try, args=(content, sender, str(probe_dir)))
    child.start()
    assert receiver.poll(60), "the child reported nothing"
    result: dict[str, int] = receiver.recv()
    child.join(timeout=60)
    return result


# What a Python child needs after the filter is loaded to try the probes and report back.
_PYTHON_RUNTIME = [
    "brk", "close", "exit", "exit_group", "fstat", "futex", "getpid", "getrandom", "ioctl", "lseek",
    "madvise", "mmap", "mprotect", "munmap", "newfstatat", "openat", "poll", "read", "rt_sigaction",
    "rt_sigprocmask", "rt_sigreturn", "select", "sigaltstack", "write", "writev", "clock_gettime",
    "gettid", "getuid", "fcntl", "pselect6", "ppoll", "epoll_wait", "epoll_pwait", "wait4", "sendto",
    "recvfrom", "getppid",
]  # fmt: skip


@pytest.mark.parametrize(
    ("profile", "mkdir_errno"),
    [
        # An ERRNO default with a short allow list: mkdir is denied with the errno the profile gives.
        (spec(syscalls=[allow(*_PYTHON_RUNTIME)]), errno.EPERM),
        (
            spec(
                syscalls=[
                    allow(*_PYTHON_RUNTIME),
                    {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13},
                ]
            ),
            errno.EACCES,
        ),
        # The docs' example on the built-in runc base: the base's syscalls are allowed, mkdir is not.
        (spec(baseProfileName="runc-v1.0.0", syscalls=[allow("exit_group", *_PYTHON_RUNTIME)]), errno.EPERM),
        # The docs' profile1 (SCMP_ACT_LOG default): everything runs, logged.
        (SeccompProfileSpec.model_validate({"defaultAction": "SCMP_ACT_LOG"}), 0),
    ],
)
def test_written_file_is_enforced_by_the_kernel(
    tmp_path: Path, profile: SeccompProfileSpec, mkdir_errno: int
) -> None:
    files = DirectoryFiles(tmp_path / "seccomp" / "operator", ".json")
    files.write("probe", render(profile, resolve_syscalls("probe", profile, builtin_spec)))
    content = files.read("probe")
    assert content is not None
    result = _enforced(content, tmp_path)
    assert result == {"mkdir": mkdir_errno, "getpid": 0}
    assert (tmp_path / "made").exists() == (mkdir_errno == 0)
