"""Copy or move one local file with its checksum computed in the same pass.

Measured on ext4 (benchmarks/bench_persist.py and the notes in docs/storage.md): the kernel copies each chunk
(``copy_file_range``, else ``sendfile``, else read/write), and the chunk is then hashed where it landed: the
range just written to the destination, mapped with ``MAP_POPULATE`` (its pages are in the page cache, just
filled by the copy). That costs no second disk read and no memory copy: 100 MB hash in ~14 ms against ~36 ms
through ``pread`` into a buffer (issue 15), and far less than a user-space read/hash/write loop. The hash is of
the bytes as stored. Where the destination cannot be mapped, the copied range of the source is read back with
``pread`` instead. Writeback of each full chunk is started at once (``sync_file_range`` on Linux, see
syscalls.start_writeback), so the disk writes while the rest is copied and hashed, and the final fsync waits
only for the tail.

A moved file (hand-off on the same filesystem) is hard-linked into place and unlinked from the source: this is
a rename that can never overwrite an existing file. Its checksum still needs one read of the data, and no
trick avoids it: the manifest must hold the checksum before the commit. The read goes through ``mmap``
windows with ``MAP_POPULATE`` (the pages were just written by the user, so they are in the page cache; this
beat ``pread`` into a buffer by ~20%), one window at a time so the mapped memory stays bounded, and it
overlaps with the ``fsync`` of the other files, which run in parallel threads.
"""

from __future__ import annotations

import errno as _errno
import mmap
import os
from collections.abc import Callable

from trainkeep._internal.storage.base import CHUNK_SIZE, new_hasher
from trainkeep._internal.storage.syscalls import SYSCALLS, Syscalls, start_writeback
from trainkeep.errors import StorageError

Progress = Callable[[int], None]

_NO_KERNEL_COPY = {_errno.ENOSYS, _errno.EXDEV, _errno.EINVAL, _errno.EOPNOTSUPP, _errno.EBADF, _errno.EPERM}
_NO_LINK = {_errno.EXDEV, _errno.EPERM, _errno.EOPNOTSUPP, _errno.EMLINK, _errno.ENOSYS}


def _copy_file_range(src: int, dest: int, count: int, offset: int) -> int:
    return os.copy_file_range(src, dest, count, offset, offset)


def _sendfile(src: int, dest: int, count: int, offset: int) -> int:
    os.lseek(dest, offset, os.SEEK_SET)
    return os.sendfile(dest, src, offset, count)


def _read_write(src: int, dest: int, count: int, offset: int) -> int:
    data = os.pread(src, count, offset)
    view = memoryview(data)
    written = offset
    while view:
        n = os.pwrite(dest, view, written)
        view, written = view[n:], written + n
    return len(data)


COPY_METHODS: tuple[tuple[str, Callable[[int, int, int, int], int]], ...] = tuple(
    (name, fn) for name, fn, available in (
        ("copy_file_range", _copy_file_range, hasattr(os, "copy_file_range")),
        ("sendfile", _sendfile, hasattr(os, "sendfile")),
        ("read_write", _read_write, True),
    ) if available
)


def copy_file(src: str, dest: str, progress: Progress | None = None, methods: tuple = COPY_METHODS, *,
              syscalls: Syscalls = SYSCALLS) -> tuple[int, str]:
    """Copy local file ``src`` to new file ``dest``, fsync it, and return its size and xxh3_128 checksum.

    The kernel copies each chunk; the chunk is hashed from the page cache right after. ``methods`` are tried
    in order and the first that the filesystem supports is kept for the rest of the file. The calls that
    write go through ``syscalls`` (see syscalls.py).

    Raises:
        FileExistsError when ``dest`` exists (it is never overwritten); FileNotFoundError when ``src`` is
        missing; StorageError for any other failure. A crash or error inside leaves a partial ``dest``.
    """
    fd_in = _open(src, os.O_RDONLY, "open")
    try:
        fd_out = _create(dest, syscalls)
        try:
            fd_back = os.open(dest, os.O_RDONLY)  # to hash what was written (the write descriptor cannot map)
            try:
                size, digest = _copy_fds(fd_in, fd_out, fd_back, src, progress, methods, syscalls)
            finally:
                os.close(fd_back)
            syscalls.fsync(fd_out)
        except StorageError:
            raise
        except OSError as exc:
            raise StorageError("copy", dest, exc) from exc
        finally:
            syscalls.close(fd_out)
    finally:
        os.close(fd_in)
    return size, digest


def _open(path: str, flags: int, op: str) -> int:
    try:
        return os.open(path, flags, 0o644)
    except (FileExistsError, FileNotFoundError):
        raise
    except OSError as exc:
        raise StorageError(op, path, exc) from exc


