"""Any fsspec filesystem (``s3://``, ``gs://``, ``memory://``, a wrapped pyarrow filesystem...).

Whole-object writes are the atomic step: there is no rename and no fsync, so the commit protocol never relies
on them (the manifest is the last single PUT). Every remote call is retried on transient errors (see
``retry.py``); listings and stats are read fresh, never from s3fs's listings cache, because another process
may have written since. S3 gets parallel multipart uploads and conditional requests (``s3.py``).
"""

from __future__ import annotations

import contextlib
import errno as _errno
import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import fsspec

from trainkeep._internal.core.manifest import FileEntry
from trainkeep._internal.storage.base import (
    CHUNK_SIZE,
    COPY_THREADS,
    PutResult,
    Storage,
    copy_stream,
    hash_stream,
    new_hasher,
)
from trainkeep._internal.storage.lease import EmulatedConditional, LeaseLock
from trainkeep._internal.storage.locking import RunLock
from trainkeep._internal.storage.parts import PartLog, read_log
from trainkeep._internal.storage.progress import Transfer
from trainkeep._internal.storage.retry import RetryPolicy, call
from trainkeep._internal.storage.s3 import S3Conditional, Uploader, is_s3
from trainkeep._internal.storage.timeouts import Timeouts
from trainkeep._internal.storage.tree import is_linked

logger = logging.getLogger(__name__)

T = TypeVar("T")

OBJECT_STORE_PROTOCOLS = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl", "oci", "oss", "r2"})
READ_THREADS = 8
UPLOAD_THREADS = 8  # files read at once; their chunks share the Uploader's memory bound


def protocols(fs: Any) -> tuple[str, ...]:
    """Return the protocol names of an fsspec filesystem."""
    proto = fs.protocol
    return (proto,) if isinstance(proto, str) else tuple(proto)


