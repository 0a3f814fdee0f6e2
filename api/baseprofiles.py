"""Built-in base profiles: the syscalls each container runtime needs to start a container, as data.

The docs' 7.8.2 example names `baseProfileName: runc-v1.0.0`, which upstream never ships (the profile stays
uninstalled). Here the agent resolves these names when no SeccompProfile of that name exists, and they are
offered as SeccompProfiles (`builtin_base_profiles`) for whoever creates the operator's default objects. A
user's own SeccompProfile of the same name takes precedence. Syscall lists: upstream inventory §4.5.
"""

from __future__ import annotations

from api import constants
from api.types import ObjectMeta, SeccompProfile, SeccompProfileSpec, Syscall

_RUNC_V1_0_0 = (
    "capget capset chdir close epoll_ctl epoll_pwait execve fchown fcntl fstat fstatfs futex getdents64 "
    "getpid getppid nanosleep newfstatat openat prctl read sched_yield setgid setgroups setuid write"
)
_RUNC_V1_3_0 = (
    "arch_prctl brk capget capset chdir close close_range epoll_ctl epoll_pwait execve exit_group "
    "faccessat2 fcntl fstat fstatfs futex getcwd getdents64 getpid getppid getuid mmap mprotect nanosleep "
    "newfstatat openat prctl read recvfrom rt_sigreturn sched_yield set_tid_address setgid setgroups "
    "setuid tgkill write"
)
_RUNC_V1_4_2 = f"{_RUNC_V1_3_0} openat2 sigaltstack statx"
_CRUN = (
    "access arch_prctl brk capset chdir chmod chown close close_range dup2 execve exit_group fchdir fchown "
    "fstat fstatfs getcwd getegid geteuid getgid getuid ioctl lseek mkdirat mknodat mmap mount mprotect "
    "nanosleep newfstatat openat openat2 pivot_root prctl pselect6 read readlink rt_sigaction "
    "rt_sigprocmask set_tid_address setgroups sethostname setns setresgid setresuid setsid statfs statx "
    "symlinkat umask umount2 unshare write"
)

BUILTIN_SYSCALLS: dict[str, tuple[str, ...]] = {
    "runc-v1.0.0": tuple(sorted(_RUNC_V1_0_0.split())),
    "runc-v1.3.0": tuple(sorted(_RUNC_V1_3_0.split())),
    "runc-v1.4.2": tuple(sorted(_RUNC_V1_4_2.split())),
    "crun-v1.22": tuple(sorted(_CRUN.split())),
    "crun-v1.26": tuple(sorted(_CRUN.split())),
}


def builtin_spec(name: str) -> SeccompProfileSpec | None:
    """The spec of the built-in base profile `name`, or None when there is none of that name."""
    names = BUILTIN_SYSCALLS.get(name)
    if names is None:
        return None
    return SeccompProfileSpec(
        default_action="SCMP_ACT_ERRNO",
        syscalls=[Syscall(names=list(names), action="SCMP_ACT_ALLOW")],
    )


def builtin_base_profiles() -> list[SeccompProfile]:
    """Every built-in base profile as a SeccompProfile object, labelled as built-in."""
    profiles = []
    for name in BUILTIN_SYSCALLS:
        spec = builtin_spec(name)
        assert spec is not None
        profiles.append(
            SeccompProfile(
                api_version=f"{constants.GROUP}/{SeccompProfile.VERSION}",
                kind=SeccompProfile.KIND,
                metadata=ObjectMeta(name=name, labels={constants.LABEL_BUILTIN_BASE_PROFILE: "true"}),
                spec=spec,
            )
        )
    return profiles
