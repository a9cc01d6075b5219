"""The storage layer: every byte trainkeep reads or writes goes through a :class:`Storage`.

Two implementations share one small surface (``base.py``):

* :class:`LocalStorage` (``local.py``) talks to the local disk with plain ``os`` calls: kernel copies with
  checksums in the same pass (``fastcopy.py``), fsync of files and directories, atomic rename, flock.
* :class:`FsspecStorage` (``remote.py``) works on any fsspec filesystem (``s3://``, ``gs://``, ``memory://``,
  a wrapped pyarrow filesystem). On object stores there is no rename: a single PUT of a whole object is the
  atomic step. Remote calls are retried (``retry.py``), S3 uploads are parallel multipart (``s3.py``), logs
  are kept in parts (``parts.py``, which also reads every log) and the run lock is a lease (``lease.py``; what
  every lock shares is in ``locking.py``). How long to wait for a remote store is ``timeouts.py``.

The manager is written against this surface only, so a wrapper (see ``trainkeep.testing``) can count, record
or fail any operation. See docs/storage.md for the guarantees of each backend.
"""

from __future__ import annotations

from trainkeep._internal.storage.base import (
    CHUNK_SIZE,
    COPY_THREADS,
    PutResult,
    Storage,
    TransferStats,
    iter_files,
    list_source_files,
    new_hasher,
)
from trainkeep._internal.storage.lease import LeaseLock
from trainkeep._internal.storage.local import FlockLock, LocalStorage
from trainkeep._internal.storage.locking import RunLock, holder_record
from trainkeep._internal.storage.remote import FsspecStorage
from trainkeep._internal.storage.resolution import as_fsspec, resolve, storage_for
from trainkeep._internal.storage.retry import RetryPolicy
from trainkeep._internal.storage.timeouts import Timeouts

__all__ = [
    "CHUNK_SIZE",
    "COPY_THREADS",
    "FlockLock",
    "FsspecStorage",
    "LeaseLock",
    "LocalStorage",
    "PutResult",
    "RetryPolicy",
    "RunLock",
    "Storage",
    "Timeouts",
    "TransferStats",
    "as_fsspec",
    "holder_record",
    "iter_files",
    "list_source_files",
    "new_hasher",
    "resolve",
    "storage_for",
]