class FsspecStorage(Storage):
    """Any fsspec filesystem, with retries, fresh listings, logs in parts and a lease lock.

    Args:
        fs: the filesystem.
        retry: how to retry transient errors (default: 6 attempts, exponential backoff from 0.2 s, none
            started after ``timeouts.deadline_s``).
        timeouts: how long to wait for the store (default: :meth:`Timeouts.from_env`); on S3 every request
            is cancelled after ``timeouts.request_s``. See ``timeouts.py``.

    Raises (from the constructor):
        ConfigError when a ``TRAINKEEP_STORAGE_*`` variable is not a number of seconds > 0.
    """

    def __init__(self, fs: fsspec.AbstractFileSystem, retry: RetryPolicy | None = None,
                 timeouts: Timeouts | None = None) -> None:
        self.fs = fs
        self.timeouts = timeouts or Timeouts.from_env()
        self.retry = retry or RetryPolicy(deadline_s=self.timeouts.deadline_s)
        self.is_object_store = bool(set(protocols(fs)) & OBJECT_STORE_PROTOCOLS)
        # s3fs's calls take fsspec's ``timeout=``: the whole call is cancelled after it (a stalled upload too)
        self._limit: dict[str, Any] = {"timeout": self.timeouts.request_s} if is_s3(fs) else {}
        self._s3 = S3Conditional(fs, self.retry, self.timeouts.request_s) if is_s3(fs) else None
        self._logs: dict[str, PartLog] = {}
        self._leases: list[LeaseLock] = []
        self._guard = threading.Lock()

    # ------------------------------------------------------------------------------------------ plumbing

    def _call(self, op: str, path: str, fn: Callable[[], T], read: bool = False) -> T:
        return call(op, path, fn, self.retry, read=read)

    def _fresh(self, path: str) -> None:
        with contextlib.suppress(Exception):
            self.fs.invalidate_cache(path)

    def _fence(self, path: str) -> None:
        """Refuse to write under a run whose lease this process no longer holds (RunLockedError)."""
        for lease in self._leases:
            if path == lease.run_path or path.startswith(lease.run_path + "/"):
                lease.check()

    # ------------------------------------------------------------------------------------------ reads

    def exists(self, path: str) -> bool:
        self._fresh(path)
        return self._call("stat", path, lambda: bool(self.fs.exists(path, **self._limit)))

    def isdir(self, path: str) -> bool:
        self._fresh(path)
        return self._call("stat", path, lambda: bool(self.fs.isdir(path, **self._limit)))

    def listdir(self, path: str) -> list[str]:
        self._fresh(path)
        try:
            entries = self._call("list", path, lambda: self.fs.ls(path, detail=False, **self._limit),
                                 read=True)
        except (FileNotFoundError, NotADirectoryError):
            return []
        base = path.rstrip("/")
        return sorted({e.rstrip("/").rsplit("/", 1)[-1] for e in entries if e.rstrip("/") != base})

    def read_bytes(self, path: str) -> bytes:
        self._fresh(path)
        if self._s3 is not None:  # one GET (s3fs's cat_file does a HEAD first)
            return self._s3.read(path)[0]
        return self._call("read", path, lambda: bytes(self.fs.cat_file(path, **self._limit)), read=True)

    def size(self, path: str) -> int:
        self._fresh(path)
        return self._call("stat", path, lambda: int(self.fs.size(path, **self._limit)), read=True)

    def _open(self, path: str) -> Any:
        self._fresh(path)
        kwargs: dict[str, Any] = {"block_size": CHUNK_SIZE, "cache_type": "none"} if is_s3(self.fs) else {}
        return self.fs.open(path, "rb", **kwargs)

    def checksum(self, path: str) -> tuple[int, str]:
        """Stream ``path`` through the hasher; retried whole on errors."""
        def attempt() -> tuple[int, str]:
            with self._open(path) as f:
                return hash_stream(f)

        return self._call("read", path, attempt, read=True)

    def download(self, src: str, local_dest: str) -> tuple[int, str]:
        """Stream ``src`` into new local file ``local_dest``, hashing as it goes; retried whole on errors."""
        def attempt() -> tuple[int, str]:
            with self._open(src) as f:
                return copy_stream(f, local_dest)

        return self._call("download", src, attempt, read=True)

    def read_log(self, path: str) -> tuple[bytes, list[bytes]]:
        """Read the log at ``path``, its parts in parallel (see ``parts.read_log``)."""
        return read_log(self, path, threads=READ_THREADS)

    # ------------------------------------------------------------------------------------------ writes

    def makedirs(self, path: str) -> None:
        """Create a directory; a no-op on object stores, which have none (and s3fs would create buckets)."""
        if self.is_object_store:
            return
        self._call("mkdir", path, lambda: self.fs.makedirs(path, exist_ok=True))

    def write_atomic(self, path: str, data: bytes) -> None:
        """PUT ``data`` as one object: readers see the old or the new one. A crash leaves the old one."""
        self._fence(path)
        self.put_object(path, data)

    def put_object(self, path: str, data: bytes) -> None:
        """PUT ``data`` at ``path`` with retries, without the lease check (the lease's own writes use it)."""
        try:
            self._call("write", path, lambda: self.fs.pipe_file(path, data, **self._limit))
        finally:
            self._fresh(path)

    def remove_object(self, path: str) -> None:
        """Delete ``path`` with retries, without the lease check; a missing object is fine."""
        try:
            self._call("delete", path, lambda: self.fs.rm_file(path, **self._limit), read=True)
        except FileNotFoundError:
            pass
        finally:
            self._fresh(path)

    def append(self, path: str, data: bytes, durable: bool = False) -> None:
        """Buffer rows and PUT them as a new part of the log (see ``parts.py``): O(rows) per flush.

        A crash loses the rows buffered since the last flush; every flushed part is whole.
        """
        self._fence(path)
        with self._guard:
            log = self._logs.setdefault(path, PartLog(self, path))
        log.append(data, durable)

    def truncate(self, path: str, size: int) -> None:
        self.write_atomic(path, self.read_bytes(path)[:size])

    def delete_file(self, path: str) -> None:
        self._fence(path)
        self.remove_object(path)

    def delete_tree(self, path: str) -> None:
        """Delete every object under ``path``; a crash inside leaves some of them (deleting again finishes)."""
        self._fence(path)
        self._fresh(path)
        try:
            self._call("delete", path, lambda: self.fs.rm(path, recursive=True, **self._limit), read=True)
        except FileNotFoundError:
            pass
        finally:
            self._fresh(path)

    def put_tree(self, src_dir: str, dest_dir: str, files: list[str], move: bool = False) -> PutResult:
        """Upload ``files`` in parallel, streaming each (S3: multipart, parts in parallel), checksum as read.

        If the process dies inside, ``dest_dir`` holds some whole objects and no manifest: debris.
        """
        self._fence(dest_dir)
        for sub in sorted({os.path.dirname(f) for f in files if "/" in f}):
            self.makedirs(f"{dest_dir}/{sub}")
        total = sum(os.path.getsize(os.path.join(src_dir, rel)) for rel in files)
        uploader = Uploader(self.fs, self.retry, self.timeouts.request_s) if is_s3(self.fs) else None
        try:
            with Transfer(f"uploading {dest_dir.rsplit('/', 1)[-1]}", total, len(files)) as transfer:
                def one(rel: str) -> FileEntry:
                    src, dest = os.path.join(src_dir, rel), f"{dest_dir}/{rel}"
                    put = uploader.upload if uploader is not None else self._stream_put
                    return FileEntry(rel, *put(src, dest, transfer.advance))

                threads = UPLOAD_THREADS if uploader is not None else COPY_THREADS
                with ThreadPoolExecutor(max_workers=min(threads, max(1, len(files)))) as pool:
                    entries = list(pool.map(one, files))
        finally:
            if uploader is not None:
                uploader.close()
            self._fresh(dest_dir)
        if move:
            for rel in files:
                with contextlib.suppress(FileNotFoundError):
                    if not is_linked(src_dir, rel):  # never delete a symlink's target, outside the source
                        os.unlink(os.path.join(src_dir, rel))
        return PutResult(entries, transfer.stats())

    def _stream_put(self, src: str, dest: str, progress: Callable[[int], None]) -> tuple[int, str]:
        if self.exists(dest):  # not atomic with the write: this fs offers no create-only write
            raise FileExistsError(_errno.EEXIST, "file already exists in the checkpoint", dest)

        def attempt() -> tuple[int, str]:
            hasher, size = new_hasher(), 0
            with open(src, "rb") as f, self.fs.open(dest, "wb") as out:
                while chunk := f.read(CHUNK_SIZE):
                    hasher.update(chunk)
                    out.write(chunk)
                    size += len(chunk)
            return size, hasher.hexdigest()

        size, digest = self._call("upload", dest, attempt)
        progress(size)
        return size, digest

    def lock(self, path: str) -> RunLock:
        """Take the lease at ``path`` (exact on S3 through conditional requests; see ``lease.py``)."""
        ops = self._s3 if self._s3 is not None else EmulatedConditional(self)
        lease = LeaseLock(ops, path)
        with self._guard:
            self._leases = [held for held in self._leases if not held.released] + [lease]
        return lease
