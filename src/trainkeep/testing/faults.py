"""FaultyStorage: wrap any Storage to count, record, kill, crash or fail its operations.

An *operation* is one call of the Storage surface (``write_atomic``, ``put_tree``, ``listdir``, ...) and, when
the wrapped storage is a :class:`~trainkeep._internal.storage.LocalStorage`, also one of the system calls through which
it changes the disk (``create``, ``write``, ``copy``, ``fsync``, ``rename``, ``unlink``, ``mkdir``, directory
``fsync``...; see ``trainkeep/_internal/storage/syscalls.py``). Operations are numbered from 1 in the order they start;
that number is what ``kill_before``, ``crash_before`` and ``fail_at`` refer to.
"""

from __future__ import annotations

import errno as _errno
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from trainkeep._internal.storage.base import PutResult, Storage
from trainkeep._internal.storage.local import LocalStorage
from trainkeep._internal.storage.locking import RunLock
from trainkeep.errors import StorageError
from trainkeep.testing.ops import Op

WRITE_CALLS = frozenset({"makedirs", "write_atomic", "append", "truncate", "delete_file", "delete_tree",
                         "sync_dir", "put_tree", "lock", "release"})
WRITE_SYSCALLS = frozenset({"create", "open_append", "write", "copy", "fsync", "fsync_file", "fsync_dir",
                            "ftruncate", "truncate", "rename", "link", "unlink", "mkdir", "rmdir"})
SYNC_SYSCALLS = frozenset({"fsync", "fsync_file", "fsync_dir"})


class SimulatedCrash(BaseException):
    """The process "died" at an operation (see :meth:`FaultyStorage.crash_before`).

    A BaseException, so that no ``except Exception`` of the code under test can swallow it; once raised, every
    later operation of the same wrapper raises it again, so that no clean-up code can touch storage either.
    """


def is_write(op: Op) -> bool:
    """Return True for an operation that can change what is on storage."""
    return op.name in (WRITE_CALLS if op.level == "call" else WRITE_SYSCALLS)


def is_syscall_write(op: Op) -> bool:
    """Return True for a local-disk system call that changes the disk."""
    return op.level == "syscall" and op.name in WRITE_SYSCALLS


def is_call_write(op: Op) -> bool:
    """Return True for a Storage method call that can change what is on storage."""
    return op.level == "call" and op.name in WRITE_CALLS


def is_sync(op: Op) -> bool:
    """Return True for an fsync of a file or a directory."""
    return op.level == "syscall" and op.name in SYNC_SYSCALLS


@dataclass
class _Failure:
    errno: int
    among: Callable[[Op], bool]
    at: int | None  # the at-th operation matching `among`; None: every one
    partial: bool = False
    seen: int = 0


def injected_error(op: Op, errno: int) -> OSError:
    """Return the error a failed ``op`` raises: the bare OSError of a system call, or the StorageError of a call."""
    cause = OSError(errno, os.strerror(errno), op.path)
    return cause if op.level == "syscall" else StorageError(op.name, op.path, cause)


