"""The agent's node files: one directory per profile kind, written atomically, never left.

A reader (the kubelet, runc) either sees the previous file or the new one, never half of one: content
goes to a hidden temporary file in the same directory, is flushed to disk, then renamed over the target.
A crash leaves at most a temporary file, which `sweep` removes on the next start.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Protocol

FILE_MODE = 0o644
DIR_MODE = 0o744
_TEMP_PREFIX = ".tmp-"
# File names come from profile names (DNS-1123 subdomains) plus a suffix; checked again here so that
# nothing but a plain name in this directory can ever be written or removed.
_SAFE_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")


class NodeFiles(Protocol):
    """What the agent's loop needs of a handler's node files (the handler writes them itself)."""

    def remove(self, name: str) -> bool:
        """Remove the file; True when there was one."""

    def names(self) -> set[str]:
        """The files present."""

    def sweep(self) -> None:
        """Remove temporary files a crash left behind."""


class DirectoryFiles:
    """Files in one directory, named `<name><suffix>`."""

    def __init__(self, directory: Path, suffix: str) -> None:
        self.directory = directory
        self.suffix = suffix

    def path(self, name: str) -> Path:
        file_name = name if name.endswith(self.suffix) else f"{name}{self.suffix}"
        if not _SAFE_NAME.match(file_name) or ".." in file_name:
            raise ValueError(f"{name!r} cannot name a file in {self.directory}")
        return self.directory / file_name

    def ensure_directory(self) -> None:
        self.directory.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        self.directory.chmod(DIR_MODE)

    def read(self, name: str) -> bytes | None:
        try:
            return self.path(name).read_bytes()
        except FileNotFoundError:
            return None

    def write(self, name: str, content: bytes) -> bool:
        target = self.path(name)
        if self.read(name) == content:
            return False
        self.ensure_directory()
        fd, temporary = tempfile.mkstemp(prefix=_TEMP_PREFIX, dir=self.directory)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(content)
                out.flush()
                os.fsync(out.fileno())
            os.chmod(temporary, FILE_MODE)
            os.replace(temporary, target)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        return True

    def remove(self, name: str) -> bool:
        try:
            self.path(name).unlink()
        except FileNotFoundError:
            return False
        return True

    def names(self) -> set[str]:
        if not self.directory.is_dir():
            return set()
        return {
            entry.name
            for entry in self.directory.iterdir()
            if entry.name.endswith(self.suffix) and not entry.name.startswith(_TEMP_PREFIX)
        }

    def sweep(self) -> None:
        if self.directory.is_dir():
            for entry in self.directory.glob(f"{_TEMP_PREFIX}*"):
                entry.unlink(missing_ok=True)
