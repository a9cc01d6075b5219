"""The system calls by which LocalStorage changes the disk, behind one object that a test can swap.

Durability on a local disk is a matter of which calls happen in which order: a file's bytes survive a power
loss only once the file is fsynced, a name (create, rename, link, unlink, mkdir) only once its directory is.
Every such call of ``local.py`` and ``fastcopy.py`` goes through a :class:`Syscalls` object, so that
``trainkeep.testing.FaultyStorage`` can record the exact sequence, kill the process before any one of them, or
make one fail with a chosen errno, without a test hook in the code paths themselves. The default object is
a direct call to ``os``: one method call of overhead per call (per 8 MiB chunk on copies), nothing more.
Reads are not routed here: they cannot change what a crash leaves behind; nor is :func:`start_writeback`, which
only asks the kernel to begin writing dirty pages early and promises nothing (the fsync that follows does).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Any

CopyChunk = Callable[[int, int, int, int], int]


class Syscalls:
    """Direct ``os`` calls. Subclass and set ``LocalStorage.syscalls`` to observe or fail them.

    Every method raises the ``OSError`` of the call it makes; the storage code above turns it into a
    ``StorageError`` that names the path.
    """

    def create(self, path: str) -> int:
        """Create the new file ``path`` (never an existing one) for writing; return its descriptor."""
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)

    def open_append(self, path: str) -> int:
        """Open ``path`` for appending, creating it when missing; return its descriptor."""
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def write(self, fd: int, data: bytes | memoryview) -> int:
        """Write ``data`` at the descriptor's offset; return how much was written (maybe less)."""
        return os.write(fd, data)

    def copy(self, method: CopyChunk, fd_in: int, fd_out: int, count: int, offset: int) -> int:
        """Copy up to ``count`` bytes at ``offset`` from ``fd_in`` to the same offset of ``fd_out`` with
        ``method`` (a kernel copy); return how many were copied (0 at the end of the source)."""
        return method(fd_in, fd_out, count, offset)

    def fsync(self, fd: int) -> None:
        """Make the content of the open file ``fd`` durable."""
        os.fsync(fd)

    def fsync_file(self, path: str) -> None:
        """Make the content of the file at ``path`` durable."""
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def fsync_dir(self, path: str) -> None:
        """Make the entries of directory ``path`` (creations, renames, removals) durable."""
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def close(self, fd: int) -> None:
        os.close(fd)

    def ftruncate(self, fd: int, size: int) -> None:
        """Cut the open file ``fd`` back to ``size`` bytes."""
        os.ftruncate(fd, size)

    def truncate(self, path: str, size: int) -> None:
        os.truncate(path, size)

    def rename(self, src: str, dest: str) -> None:
        """Rename ``src`` to ``dest``, atomically replacing ``dest`` when it exists."""
        os.rename(src, dest)

    def link(self, src: str, dest: str) -> None:
        """Give the file ``src`` the new name ``dest`` (an existing ``dest`` is an error, never replaced)."""
        os.link(src, dest)

    def unlink(self, path: str) -> None:
        os.unlink(path)

    def makedirs(self, path: str) -> None:
        """Create directory ``path`` and its missing parents; an existing directory is fine."""
        os.makedirs(path, exist_ok=True)

    def rmtree(self, path: str, onerror: Callable[[Callable, str, Any], None]) -> None:
        """Delete directory ``path`` and everything under it; ``onerror`` is shutil.rmtree's error hook."""
        shutil.rmtree(path, onerror=onerror)


SYSCALLS = Syscalls()


_SYNC_FILE_RANGE_WRITE = 2  # linux/fs.h: start writeback of the dirty pages in the range, do not wait


def _load_sync_file_range() -> Callable[[int, int, int, int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.sync_file_range
        fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
        fn.restype = ctypes.c_int
        return fn  # type: ignore[no-any-return]
    return None


_sync_file_range = _load_sync_file_range()


def start_writeback(fd: int, offset: int, count: int) -> None:
    """Ask the kernel to start writing ``count`` bytes of ``fd`` at ``offset`` to the disk, without waiting.

    Linux ``sync_file_range(SYNC_FILE_RANGE_WRITE)``, so that the disk works while the copy goes on and the
    final fsync finds little left to write. Elsewhere, or when the call fails (a filesystem without it), it
    does nothing: the fsync that must follow writes everything anyway. It never makes anything durable.
    """
    if _sync_file_range is not None:
        _sync_file_range(fd, offset, count, _SYNC_FILE_RANGE_WRITE)  # an error only means no head start


IO_THREADS = 4  # the copies of one checkpoint run 4 at a time (storage.base.COPY_THREADS)
_pool: ThreadPoolExecutor | None = None
_pool_pid = 0
_pool_lock = threading.Lock()


def io_pool() -> ThreadPoolExecutor:
    """Return this process's pool of IO_THREADS threads for copies and fsyncs, started once (again after a fork).

    Starting a thread waits until it runs, which costs milliseconds on a loaded machine; a commit used to start
    several. A forked child holds the parent's pool object but none of its threads, so it makes its own.
    """
    global _pool, _pool_pid
    with _pool_lock:
        if _pool is None or _pool_pid != os.getpid():
            _pool = ThreadPoolExecutor(max_workers=IO_THREADS, thread_name_prefix="trainkeep-io")
            _pool_pid = os.getpid()
        return _pool


def wait_all(futures: list[Future]) -> list[Any]:
    """Wait until every future has ended; return their results in order, or raise the first error in order.

    Every call has ended when this returns or raises, so no cleanup races a write still running. An interrupt
    while waiting (e.g. KeyboardInterrupt) cancels what has not started and waits for the rest first.
    """
    try:
        wait(futures)
    except BaseException:
        for future in futures:
            future.cancel()
        wait(futures)
        raise
    return [future.result() for future in futures]


def together(*calls: Callable[[], Any]) -> None:
    """Run ``calls`` at the same time: the first in this thread, the others on :func:`io_pool`; wait for all.

    For steps that must all be done before the next one, in no order among themselves (the fsyncs before a
    manifest): their waits for the disk overlap instead of adding up. Raises the first error, in the order of
    ``calls``, once every call has ended.
    """
    futures = [io_pool().submit(call) for call in calls[1:]]
    try:
        calls[0]()
    except BaseException:
        wait_all(futures)  # let the others end before the error goes up
        raise
    wait_all(futures)
