"""Syscall numbers to names, as libseccomp names them (the names seccomp profiles use).

`syscall_name(number, arch)` takes the number and the audit arch token of an audit line
(`SeccompEvent.syscall`, `SeccompEvent.arch`) and returns the name, e.g. `syscall_name(83, 0xc000003e)`
is "mkdir"; `native_arch()` is the token of this machine (the architecture recorded profiles name).
A number or arch libseccomp does not know gives `unknown-syscall(<arch hex>:<number>)` (see
`is_known`), never an error. Lines from 32-bit processes on a 64-bit node carry their own arch and are
named from that arch's table, so they are not misnamed with the native numbers.

libseccomp (`libseccomp.so.2`, loaded with ctypes once, at first use) is the table runc and crun load
profiles with, so a recorded name is one they accept. Without it, `LibseccompMissingError` is raised at the
first call: silently unnamed syscalls would make every recorded profile wrong.

Results are cached; callable from any thread.
"""

from __future__ import annotations

import ctypes
import functools

from api.constants import LIBSECCOMP_SONAME, UNKNOWN_SYSCALL_PREFIX


class LibseccompMissingError(RuntimeError):
    """libseccomp cannot be loaded, so no syscall can be named."""


class _Libseccomp:
    def __init__(self) -> None:
        try:
            lib = ctypes.CDLL(LIBSECCOMP_SONAME)
            libc = ctypes.CDLL(None)
        except OSError as error:
            raise LibseccompMissingError(
                f"cannot load {LIBSECCOMP_SONAME} to name syscalls (install libseccomp2): {error}"
            ) from error
        self._resolve = lib.seccomp_syscall_resolve_num_arch
        self._resolve.argtypes = [ctypes.c_uint32, ctypes.c_int]
        # A pointer rather than c_char_p: libseccomp returns a copy the caller must free.
        self._resolve.restype = ctypes.c_void_p
        self._free = libc.free
        self._free.argtypes = [ctypes.c_void_p]
        self._free.restype = None
        arch_native = lib.seccomp_arch_native
        arch_native.argtypes = []
        arch_native.restype = ctypes.c_uint32
        self.native_arch: int = arch_native()

    def name(self, number: int, arch: int) -> str | None:
        pointer = self._resolve(arch, number)
        if not pointer:
            return None
        try:
            return ctypes.string_at(pointer).decode()
        finally:
            self._free(pointer)


@functools.cache
def _libseccomp() -> _Libseccomp:
    return _Libseccomp()


def native_arch() -> int:
    """This machine's audit arch token (libseccomp's SCMP_ARCH_NATIVE resolved), e.g. 0xc000003e."""
    return _libseccomp().native_arch


_INT_MIN, _INT_MAX = -(2**31), 2**31 - 1
_UINT32_MAX = 2**32 - 1


@functools.lru_cache(maxsize=4096)
def syscall_name(number: int, arch: int) -> str:
    """The syscall's name on that arch, or `unknown-syscall(<arch hex>:<number>)` (see module)."""
    # Arch 0 would make libseccomp use the native table: a line without a real arch is not named.
    known = 0 < arch <= _UINT32_MAX and _INT_MIN <= number <= _INT_MAX
    name = _libseccomp().name(number, arch) if known else None
    return name if name is not None else f"{UNKNOWN_SYSCALL_PREFIX}({arch:x}:{number})"


def is_known(name: str) -> bool:
    """Whether `syscall_name` named the syscall rather than falling back."""
    return not name.startswith(UNKNOWN_SYSCALL_PREFIX)
