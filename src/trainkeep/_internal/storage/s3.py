"""What S3 offers beyond plain fsspec: parallel streaming multipart uploads and conditional requests.

Used when the filesystem is an ``s3fs.S3FileSystem`` (any S3-compatible store: AWS, MinIO, moto...). Calls go
through s3fs's client (``call_s3``), so its credentials, endpoint and session settings apply unchanged.
"""

from __future__ import annotations

import functools
import math
import os
import queue
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import fsspec.asyn

from trainkeep._internal.storage.base import new_hasher
from trainkeep._internal.storage.retry import RetryPolicy, call, classify, is_missing, is_precondition_failed

PART_SIZE = 16 * 1024 * 1024
MAX_PARTS = 10_000
PART_THREADS = 8


def is_s3(fs: Any) -> bool:
    """Return True when ``fs`` is an s3fs filesystem."""
    return any(cls.__module__.startswith("s3fs") for cls in type(fs).__mro__)


class ConditionFailed(Exception):
    """A conditional request (If-Match / If-None-Match) found the object changed."""


class Uploader:
    """Upload local files to S3: one PUT for small files, parallel multipart for large ones, in bounded memory.

    Chunks are read into a pool of ``PART_THREADS`` reusable buffers; a buffer returns to the pool when its
    request is done. So for all files of a checkpoint together at most ``PART_THREADS * PART_SIZE`` bytes
    (128 MiB) are held, whatever the checkpoint's size, and the same memory is reused for every part (a fresh
    allocation per part fragments the heap and lets the process grow). The HTTP stack keeps about two more
    copies of what is in flight: measured, the uploading process grows by ~350 MiB at most.
    """

    def __init__(self, fs: Any, policy: RetryPolicy, request_s: float | None = None,
                 part_size: int = PART_SIZE) -> None:
        self.fs, self.policy, self.part_size = fs, policy, part_size
        self.limit = {"timeout": request_s} if request_s else {}  # each request is cancelled after this
        self._pool = ThreadPoolExecutor(max_workers=PART_THREADS, thread_name_prefix="trainkeep-s3-part")
        self._buffers = _BufferPool(PART_THREADS, part_size)

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    def upload(self, src: str, dest: str, progress: Callable[[int], None]) -> tuple[int, str]:
        """Upload local file ``src`` to new object ``dest``; return its size and checksum (read once).

        Raises:
            FileExistsError when ``dest`` exists (If-None-Match); StorageError when the store fails. A crash
            inside leaves no object at ``dest`` (an incomplete multipart upload is invisible).
        """
        size = os.path.getsize(src)
        bucket, key, _ = self.fs.split_path(dest)
        part_size = max(self.part_size, math.ceil(size / MAX_PARTS))
        with open(src, "rb", buffering=0) as f:
            if size <= part_size:
                slot = self._buffers.take_slot()  # a small file is read whole: no pooled buffer needed
                try:
                    body = f.read()
                    hasher = new_hasher()
                    hasher.update(body)
                    self._put_new(dest, bucket, key, body)
                finally:
                    self._buffers.give(slot)
                progress(len(body))
                return len(body), hasher.hexdigest()
            return self._multipart(f, dest, bucket, key, part_size, progress)

    def _put_new(self, dest: str, bucket: str, key: str, data: bytes | bytearray) -> None:
        tries = [0]

        def put() -> Any:
            tries[0] += 1
            return self.fs.call_s3("put_object", Bucket=bucket, Key=key, Body=data, IfNoneMatch="*",
                                   **self.limit)

        try:
            call("upload", dest, put, self.policy)
        except Exception as exc:
            if not is_precondition_failed(exc):
                raise
            if tries[0] == 1 or self._size(dest) != len(data):  # a retry can find its own first attempt
                raise FileExistsError(17, "file already exists in the checkpoint", dest) from None
        finally:
            self.fs.invalidate_cache(dest)

    def _multipart(self, f: Any, dest: str, bucket: str, key: str, part_size: int,
                   progress: Callable[[int], None]) -> tuple[int, str]:
        upload_id = call("start upload", dest, lambda: self.fs.call_s3(
            "create_multipart_upload", Bucket=bucket, Key=key, **self.limit), self.policy)["UploadId"]
        hasher, size, futures = new_hasher(), 0, []
        failed: list[BaseException] = []
        try:
            for number in range(1, MAX_PARTS + 1):
                buffer = self._buffers.take()  # blocks while every buffer is in flight: bounded memory
                try:
                    chunk = self._buffers.fill(buffer, f, part_size)
                except BaseException:
                    self._buffers.give(buffer)
                    raise
                if not chunk or failed:
                    self._buffers.give(buffer)
                    break
                hasher.update(chunk)
                size += len(chunk)
                fut = self._pool.submit(self._part, dest, bucket, key, upload_id, number, chunk, progress)
                fut.add_done_callback(functools.partial(_note, failed=failed, buffers=self._buffers, buffer=buffer))
                futures.append(fut)
            parts = [{"PartNumber": i + 1, "ETag": fut.result()} for i, fut in enumerate(futures)]
            call("finish upload", dest, lambda: self.fs.call_s3(
                "complete_multipart_upload", Bucket=bucket, Key=key, UploadId=upload_id,
                MultipartUpload={"Parts": parts}, IfNoneMatch="*", **self.limit), self.policy)
        except BaseException as exc:
            _cancel(futures)
            self._abort(bucket, key, upload_id)
            if is_precondition_failed(exc):
                raise FileExistsError(17, "file already exists in the checkpoint", dest) from None
            raise
        finally:
            self.fs.invalidate_cache(dest)
        return size, hasher.hexdigest()

    def _part(self, dest: str, bucket: str, key: str, upload_id: str, number: int, chunk: bytes | bytearray,
              progress: Callable[[int], None]) -> str:
        out = call("upload part", f"{dest} (part {number})", lambda: self.fs.call_s3(
            "upload_part", Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=chunk, **self.limit),
            self.policy)
        progress(len(chunk))
        return str(out["ETag"])

    def _abort(self, bucket: str, key: str, upload_id: str) -> None:
        try:
            self.fs.call_s3("abort_multipart_upload", Bucket=bucket, Key=key, UploadId=upload_id,
                            **self.limit)
        except Exception:  # best effort: an unfinished upload is invisible, and a lifecycle rule reaps it
            pass

    def _size(self, path: str) -> int | None:
        try:
            self.fs.invalidate_cache(path)
            return int(self.fs.size(path, **self.limit))
        except Exception:
            return None


