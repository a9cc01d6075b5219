"""The surface every storage backend offers, and the helpers shared by all of them.

Why this surface and no more: a run needs whole-object writes that are atomic (the commit point), a way to
copy a directory in with checksums and to copy files back out verified, listing, deletion, an append-only
log, and a single-writer lock. Everything else (rename, partial writes, directory semantics) differs too much
between a local disk and an object store to be relied on, so no caller asks for it. Paths are plain '/'-separated strings, never
``pathlib`` objects, because a ``Path`` would collapse the ``//`` of ``s3://``.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import fsspec
import xxhash

from trainkeep._internal.core.manifest import FileEntry
from trainkeep._internal.storage.locking import RunLock
from trainkeep._internal.storage.tree import scan_source
from trainkeep.errors import StorageError

logger = logging.getLogger(__name__)

CHUNK_SIZE = 8 * 1024 * 1024
COPY_THREADS = 4


def new_hasher() -> Any:
    """Return a fresh hasher of the manifest's checksum algorithm (xxh3_128)."""
    return xxhash.xxh3_128()


def list_source_files(src_dir: str) -> list[str]:
    """Return the relative paths of the user files under local directory ``src_dir`` (ours are skipped).

    Raises:
        CheckpointNotFoundError / CheckpointNotADirectoryError (a FileNotFoundError / NotADirectoryError) when
        ``src_dir`` is not a directory;
        UnsupportedCheckpointFileError (a ValueError) for an entry that cannot be stored and restored as it is.
    """
    return scan_source(src_dir)  # refuses what cannot round-trip (names, FIFOs, devices, loops, the run itself)


@dataclass(frozen=True)
class TransferStats:
    """What one ``put_tree`` moved: bytes, files, wall time, and whether a progress bar showed it."""

    nbytes: int
    files: int
    seconds: float
    moved: bool = False
    showed_progress: bool = False

    def describe(self) -> str:
        """Return e.g. ``'1.0 GiB in 8 files, 0.62 s (1.6 GiB/s)'``."""
        how = "moved" if self.moved else "in"
        rate = f" ({format_bytes(self.nbytes / self.seconds)}/s)" if self.seconds > 0 else ""
        return f"{format_bytes(self.nbytes)} {how} {self.files} files, {self.seconds:.3f} s{rate}"