class FaultyStorage(Storage):
    """A Storage that forwards every operation to ``inner``, counting and recording it, and that can fail it.

    Args:
        inner: the storage under test. For a LocalStorage (or a subclass whose constructor takes ``syscalls=``),
            the wrapper builds a fresh instance of its class with ``syscalls=`` a hook that makes each system
            call an operation too, and forwards to that one; ``inner`` itself is not changed
            (``syscalls=False``: forward to ``inner`` as it is).
        record: keep every operation in :attr:`ops` (marks are always kept).
        record_data: keep the bytes of every write (what the power-loss model needs).

    Faults, set up before or while the code runs (``heal()`` removes them all):

    * ``kill_before(k)``: SIGKILL this process right before operation k (run the code in a child process).
    * ``crash_before(k)``: raise :class:`SimulatedCrash` at operation k and at every one after it; for stores
      that live in one process (``memory://``), where a real kill would take the store with it.
    * ``fail_at(k, errno, among=...)``: raise an OSError (a StorageError at the call level) at the k-th
      operation matching ``among``; ``fail_every(errno, among=...)`` at every one.
    * ``drop_sync(i)``: skip the i-th fsync (file or directory) without telling anyone: a storage that
      forgot one. The operation is recorded with ``dropped=True``.
    """

    def __init__(self, inner: Storage, *, record: bool = True, record_data: bool = False,
                 syscalls: bool = True) -> None:
        self.inner = inner
        self.fs = inner.fs
        self.is_local = inner.is_local
        self.record, self.record_data = record, record_data
        self.ops: list[Op] = []
        self.count = 0
        self.crashed = False
        self.mutex = threading.RLock()
        self._kill_at: int | None = None
        self._kill_also: tuple[int, ...] = ()
        self._crash_at: int | None = None
        self._failures: list[_Failure] = []
        self._drops: set[int] = set()
        self._syncs = 0
        self._locks: list[RunLock] = []
        if syscalls and isinstance(inner, LocalStorage):
            from trainkeep.testing.syscalls import FaultySyscalls

            # a LocalStorage of our own, given the hooked system calls: the object passed in stays as it was
            self.inner = type(inner)(syscalls=FaultySyscalls(self, inner.syscalls))

    # ------------------------------------------------------------------------------------------ faults

    def kill_before(self, k: int, also_kill: Iterable[int] = ()) -> None:
        """SIGKILL this process (after the pids in ``also_kill``) right before operation ``k``."""
        self._kill_at, self._kill_also = k, tuple(also_kill)

    def crash_before(self, k: int) -> None:
        """Raise SimulatedCrash at operation ``k`` and at every later one."""
        self._crash_at = k

    def fail_at(self, k: int, errno: int = _errno.EIO, among: Callable[[Op], bool] = is_write,
                partial: bool = False) -> None:
        """Fail the ``k``-th operation (1-based, counted from now) that ``among`` selects with ``errno``.

        With ``partial``, a ``write`` or ``copy`` system call first writes half of its data, as on a disk
        that fills up in the middle of a write; other operations fail before doing anything.
        """
        self._failures.append(_Failure(errno, among, k, partial))

    def fail_every(self, errno: int = _errno.ENOSPC, among: Callable[[Op], bool] = is_write) -> None:
        """Fail every operation that ``among`` selects with ``errno`` until :meth:`heal`."""
        self._failures.append(_Failure(errno, among, None))

    def drop_sync(self, i: int) -> None:
        """Skip the ``i``-th fsync or directory fsync (1-based), as if the code did not make it."""
        self._drops.add(i)

    def heal(self) -> None:
        """Remove every fault (a crash already simulated stays)."""
        self._kill_at = self._crash_at = None
        self._failures.clear()
        self._drops.clear()

    def mark(self, note: str, path: str = "") -> None:
        """Record a mark (not an operation) at the current position, e.g. ``mark("returned", name)``."""
        with self.mutex:
            self.ops.append(Op("mark", note, path, returned_at=self.count, pid=os.getpid()))

    def abandon(self) -> None:
        """Let go of the locks taken through this wrapper without any operation: the holder is gone.

        After an in-process crash, this stands for the kernel (flock) or the lease's expiry freeing the run.
        """
        for held in self._locks:
            held.release()
        self._locks.clear()

    @property
    def calls(self) -> list[Op]:
        """The recorded Storage method calls."""
        return [op for op in self.ops if op.level == "call"]

    # ------------------------------------------------------------------------------------------ counting

    def enter(self, op: Op) -> Op:
        """Number ``op``, record it, and apply the faults due at it (SIGKILL, SimulatedCrash or an error)."""
        with self.mutex:
            if self.crashed:
                raise SimulatedCrash(f"storage operation after the simulated crash: {op}")
            self.count += 1
            op.index, op.pid = self.count, os.getpid()
            if op.level == "syscall" and op.name in SYNC_SYSCALLS:
                self._syncs += 1
                op.dropped = self._syncs in self._drops
            if self.record:
                self.ops.append(op)
            if op.index == self._kill_at:
                _kill(self._kill_also)
            if op.index == self._crash_at:
                self.crashed = True
                raise SimulatedCrash(f"simulated crash before operation {op}")
            for failure in self._failures:
                if failure.among(op):
                    failure.seen += 1
                    if failure.at is None or failure.at == failure.seen:
                        op.error = _errno.errorcode.get(failure.errno, str(failure.errno))
                        if failure.partial and op.level == "syscall" and op.name in ("write", "copy"):
                            op.partial = failure.errno  # the system call hook writes half, then raises
                            break
                        raise injected_error(op, failure.errno)
            if op.level == "syscall":
                op.site = call_site()
            return op

    def _call(self, name: str, path: str, fn: Callable[[], Any], dest: str = "") -> Any:
        return self._run(Op("call", name, path, dest), fn)

    def _run(self, op: Op, fn: Callable[[], Any]) -> Any:
        op = self.enter(op)
        try:
            result = fn()
        except SimulatedCrash:
            raise
        except BaseException as exc:
            op.error = op.error or type(exc).__name__
            raise
        op.returned_at = self.count
        return result

    # ------------------------------------------------------------------------------------------ the surface

    def join(self, *parts: str) -> str:
        return self.inner.join(*parts)

    def exists(self, path: str) -> bool:
        return bool(self._call("exists", path, lambda: self.inner.exists(path)))

    def isdir(self, path: str) -> bool:
        return bool(self._call("isdir", path, lambda: self.inner.isdir(path)))

    def listdir(self, path: str) -> list[str]:
        return list(self._call("listdir", path, lambda: self.inner.listdir(path)))

    def makedirs(self, path: str) -> None:
        self._call("makedirs", path, lambda: self.inner.makedirs(path))

    def read_bytes(self, path: str) -> bytes:
        return bytes(self._call("read_bytes", path, lambda: self.inner.read_bytes(path)))

    def read_range(self, path: str, start: int, end: int) -> bytes:
        return bytes(self._call("read_range", path, lambda: self.inner.read_range(path, start, end)))

    def write_atomic(self, path: str, data: bytes) -> None:
        op = Op("call", "write_atomic", path, data=bytes(data) if self.record_data else None)
        self._run(op, lambda: self.inner.write_atomic(path, data))

    def append(self, path: str, data: bytes, durable: bool = False) -> None:
        op = Op("call", "append", path, size=int(durable), data=bytes(data) if self.record_data else None)
        self._run(op, lambda: self.inner.append(path, data, durable))

    def truncate(self, path: str, size: int) -> None:
        self._run(Op("call", "truncate", path, size=size), lambda: self.inner.truncate(path, size))

    def delete_file(self, path: str) -> None:
        self._call("delete_file", path, lambda: self.inner.delete_file(path))

    def delete_tree(self, path: str) -> None:
        self._call("delete_tree", path, lambda: self.inner.delete_tree(path))

    def sync_dir(self, path: str) -> None:
        self._call("sync_dir", path, lambda: self.inner.sync_dir(path))

    def put_tree(self, src_dir: str, dest_dir: str, files: list[str], move: bool = False) -> PutResult:
        op = Op("call", "put_tree", src_dir, dest_dir, size=int(move))
        result: PutResult = self._run(op, lambda: self.inner.put_tree(src_dir, dest_dir, files, move))
        return result

    def size(self, path: str) -> int:
        return int(self._call("size", path, lambda: self.inner.size(path)))

    def checksum(self, path: str) -> tuple[int, str]:
        return tuple(self._call("checksum", path, lambda: self.inner.checksum(path)))  # type: ignore[return-value]

    def seal(self, path: str) -> tuple[int, str]:
        return tuple(self._call("seal", path, lambda: self.inner.seal(path)))  # type: ignore[return-value]

    def download(self, src: str, local_dest: str) -> tuple[int, str]:
        return tuple(self._call("download", src, lambda: self.inner.download(src, local_dest),  # type: ignore
                                local_dest))

    def read_log(self, path: str) -> tuple[bytes, list[bytes]]:
        return tuple(self._call("read_log", path, lambda: self.inner.read_log(path)))  # type: ignore

    def lock(self, path: str) -> RunLock:
        held = self._call("lock", path, lambda: self.inner.lock(path))
        self._locks.append(held)
        return _FaultyLock(self, held, path)

    def __getattr__(self, name: str) -> Any:  # anything else a backend offers, uncounted
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    def __repr__(self) -> str:
        return f"FaultyStorage({self.inner!r}, operations={self.count})"


