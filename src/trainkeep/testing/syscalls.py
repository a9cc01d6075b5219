"""The system-call hook that FaultyStorage installs in a LocalStorage: every call that changes the disk becomes
an operation that is counted, recorded (with the bytes written, for the power-loss model) and can be failed.

``makedirs`` and ``rmtree`` are decomposed into one ``mkdir`` per directory created and one ``unlink`` or
``rmdir`` per entry removed, because each of those is a separate change to a directory, which a crash can
interrupt and a power loss can undo.
"""

from __future__ import annotations

import errno as _errno
import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

from trainkeep._internal.storage.syscalls import CopyChunk, Syscalls
from trainkeep.testing.ops import Op, Recorder

T = TypeVar("T")


class FaultySyscalls(Syscalls):
    """Route LocalStorage's system calls through ``owner`` (a FaultyStorage), then make them with ``real``.

    Calls are serialised while they run, so the recorded order is the order in which they happened, even
    when put_tree copies several files in parallel threads.
    """

    def __init__(self, owner: Recorder, real: Syscalls) -> None:
        self.owner, self.real = owner, real
        self._paths: dict[int, str] = {}

    def _do(self, name: str, path: str, fn: Callable[[], T], partial: Callable[[], Any] | None = None,
            **fields: Any) -> tuple[Op, T | None]:
        with self.owner.mutex:
            op = self.owner.enter(Op("syscall", name, path, **fields))
            if op.dropped:
                return op, None
            if op.partial and partial is not None:
                partial()
                raise OSError(op.partial, os.strerror(op.partial), path)
            try:
                return op, fn()
            except OSError as exc:
                op.error = _errno.errorcode.get(exc.errno or 0, str(exc.errno))
                raise

    def create(self, path: str) -> int:
        with self.owner.mutex:
            op, fd = self._do("create", path, lambda: self.real.create(path))
            assert fd is not None
            op.fd, self._paths[fd] = fd, path
            return fd

    def open_append(self, path: str) -> int:
        with self.owner.mutex:
            op, fd = self._do("open_append", path, lambda: self.real.open_append(path))
            assert fd is not None
            op.fd, self._paths[fd] = fd, path
            return fd

    def write(self, fd: int, data: bytes | memoryview) -> int:
        with self.owner.mutex:
            op, n = self._do("write", self._paths.get(fd, "?"), lambda: self.real.write(fd, data),
                             lambda: self.real.write(fd, data[: len(data) // 2]), fd=fd)
            assert n is not None
            op.size = n
            if self.owner.record_data:
                op.data = bytes(data[:n])
            return n

    def copy(self, method: CopyChunk, fd_in: int, fd_out: int, count: int, offset: int) -> int:
        with self.owner.mutex:
            op, n = self._do("copy", self._paths.get(fd_out, "?"),
                             lambda: self.real.copy(method, fd_in, fd_out, count, offset),
                             lambda: self.real.copy(method, fd_in, fd_out, _half_left(fd_in, offset), offset),
                             fd=fd_out, offset=offset)
            assert n is not None
            op.size = n
            if self.owner.record_data:
                op.data = os.pread(fd_in, n, offset) if n else b""  # what was copied (fd_out is write-only)
            return n

    def fsync(self, fd: int) -> None:
        self._do("fsync", self._paths.get(fd, "?"), lambda: self.real.fsync(fd), fd=fd)

    def fsync_file(self, path: str) -> None:
        self._do("fsync_file", path, lambda: self.real.fsync_file(path))

    def fsync_dir(self, path: str) -> None:
        self._do("fsync_dir", path, lambda: self.real.fsync_dir(path))

    def close(self, fd: int) -> None:
        # not an operation: closing changes nothing a crash could leave behind
        self._paths.pop(fd, None)
        self.real.close(fd)

    def ftruncate(self, fd: int, size: int) -> None:
        self._do("ftruncate", self._paths.get(fd, "?"), lambda: self.real.ftruncate(fd, size), fd=fd, size=size)

    def truncate(self, path: str, size: int) -> None:
        self._do("truncate", path, lambda: self.real.truncate(path, size), size=size)

    def rename(self, src: str, dest: str) -> None:
        self._do("rename", src, lambda: self.real.rename(src, dest), dest=dest)

    def link(self, src: str, dest: str) -> None:
        self._do("link", src, lambda: self.real.link(src, dest), dest=dest)

    def unlink(self, path: str) -> None:
        self._do("unlink", path, lambda: self.real.unlink(path))

    def mkdir(self, path: str) -> None:
        self._do("mkdir", path, lambda: os.mkdir(path))

    def rmdir(self, path: str) -> None:
        self._do("rmdir", path, lambda: os.rmdir(path))

    def makedirs(self, path: str) -> None:
        """Create the missing directories of ``path`` one ``mkdir`` at a time, outermost first."""
        missing, current = [], os.path.abspath(path)
        while not os.path.isdir(current):
            missing.append(current)
            parent = os.path.dirname(current)
            if parent == current:
                break
            current = parent
        for directory in reversed(missing):
            try:
                self.mkdir(directory)
            except FileExistsError:
                if not os.path.isdir(directory):
                    raise

    def rmtree(self, path: str, onerror: Callable[[Callable, str, Any], None]) -> None:
        """Remove ``path`` bottom-up, one ``unlink`` or ``rmdir`` per entry; errors go to ``onerror``."""
        if os.path.islink(path) or not os.path.isdir(path):
            self._guarded(onerror, self.unlink, path)
            return
        for root, dirs, files in os.walk(path, topdown=False):
            for name in sorted(files) + sorted(d for d in dirs if os.path.islink(os.path.join(root, d))):
                self._guarded(onerror, self.unlink, os.path.join(root, name))
            for name in sorted(d for d in dirs if not os.path.islink(os.path.join(root, d))):
                self._guarded(onerror, self.rmdir, os.path.join(root, name))
        self._guarded(onerror, self.rmdir, path)

    @staticmethod
    def _guarded(onerror: Callable[[Callable, str, Any], None], fn: Callable[[str], None], path: str) -> None:
        try:
            fn(path)
        except OSError:
            onerror(fn, path, sys.exc_info())


def _half_left(fd: int, offset: int) -> int:
    return max(0, os.fstat(fd).st_size - offset) // 2