class _BufferPool:
    """``count`` slots, each with a reusable buffer of ``size`` bytes allocated on first use (a bytearray is
    zero-filled, so it costs its size in memory at once); ``take`` blocks while every slot is out."""

    def __init__(self, count: int, size: int) -> None:
        self.size = size
        self._free: queue.LifoQueue[bytearray | None] = queue.LifoQueue()
        for _ in range(count):
            self._free.put(None)

    def take(self) -> bytearray:
        """Take a slot with its buffer (allocated now if the slot has none yet); blocks while none is free."""
        buffer = self._free.get()
        return buffer if buffer is not None else bytearray(self.size)

    def take_slot(self) -> bytearray | None:
        """Take a slot without needing its buffer (it may have none); give it back with :meth:`give`."""
        return self._free.get()

    def give(self, buffer: bytearray | None) -> None:
        self._free.put(buffer if buffer is not None and len(buffer) == self.size else None)

    @staticmethod
    def fill(buffer: bytearray, f: Any, limit: int) -> bytes | bytearray:
        """Read up to ``limit`` bytes of ``f``; return the buffer itself when full, else a copy of what was read.

        botocore takes bytes or a bytearray as a body, not a memoryview: a short read is copied (once a file).
        """
        if limit > len(buffer):  # a file so large that its parts outgrow the buffers (> 160 GB)
            return f.read(limit)
        view = memoryview(buffer)
        got = 0
        while got < limit and (n := f.readinto(view[got:limit])):
            got += n
        return buffer if got == len(buffer) else bytes(view[:got])