class _FaultyLock(RunLock):
    """The run lock taken through a FaultyStorage: its release is an operation too."""

    def __init__(self, owner: FaultyStorage, held: RunLock, path: str) -> None:
        self._owner, self._held, self._path = owner, held, path
        self.holder = held.holder

    def release(self) -> None:
        if self._held in self._owner._locks:
            self._owner._call("release", self._path, self._held.release)
            self._owner._locks.remove(self._held)


def _kill(also: tuple[int, ...]) -> None:
    for pid in also:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    os.kill(os.getpid(), signal.SIGKILL)


_STORAGE_DIR = os.sep + os.path.join("trainkeep", "storage") + os.sep
_TESTING_DIR = os.sep + os.path.join("trainkeep", "testing") + os.sep
_PACKAGE_DIR = os.sep + "trainkeep" + os.sep


def call_site() -> tuple[str, ...]:
    """Return where the current system call comes from: the storage frames, innermost first, then the first
    frame of trainkeep outside the storage package (the engine's call), e.g.
    ``("local.py:write_atomic:85", "manager.py:commit:301")``."""
    frames: list[str] = []
    for frame in _frames(sys._getframe(1)):
        filename = frame.f_code.co_filename
        if _TESTING_DIR in filename:
            continue
        where = f"{os.path.basename(filename)}:{frame.f_code.co_name}:{frame.f_lineno}"
        if _STORAGE_DIR in filename:
            frames.append(where)
        elif _PACKAGE_DIR in filename:
            frames.append(where)
            break
    return tuple(frames)


def _frames(frame: Any) -> Iterator[Any]:
    while frame is not None:
        yield frame
        frame = frame.f_back