def format_bytes(n: float) -> str:
    """Return ``n`` bytes in binary units, e.g. ``'12.5 MiB'``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


@dataclass(frozen=True)
class PutResult:
    """What one ``put_tree`` stored: the manifest entries of its files, and the statistics of the transfer."""

    entries: list[FileEntry]
    stats: TransferStats


class Storage(ABC):
    """The operations trainkeep needs from a filesystem. Paths are absolute, '/'-separated strings.

    Reads: ``exists``, ``isdir``, ``listdir``, ``size``, ``read_bytes``, ``read_log``, ``checksum``,
    ``download``. Writes: ``makedirs``, ``write_atomic`` (the commit point), ``put_tree`` (a checkpoint's
    files), ``append`` and ``truncate`` (the history log), ``delete_file``, ``delete_tree``, ``sync_dir``.
    And ``lock``, the single writer.
    """

    fs: fsspec.AbstractFileSystem
    is_local: bool = False

    def join(self, *parts: str) -> str:
        return "/".join(p.rstrip("/") if i == 0 else p.strip("/") for i, p in enumerate(parts) if p)

    @abstractmethod
    def exists(self, path: str) -> bool: ...

    @abstractmethod
    def isdir(self, path: str) -> bool: ...

    @abstractmethod
    def listdir(self, path: str) -> list[str]:
        """Return the entry names in directory ``path`` ([] when it does not exist), fresh from storage."""

    @abstractmethod
    def size(self, path: str) -> int: ...

    @abstractmethod
    def read_bytes(self, path: str) -> bytes:
        """Return the content of ``path``. Raises FileNotFoundError when missing, StorageError otherwise."""

    def read_range(self, path: str, start: int, end: int) -> bytes:
        """Return bytes ``start`` to ``end`` of ``path`` (fewer when it is shorter); raises as :meth:`read_bytes`.

        This default reads the whole file; backends that can read a range override it.
        """
        return self.read_bytes(path)[start:end]

    @abstractmethod
    def read_log(self, path: str) -> tuple[bytes, list[bytes]]:
        """Return the log at ``path``: the appended file's bytes (b"" when absent) and its parts, in order.

        Parts exist where the backend cannot append (object stores; see ``parts.py``); a local log has none
        unless it was copied from one.
        """

    @abstractmethod
    def checksum(self, path: str) -> tuple[int, str]:
        """Return the size and checksum of a stored file, read in chunks."""

    def seal(self, path: str) -> tuple[int, str]:
        """Return the size and checksum of a file that was written in place (not by this Storage), and make
        its bytes durable, as a commit needs before its manifest (a NO_UPLOAD checkpoint's files).

        Here: :meth:`checksum` alone, for stores where a written object is durable (an object store's PUT); the
        local disk also fsyncs the file. Raises what :meth:`checksum` raises.
        """
        return self.checksum(path)

    @abstractmethod
    def download(self, src: str, local_dest: str) -> tuple[int, str]:
        """Copy stored file ``src`` to a new local file ``local_dest`` in one pass; return its size and checksum.

        A crash inside leaves a partial ``local_dest``; storage is not changed.
        """

    @abstractmethod
    def makedirs(self, path: str) -> None: ...

    @abstractmethod
    def write_atomic(self, path: str, data: bytes) -> None:
        """Replace ``path`` with ``data`` so that a reader sees the old or the new content, never a mix.

        On return the new content is durable. A crash inside leaves the old content and maybe a temp file.
        """

    @abstractmethod
    def put_tree(self, src_dir: str, dest_dir: str, files: list[str], move: bool = False) -> PutResult:
        """Copy ``files`` (relative paths) from local ``src_dir`` into ``dest_dir``, checksumming as it goes.

        With ``move`` the source is handed over: on return its listed files are gone from ``src_dir``
        (renamed where it lies on the same filesystem, copied then deleted otherwise).
        A file that already exists at the destination is an error (FileExistsError), never overwritten.
        On return every copied file is durable; the caller makes the directory entries durable.
        If the process dies inside, ``dest_dir`` holds some files and no manifest: debris for the sweep.
        """

    @abstractmethod
    def append(self, path: str, data: bytes, durable: bool = False) -> None:
        """Append ``data`` (whole lines) to the log at ``path``; when ``durable`` the log is durable on return.

        Read it back with :meth:`read_log`. Backends without appends keep the log in parts (see ``parts.py``).
        """

    @abstractmethod
    def truncate(self, path: str, size: int) -> None: ...

    @abstractmethod
    def delete_file(self, path: str) -> None:
        """Delete one file; a missing file is not an error."""

    @abstractmethod
    def delete_tree(self, path: str) -> None:
        """Delete a directory and all it holds; a missing directory is not an error."""

    def sync_dir(self, path: str) -> None:  # noqa: B027 - a hook whose default is to do nothing
        """Make the entries of directory ``path`` durable (a no-op where the store has no directories)."""

    @abstractmethod
    def lock(self, path: str) -> RunLock:
        """Take the single-writer lock whose record lives at ``path``. Raises RunLockedError naming the holder."""


def hash_stream(f: Any) -> tuple[int, str]:
    """Return the size and checksum of what is left to read in binary file object ``f``, read in chunks."""
    hasher, size = new_hasher(), 0
    while chunk := f.read(CHUNK_SIZE):
        hasher.update(chunk)
        size += len(chunk)
    return size, hasher.hexdigest()


def copy_stream(f: Any, local_dest: str) -> tuple[int, str]:
    """Copy what is left in binary file object ``f`` to new local file ``local_dest``; return size and checksum."""
    hasher, size = new_hasher(), 0
    with open(local_dest, "wb") as out:
        while chunk := f.read(CHUNK_SIZE):
            hasher.update(chunk)
            out.write(chunk)
            size += len(chunk)
    return size, hasher.hexdigest()


def wrap_error(op: str, path: str, exc: BaseException) -> BaseException:
    """Return ``exc`` as the error the Storage contract promises (StorageError unless it is already typed)."""
    if isinstance(exc, (StorageError, FileNotFoundError, FileExistsError)):
        return exc
    return StorageError(op, path, exc)


def iter_files(storage: Storage, root: str) -> Iterator[str]:
    """Yield the relative paths of every file under ``root`` on ``storage``."""
    for name in storage.listdir(root):
        full = f"{root}/{name}"
        if storage.isdir(full):
            for sub in iter_files(storage, full):
                yield f"{name}/{sub}"
        else:
            yield name