def _note(done: Future, *, failed: list[BaseException], buffers: _BufferPool, buffer: bytearray) -> None:
    buffers.give(buffer)  # also for a cancelled part, which never ran
    if not done.cancelled() and done.exception() is not None:
        failed.append(done.exception())  # type: ignore[arg-type]


def _cancel(futures: list[Future]) -> None:
    for fut in futures:
        fut.cancel()
    for fut in futures:
        if not fut.cancelled():
            try:
                fut.result()
            except Exception:
                pass


class S3Conditional:
    """Conditional writes on S3 (If-None-Match: * to create, If-Match: <etag> to replace or delete).

    These make the lease lock exact: two writers racing to create or take over the lock cannot both win.
    """

    exact = True

    def __init__(self, fs: Any, policy: RetryPolicy, request_s: float | None = None) -> None:
        self.fs, self.policy = fs, policy
        self.limit = {"timeout": request_s} if request_s else {}  # each request is cancelled after this

    def create(self, path: str, data: bytes) -> str:
        """Create ``path`` only if absent; return its ETag. Raises FileExistsError when it exists."""
        bucket, key, _ = self.fs.split_path(path)
        try:
            out = call("create", path, lambda: self.fs.call_s3(
                "put_object", Bucket=bucket, Key=key, Body=data, IfNoneMatch="*", **self.limit), self.policy)
        except Exception as exc:
            if is_precondition_failed(exc) or isinstance(exc, FileExistsError):
                raise FileExistsError(17, "object exists", path) from None
            raise
        finally:
            self.fs.invalidate_cache(path)
        return str(out["ETag"])

    def read(self, path: str) -> tuple[bytes, str]:
        """Return the content and ETag of ``path`` from one GET. Raises FileNotFoundError when missing."""
        bucket, key, _ = self.fs.split_path(path)

        async def get() -> tuple[bytes, str]:
            resp = await self.fs._call_s3("get_object", Bucket=bucket, Key=key)
            try:
                return await resp["Body"].read(), str(resp["ETag"])
            finally:
                resp["Body"].close()

        return call("read", path, lambda: fsspec.asyn.sync(self.fs.loop, get, **self.limit), self.policy,
                    read=True)

    def replace(self, path: str, data: bytes, etag: str) -> str:
        """Replace ``path`` only if its ETag is still ``etag``; return the new ETag.

        Raises:
            ConditionFailed when it changed; FileNotFoundError when it is gone.
        """
        bucket, key, _ = self.fs.split_path(path)
        try:
            out = call("replace", path, lambda: self.fs.call_s3(
                "put_object", Bucket=bucket, Key=key, Body=data, IfMatch=etag, **self.limit), self.policy,
                read=True)
        except Exception as exc:
            if is_precondition_failed(exc):
                raise ConditionFailed(path) from exc
            raise
        finally:
            self.fs.invalidate_cache(path)
        return str(out["ETag"])

    def delete(self, path: str, etag: str) -> None:
        """Delete ``path`` only if its ETag is still ``etag`` (a missing object is fine).

        Raises:
            ConditionFailed when it changed.
        """
        bucket, key, _ = self.fs.split_path(path)
        try:
            call("delete", path, lambda: self.fs.call_s3(
                "delete_object", Bucket=bucket, Key=key, IfMatch=etag, **self.limit), self.policy,
                read=True)
        except Exception as exc:
            if is_precondition_failed(exc):
                raise ConditionFailed(path) from exc
            if is_missing(exc):
                return
            if classify(exc).status not in (400, 501):
                raise
            # A store without conditional deletes: compare, then delete (a small window remains).
            if self.read(path)[1] != etag:
                raise ConditionFailed(path) from exc
            call("delete", path, lambda: self.fs.call_s3("delete_object", Bucket=bucket, Key=key, **self.limit),
                 self.policy)
        finally:
            self.fs.invalidate_cache(path)
