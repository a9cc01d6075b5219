"""What S3 offers beyond plain fsspec: parallel streaming multipart uploads and conditional requests.

Used when the filesystem is an ``s3fs.S3FileSystem`` (any S3-compatible store: AWS, MinIO, moto...). Calls go
through s3fs's client (``call_s3``), so its credentials, endpoint and session settings apply unchanged.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import fsspec.asyn

from trainkeep.storage.base import new_hasher
from trainkeep.storage.retry import RetryPolicy, call, is_missing, is_precondition_failed

PART_SIZE = 8 * 1024 * 1024
MAX_PARTS = 10_000
PART_THREADS = 8


def is_s3(fs: Any) -> bool:
    """Return True when ``fs`` is an s3fs filesystem."""
    return any(cls.__module__.startswith("s3fs") for cls in type(fs).__mro__)


class ConditionFailed(Exception):
    """A conditional request (If-Match / If-None-Match) found the object changed."""


class Uploader:
    """Upload local files to S3: one PUT for small files, parallel multipart for large ones, in bounded memory.

    At most ``PART_THREADS`` parts are in flight for all files of one checkpoint together, so the memory
    held is about ``(PART_THREADS + readers) * PART_SIZE`` whatever the checkpoint's size.
    """

    def __init__(self, fs: Any, policy: RetryPolicy, part_size: int = PART_SIZE) -> None:
        self.fs, self.policy, self.part_size = fs, policy, part_size
        self._pool = ThreadPoolExecutor(max_workers=PART_THREADS, thread_name_prefix="trainkeep-s3-part")
        self._slots = threading.BoundedSemaphore(PART_THREADS)

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
        with open(src, "rb") as f:
            if size <= part_size:
                data = f.read()
                hasher = new_hasher()
                hasher.update(data)
                self._put_new(dest, bucket, key, data)
                progress(len(data))
                return len(data), hasher.hexdigest()
            return self._multipart(f, dest, bucket, key, part_size, progress)

    def _put_new(self, dest: str, bucket: str, key: str, data: bytes) -> None:
        tries = [0]

        def put() -> Any:
            tries[0] += 1
            return self.fs.call_s3("put_object", Bucket=bucket, Key=key, Body=data, IfNoneMatch="*")

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
            "create_multipart_upload", Bucket=bucket, Key=key), self.policy)["UploadId"]
        hasher, size, futures = new_hasher(), 0, []
        failed: list[BaseException] = []
        try:
            for number in range(1, MAX_PARTS + 1):
                chunk = f.read(part_size)
                if not chunk or failed:
                    break
                hasher.update(chunk)
                size += len(chunk)
                self._slots.acquire()  # bounds the bytes in flight: blocks while PART_THREADS parts are
                fut = self._pool.submit(self._part, dest, bucket, key, upload_id, number, chunk, progress)
                fut.add_done_callback(lambda done: _note(done, failed, self._slots))
                futures.append(fut)
            parts = [{"PartNumber": i + 1, "ETag": fut.result()} for i, fut in enumerate(futures)]
            call("finish upload", dest, lambda: self.fs.call_s3(
                "complete_multipart_upload", Bucket=bucket, Key=key, UploadId=upload_id,
                MultipartUpload={"Parts": parts}, IfNoneMatch="*"), self.policy)
        except BaseException as exc:
            _cancel(futures)
            self._abort(bucket, key, upload_id)
            if is_precondition_failed(exc):
                raise FileExistsError(17, "file already exists in the checkpoint", dest) from None
            raise
        finally:
            self.fs.invalidate_cache(dest)
        return size, hasher.hexdigest()

    def _part(self, dest: str, bucket: str, key: str, upload_id: str, number: int, chunk: bytes,
              progress: Callable[[int], None]) -> str:
        out = call("upload part", f"{dest} (part {number})", lambda: self.fs.call_s3(
            "upload_part", Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=chunk),
            self.policy)
        progress(len(chunk))
        return str(out["ETag"])

    def _abort(self, bucket: str, key: str, upload_id: str) -> None:
        try:
            self.fs.call_s3("abort_multipart_upload", Bucket=bucket, Key=key, UploadId=upload_id)
        except Exception:  # best effort: an unfinished upload is invisible, and a lifecycle rule reaps it
            pass

    def _size(self, path: str) -> int | None:
        try:
            self.fs.invalidate_cache(path)
            return int(self.fs.size(path))
        except Exception:
            return None


def _note(done: Future, failed: list[BaseException], slots: threading.BoundedSemaphore) -> None:
    slots.release()  # also for a cancelled part, which never ran
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

    def __init__(self, fs: Any, policy: RetryPolicy) -> None:
        self.fs, self.policy = fs, policy

    def create(self, path: str, data: bytes) -> str:
        """Create ``path`` only if absent; return its ETag. Raises FileExistsError when it exists."""
        bucket, key, _ = self.fs.split_path(path)
        try:
            out = call("create", path, lambda: self.fs.call_s3(
                "put_object", Bucket=bucket, Key=key, Body=data, IfNoneMatch="*"), self.policy)
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

        return call("read", path, lambda: fsspec.asyn.sync(self.fs.loop, get), self.policy, read=True)

    def replace(self, path: str, data: bytes, etag: str) -> str:
        """Replace ``path`` only if its ETag is still ``etag``; return the new ETag.

        Raises:
            ConditionFailed when it changed; FileNotFoundError when it is gone.
        """
        bucket, key, _ = self.fs.split_path(path)
        try:
            out = call("replace", path, lambda: self.fs.call_s3(
                "put_object", Bucket=bucket, Key=key, Body=data, IfMatch=etag), self.policy, read=True)
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
                "delete_object", Bucket=bucket, Key=key, IfMatch=etag), self.policy, read=True)
        except Exception as exc:
            if is_precondition_failed(exc):
                raise ConditionFailed(path) from exc
            if not is_missing(exc):
                raise
        finally:
            self.fs.invalidate_cache(path)