def _create(path: str, syscalls: Syscalls) -> int:
    try:
        return syscalls.create(path)
    except (FileExistsError, FileNotFoundError):
        raise
    except OSError as exc:
        raise StorageError("create", path, exc) from exc


def _copy_fds(fd_in: int, fd_out: int, fd_back: int, src: str, progress: Progress | None, methods: tuple,
              syscalls: Syscalls) -> tuple[int, str]:
    hasher, offset = new_hasher(), 0
    view: memoryview | None = None  # the pread buffer, made only where mapping fails
    candidates = list(methods)
    while True:
        try:
            n = syscalls.copy(candidates[0][1], fd_in, fd_out, CHUNK_SIZE, offset)
        except OSError as exc:
            if exc.errno not in _NO_KERNEL_COPY or len(candidates) == 1:
                raise
            candidates.pop(0)  # this filesystem does not support it: fall back for the rest of the file
            continue
        if n == 0:
            return offset, hasher.hexdigest()
        if n == CHUNK_SIZE:  # more follows: the disk writes this chunk while the next is copied and hashed
            start_writeback(fd_out, offset, n)
        if view is None and not _hash_mapped(fd_back, offset, n, hasher):
            view = memoryview(bytearray(CHUNK_SIZE))
        if view is not None:
            _hash_range(fd_in, view, offset, n, hasher, src)
        offset += n
        if progress is not None:
            progress(n)


_MAP_FLAGS = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)


def _hash_mapped(fd: int, offset: int, n: int, hasher: object) -> bool:
    """Hash ``n`` bytes of ``fd`` at ``offset`` (a multiple of CHUNK_SIZE) through a populated mapping.

    Returns False, having hashed nothing, when the file cannot be mapped here (the caller reads instead).
    """
    try:
        window = mmap.mmap(fd, n, flags=_MAP_FLAGS, prot=mmap.PROT_READ, offset=offset)
    except (OSError, ValueError):
        return False
    with window:
        hasher.update(window)  # type: ignore[attr-defined]
    return True


def _hash_range(fd: int, view: memoryview, offset: int, n: int, hasher: object, src: str) -> None:
    done = 0
    while done < n:
        got = os.preadv(fd, [view[: n - done]], offset + done)
        if got == 0:
            raise StorageError("copy", src, OSError(_errno.EIO, "the file shrank while it was being copied"))
        hasher.update(view[:got])  # type: ignore[attr-defined]
        done += got


def hash_file(path: str, writeback: bool = False) -> tuple[int, str]:
    """Return the size and checksum of local file ``path``, read through populated mmap windows.

    One window of CHUNK_SIZE bytes is mapped at a time, so the memory mapped stays bounded whatever the size.
    ``writeback`` first starts the writeback of the whole file (see syscalls.start_writeback), so that the disk
    writes while the file is hashed and an fsync that follows waits for little.
    """
    hasher = new_hasher()
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        if writeback:
            start_writeback(fd, 0, 0)
        for start in range(0, size, CHUNK_SIZE):
            length = min(CHUNK_SIZE, size - start)
            with mmap.mmap(fd, length, flags=_MAP_FLAGS, prot=mmap.PROT_READ, offset=start) as window:
                hasher.update(window)
        return size, hasher.hexdigest()
    finally:
        os.close(fd)


def move_file(src: str, dest: str, progress: Progress | None = None, *,
              syscalls: Syscalls = SYSCALLS) -> tuple[int, str]:
    """Move local file ``src`` to new path ``dest`` on the same filesystem; fsync it; return size and checksum.

    The file is hard-linked to ``dest`` then unlinked from ``src``, so an existing ``dest`` is never replaced.
    Where hard links are not supported (or ``src`` is on another device) it falls back to a copy and unlink.

    Raises:
        FileExistsError when ``dest`` exists; StorageError for other failures. If the process dies inside,
        the file is at ``src``, at ``dest``, or at both (two names of one file); never lost.
    """
    try:
        syscalls.link(src, dest)
    except FileExistsError:
        raise
    except OSError as exc:
        if exc.errno not in _NO_LINK:
            raise StorageError("move", dest, exc) from exc
        size, digest = copy_file(src, dest, progress, syscalls=syscalls)
        _unlink(src, syscalls)
        return size, digest
    _unlink(src, syscalls)
    try:
        size, digest = hash_file(dest)
        syscalls.fsync_file(dest)
    except OSError as exc:
        raise StorageError("move", dest, exc) from exc
    if progress is not None:
        progress(size)
    return size, digest


def _unlink(path: str, syscalls: Syscalls) -> None:
    try:
        syscalls.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise StorageError("delete", path, exc) from exc


def same_device(src_dir: str, dest_dir: str) -> bool:
    """Return True when both local directories lie on one filesystem (a rename between them can work)."""
    try:
        return os.stat(src_dir).st_dev == os.stat(dest_dir).st_dev
    except OSError:
        return False
