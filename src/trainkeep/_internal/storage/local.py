"""The local disk: plain ``os`` calls, because durability needs what fsspec does not expose (fsync of files and
directories, atomic rename, flock)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
import uuid
from collections.abc import Callable
from typing import Any

import fsspec

from trainkeep._internal.core.layout import TEMP_SUFFIX
from trainkeep._internal.core.manifest import FileEntry
from trainkeep._internal.storage.base import PutResult, Storage, hash_stream, wrap_error
from trainkeep._internal.storage.fastcopy import copy_file, hash_file, move_file, same_device
from trainkeep._internal.storage.locking import RunLock, holder_record, parse_holder
from trainkeep._internal.storage.parts import read_log
from trainkeep._internal.storage.progress import Transfer
from trainkeep._internal.storage.syscalls import SYSCALLS, Syscalls, io_pool, wait_all
from trainkeep._internal.storage.tree import is_linked
from trainkeep.errors import RunLockedError, StorageError

logger = logging.getLogger(__name__)


class LocalStorage(Storage):
    """The local disk, with fsync of files and directories and atomic rename."""

    is_local = True
    # every call that changes the disk goes through this object; trainkeep.testing passes a hooked one
    syscalls: Syscalls = SYSCALLS

    def __init__(self, syscalls: Syscalls | None = None) -> None:
        self.fs = fsspec.filesystem("file")
        if syscalls is not None:
            self.syscalls = syscalls

    def exists(self, path: str) -> bool:
        return os.path.lexists(path)

    def isdir(self, path: str) -> bool:
        return os.path.isdir(path)

    def listdir(self, path: str) -> list[str]:
        try:
            return sorted(os.listdir(path))
        except (FileNotFoundError, NotADirectoryError):
            return []
        except OSError as exc:
            raise StorageError("list", path, exc) from exc

    def makedirs(self, path: str) -> None:
        try:
            self.syscalls.makedirs(path)
        except OSError as exc:
            raise StorageError("mkdir", path, exc) from exc

    def read_bytes(self, path: str) -> bytes:
        try:
            with open(path, "rb") as f:
                return f.read()
        except OSError as exc:
            raise wrap_error("read", path, exc) from exc

    def read_range(self, path: str, start: int, end: int) -> bytes:
        try:
            with open(path, "rb") as f:
                return os.pread(f.fileno(), max(0, end - start), start)
        except OSError as exc:
            raise wrap_error("read", path, exc) from exc

    def write_atomic(self, path: str, data: bytes) -> None:
        """Write to a temp file, fsync it, rename it over ``path``, fsync the directory.

        A crash inside leaves the old content and maybe a ``*.trainkeep_tmp`` file that the sweep removes.
        """
        tmp = f"{path}.{uuid.uuid4().hex[:8]}{TEMP_SUFFIX}"
        sc = self.syscalls
        try:
            fd = sc.create(tmp)
            try:
                write_all(fd, data, sc)
                sc.fsync(fd)
            finally:
                sc.close(fd)
            sc.rename(tmp, path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                sc.unlink(tmp)
            raise StorageError("write", path, exc) from exc
        self.sync_dir(os.path.dirname(path))

    def append(self, path: str, data: bytes, durable: bool = False) -> None:
        """Append to the file with O_APPEND; a crash inside may leave a torn last line (readers drop it).

        A failed append (a full disk mid-write) is cut back off, so the next append cannot land after a torn
        line in the middle of the log.
        """
        if not data and not os.path.exists(path):
            return
        sc = self.syscalls
        try:
            fd = sc.open_append(path)
            try:
                start = os.fstat(fd).st_size
                try:
                    write_all(fd, data, sc)
                    if durable:
                        sc.fsync(fd)
                except OSError:
                    with contextlib.suppress(OSError):
                        sc.ftruncate(fd, start)
                    raise
            finally:
                sc.close(fd)
        except OSError as exc:
            raise StorageError("append", path, exc) from exc

    def truncate(self, path: str, size: int) -> None:
        try:
            self.syscalls.truncate(path, size)
        except OSError as exc:
            raise StorageError("truncate", path, exc) from exc

    def delete_file(self, path: str) -> None:
        try:
            self.syscalls.unlink(path)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise StorageError("delete", path, exc) from exc

    def delete_tree(self, path: str) -> None:
        def onerror(func: Callable, failed: str, exc_info: Any) -> None:
            if not isinstance(exc_info[1], FileNotFoundError):
                raise StorageError("delete", failed, exc_info[1])

        if os.path.lexists(path):
            self.syscalls.rmtree(path, onerror)

    def sync_dir(self, path: str) -> None:
        try:
            self.syscalls.fsync_dir(path)
        except OSError as exc:
            raise StorageError("fsync directory", path, exc) from exc

    def put_tree(self, src_dir: str, dest_dir: str, files: list[str], move: bool = False) -> PutResult:
        """Copy (or, handed over on the same filesystem, move) ``files`` in parallel, checksumming each.

        Steps: create the subdirectories; copy or move every file in a pool of threads, each file fsynced;
        fsync the subdirectories; with ``move`` across filesystems, delete the copied sources last.
        If the process dies inside, ``dest_dir`` is debris (no manifest) and, with ``move``, the files already
        moved are no longer in ``src_dir``.
        """
        subdirs = sorted({os.path.dirname(f) for f in files if "/" in f})
        for sub in subdirs:
            self.makedirs(os.path.join(dest_dir, sub))
        renaming = move and same_device(src_dir, dest_dir)
        total = sum(_local_size(os.path.join(src_dir, rel)) for rel in files)
        with Transfer(f"{'moving' if renaming else 'copying'} {os.path.basename(dest_dir)}", total, len(files),
                      moved=renaming) as transfer:
            def one(rel: str) -> FileEntry:
                src, dest = os.path.join(src_dir, rel), os.path.join(dest_dir, rel)
                put = move_file if renaming and not is_linked(src_dir, rel) else copy_file  # a link's target stays
                size, digest = put(src, dest, transfer.advance, syscalls=self.syscalls)
                return FileEntry(rel, size, digest)

            entries = run_all(one, files)
        for sub in subdirs:
            self.sync_dir(os.path.join(dest_dir, sub))
        if move and not renaming:
            for rel in files:
                if not is_linked(src_dir, rel):  # never delete a symlink's target, outside the source
                    self.delete_file(os.path.join(src_dir, rel))
        return PutResult(entries, transfer.stats())

    def checksum(self, path: str) -> tuple[int, str]:
        with open(path, "rb") as f:
            return hash_stream(f)

    def seal(self, path: str) -> tuple[int, str]:
        """Checksum a file written in place, then fsync it; its writeback starts before the hash, so they overlap.

        Raises:
            FileNotFoundError when ``path`` is missing; StorageError for any other failure.
        """
        try:
            size, digest = hash_file(path, writeback=True)
            self.syscalls.fsync_file(path)
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise StorageError("fsync", path, exc) from exc
        return size, digest

    def read_log(self, path: str) -> tuple[bytes, list[bytes]]:
        """Read the appended log at ``path`` (and parts, if the run was copied here from an object store)."""
        return read_log(self, path)

    def download(self, src: str, local_dest: str) -> tuple[int, str]:
        """Copy ``src`` to new local file ``local_dest`` in the kernel, checksumming it (see fastcopy)."""
        return copy_file(src, local_dest)

    def size(self, path: str) -> int:
        return os.path.getsize(path)

    def lock(self, path: str) -> RunLock:
        return FlockLock(path)


def run_all(fn: Callable[[str], FileEntry], files: list[str]) -> list[FileEntry]:
    """Return ``[fn(f) for f in files]``, run on the I/O threads; one file runs here, without a hand-off.

    Every call has ended when this returns or raises (so an abort never races a copy still writing); the
    first error, in the order of ``files``, is raised.
    """
    if len(files) <= 1:
        return [fn(rel) for rel in files]
    return wait_all([io_pool().submit(fn, rel) for rel in files])


def _local_size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0  # the copy itself reports the problem


def write_all(fd: int, data: bytes | memoryview, syscalls: Syscalls = SYSCALLS) -> None:
    """Write all of ``data`` to ``fd`` (os.write may write less than asked)."""
    view = memoryview(data)
    while view:
        written = syscalls.write(fd, view)
        view = view[written:]


class FlockLock(RunLock):
    """An flock(2) on the run's lock file: the kernel releases it when the holder dies, even by SIGKILL."""

    _RECORD_WAIT_S = 0.5  # how long a refused opener waits for the holder to write its record

    def __init__(self, path: str) -> None:
        try:
            self._fd: int | None = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StorageError("open lock", path, exc) from exc
        try:
            self._acquire(path)
        except BaseException:
            os.close(self._fd)
            self._fd = None
            raise
        self.holder = holder_record()
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, json.dumps(self.holder).encode(), 0)

    def _acquire(self, path: str) -> None:
        """Take the flock, or raise RunLockedError naming the holder.

        A holder writes its record just after it takes the flock and empties it just before it lets go, so a
        refused opener that reads an empty record tries again for a moment: either the record appears, or the
        flock comes free.
        """
        import fcntl

        assert self._fd is not None
        deadline = time.monotonic() + self._RECORD_WAIT_S
        while True:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                holder = parse_holder(os.pread(self._fd, 4096, 0))
                if holder or time.monotonic() > deadline:
                    raise RunLockedError(os.path.dirname(os.path.dirname(path)), holder) from None
                time.sleep(0.002)

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing drops the flock
            self._fd = None
