"""The storage layer: every byte trainkeep reads or writes goes through a :class:`Storage`.

Two implementations share one small surface:

* :class:`LocalStorage` talks to the local disk with plain ``os`` calls, because durability there needs what
  fsspec does not expose: fsync of files and of directories, and atomic rename.
* :class:`FsspecStorage` works on any fsspec filesystem (``memory://``, ``s3://``, ``gs://``...). On object
  stores there is no rename: a single PUT of a whole object is the atomic step.

The manager is written against this surface only, so a wrapper (see ``trainkeep.testing``) can count, record
or fail any operation.
"""

from __future__ import annotations

import contextlib
import errno as _errno
import logging
import os
import shutil
import socket
import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import fsspec
import xxhash

from trainkeep.errors import ConfigTypeError, RunLockedError, StorageError
from trainkeep.layout import TEMP_SUFFIX, is_reserved_file
from trainkeep.manifest import FileEntry

logger = logging.getLogger(__name__)

CHUNK_SIZE = 8 * 1024 * 1024
COPY_THREADS = 4


def new_hasher() -> Any:
    """Return a fresh hasher of the manifest's checksum algorithm."""
    return xxhash.xxh3_128()


def list_source_files(src_dir: str) -> list[str]:
    """Return the relative paths of the user files under local directory ``src_dir`` (ours are skipped).

    Raises:
        FileNotFoundError / NotADirectoryError when ``src_dir`` is not a directory.
    """
    if not os.path.isdir(src_dir):
        if os.path.exists(src_dir):
            raise NotADirectoryError(_errno.ENOTDIR, "checkpoint path is not a directory", src_dir)
        raise FileNotFoundError(_errno.ENOENT, "checkpoint directory does not exist", src_dir)
    out: list[str] = []
    for root, dirs, files in os.walk(src_dir, followlinks=False):
        dirs.sort()
        for name in sorted(files):
            rel = os.path.relpath(os.path.join(root, name), src_dir).replace(os.sep, "/")
            if not is_reserved_file(rel):
                out.append(rel)
    return out


class Storage(ABC):
    """The operations trainkeep needs from a filesystem. Paths are absolute, '/'-separated strings."""

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
        """Return the entry names in directory ``path`` ([] when it does not exist)."""

    @abstractmethod
    def makedirs(self, path: str) -> None: ...

    @abstractmethod
    def read_bytes(self, path: str) -> bytes:
        """Return the content of ``path``. Raises FileNotFoundError when missing, StorageError otherwise."""

    @abstractmethod
    def write_atomic(self, path: str, data: bytes) -> None:
        """Replace ``path`` with ``data`` so that a reader sees the old or the new content, never a mix.

        On return the new content is durable. A crash inside leaves the old content and maybe a temp file.
        """

    @abstractmethod
    def append(self, path: str, data: bytes, durable: bool = False) -> None:
        """Append ``data`` to ``path``; when ``durable`` the whole file is durable on return."""

    @abstractmethod
    def truncate(self, path: str, size: int) -> None: ...

    @abstractmethod
    def delete_file(self, path: str) -> None:
        """Delete one file; a missing file is not an error."""

    @abstractmethod
    def delete_tree(self, path: str) -> None:
        """Delete a directory and all it holds; a missing directory is not an error."""

    def sync_dir(self, path: str) -> None:
        """Make the entries of directory ``path`` durable (a no-op where the store has no directories)."""

    @abstractmethod
    def put_tree(self, src_dir: str, dest_dir: str, files: list[str]) -> list[FileEntry]:
        """Copy ``files`` (relative paths) from local ``src_dir`` into ``dest_dir``, checksumming as it goes.

        A file that already exists at the destination is an error (FileExistsError), never overwritten.
        On return every copied file is durable; the caller makes the directory entries durable.
        """

    @abstractmethod
    def open_read(self, path: str) -> Any: ...

    @abstractmethod
    def get_file(self, src: str, local_dest: str) -> None:
        """Copy one file from storage to local path ``local_dest``."""

    @abstractmethod
    def size(self, path: str) -> int: ...

    @abstractmethod
    def lock(self, run_path: str) -> RunLock:
        """Take the single-writer lock of a run. Raises RunLockedError naming the holder."""

    def checksum(self, path: str) -> tuple[int, str]:
        """Return the size and checksum of a stored file, read in chunks."""
        hasher, size = new_hasher(), 0
        with self.open_read(path) as f:
            while chunk := f.read(CHUNK_SIZE):
                hasher.update(chunk)
                size += len(chunk)
        return size, hasher.hexdigest()


class RunLock(ABC):
    """A held single-writer lock; ``release()`` is idempotent."""

    holder: dict[str, Any]

    @abstractmethod
    def release(self) -> None: ...


def holder_record() -> dict[str, Any]:
    """Return who we are, for lock files and error messages."""
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "token": uuid.uuid4().hex,
    }


def _wrap(op: str, path: str, exc: BaseException) -> BaseException:
    if isinstance(exc, (StorageError, FileNotFoundError, FileExistsError)):
        return exc
    return StorageError(op, path, exc)


# --------------------------------------------------------------------------------------------- local disk


class LocalStorage(Storage):
    """The local disk, with fsync of files and directories and atomic rename."""

    is_local = True

    def __init__(self) -> None:
        self.fs = fsspec.filesystem("file")

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
            os.makedirs(path, exist_ok=True)
        except OSError as exc:
            raise StorageError("mkdir", path, exc) from exc

    def read_bytes(self, path: str) -> bytes:
        try:
            with open(path, "rb") as f:
                return f.read()
        except OSError as exc:
            raise _wrap("read", path, exc) from exc

    def write_atomic(self, path: str, data: bytes) -> None:
        tmp = f"{path}.{uuid.uuid4().hex[:8]}{TEMP_SUFFIX}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                _write_all(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise StorageError("write", path, exc) from exc
        self.sync_dir(os.path.dirname(path))

    def append(self, path: str, data: bytes, durable: bool = False) -> None:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            try:
                _write_all(fd, data)
                if durable:
                    os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise StorageError("append", path, exc) from exc

    def truncate(self, path: str, size: int) -> None:
        try:
            os.truncate(path, size)
        except OSError as exc:
            raise StorageError("truncate", path, exc) from exc

    def delete_file(self, path: str) -> None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise StorageError("delete", path, exc) from exc

    def delete_tree(self, path: str) -> None:
        def onerror(func: Callable, failed: str, exc_info: Any) -> None:
            if not isinstance(exc_info[1], FileNotFoundError):
                raise StorageError("delete", failed, exc_info[1])

        if os.path.lexists(path):
            shutil.rmtree(path, onerror=onerror)

    def sync_dir(self, path: str) -> None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise StorageError("fsync directory", path, exc) from exc

    def put_tree(self, src_dir: str, dest_dir: str, files: list[str]) -> list[FileEntry]:
        subdirs = sorted({os.path.dirname(f) for f in files if "/" in f})
        for sub in subdirs:
            self.makedirs(os.path.join(dest_dir, sub))
        with ThreadPoolExecutor(max_workers=min(COPY_THREADS, max(1, len(files)))) as pool:
            entries = list(pool.map(lambda rel: self._copy_one(src_dir, dest_dir, rel), files))
        for sub in subdirs:
            self.sync_dir(os.path.join(dest_dir, sub))
        return entries

    def _copy_one(self, src_dir: str, dest_dir: str, rel: str) -> FileEntry:
        src, dest = os.path.join(src_dir, rel), os.path.join(dest_dir, rel)
        hasher, size = new_hasher(), 0
        buf = bytearray(CHUNK_SIZE)
        view = memoryview(buf)
        try:
            out = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            raise
        except OSError as exc:
            raise StorageError("create", dest, exc) from exc
        try:
            with open(src, "rb", buffering=0) as f:
                while n := f.readinto(buf):
                    hasher.update(view[:n])
                    _write_all(out, view[:n])
                    size += n
            os.fsync(out)
        except OSError as exc:
            raise _wrap("copy", dest, exc) from exc
        finally:
            os.close(out)
        return FileEntry(rel, size, hasher.hexdigest())

    def open_read(self, path: str) -> Any:
        return open(path, "rb")

    def get_file(self, src: str, local_dest: str) -> None:
        shutil.copyfile(src, local_dest)

    def size(self, path: str) -> int:
        return os.path.getsize(path)

    def lock(self, run_path: str) -> RunLock:
        return _FlockLock(run_path)


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


class _FlockLock(RunLock):
    """An flock(2) on the run's lock file: the kernel releases it when the holder dies, even by SIGKILL."""

    def __init__(self, path: str) -> None:
        import fcntl

        self._fd: int | None = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _parse_holder(os.pread(self._fd, 4096, 0))
            os.close(self._fd)
            self._fd = None
            raise RunLockedError(os.path.dirname(os.path.dirname(path)), holder) from None
        self.holder = holder_record()
        import json

        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, json.dumps(self.holder).encode(), 0)

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing drops the flock
            self._fd = None


def _parse_holder(raw: bytes) -> dict[str, Any]:
    import json

    try:
        holder = json.loads(raw)
        return holder if isinstance(holder, dict) else {}
    except ValueError:
        return {}


# --------------------------------------------------------------------------------------------- fsspec


class FsspecStorage(Storage):
    """Any fsspec filesystem. Whole-object writes are the atomic step; there is no rename and no fsync."""

    def __init__(self, fs: fsspec.AbstractFileSystem) -> None:
        self.fs = fs

    def exists(self, path: str) -> bool:
        try:
            return bool(self.fs.exists(path))
        except Exception as exc:
            raise _wrap("stat", path, exc) from exc

    def isdir(self, path: str) -> bool:
        try:
            return bool(self.fs.isdir(path))
        except Exception as exc:
            raise _wrap("stat", path, exc) from exc

    def listdir(self, path: str) -> list[str]:
        try:
            entries = self.fs.ls(path, detail=False, refresh=True) if self._supports_refresh() else \
                self.fs.ls(path, detail=False)
        except (FileNotFoundError, NotADirectoryError):
            return []
        except Exception as exc:
            raise _wrap("list", path, exc) from exc
        base = path.rstrip("/")
        return sorted({e.rstrip("/").rsplit("/", 1)[-1] for e in entries if e.rstrip("/") != base})

    def _supports_refresh(self) -> bool:
        return "refresh" in getattr(self.fs.ls, "__code__", type("c", (), {"co_varnames": ()})).co_varnames

    def makedirs(self, path: str) -> None:
        try:
            self.fs.makedirs(path, exist_ok=True)
        except Exception as exc:
            raise _wrap("mkdir", path, exc) from exc

    def read_bytes(self, path: str) -> bytes:
        try:
            return self.fs.cat_file(path)
        except Exception as exc:
            raise _wrap("read", path, exc) from exc

    def write_atomic(self, path: str, data: bytes) -> None:
        try:
            self.fs.pipe_file(path, data)
        except Exception as exc:
            raise _wrap("write", path, exc) from exc

    def append(self, path: str, data: bytes, durable: bool = False) -> None:
        try:
            with self.fs.open(path, "ab") as f:
                f.write(data)
        except (NotImplementedError, ValueError):
            old = self.read_bytes(path) if self.exists(path) else b""
            self.write_atomic(path, old + data)
        except Exception as exc:
            raise _wrap("append", path, exc) from exc

    def truncate(self, path: str, size: int) -> None:
        self.write_atomic(path, self.read_bytes(path)[:size])

    def delete_file(self, path: str) -> None:
        try:
            self.fs.rm_file(path)
        except FileNotFoundError:
            return
        except Exception as exc:
            raise _wrap("delete", path, exc) from exc

    def delete_tree(self, path: str) -> None:
        try:
            if self.fs.exists(path):
                self.fs.rm(path, recursive=True)
        except FileNotFoundError:
            return
        except Exception as exc:
            raise _wrap("delete", path, exc) from exc

    def put_tree(self, src_dir: str, dest_dir: str, files: list[str]) -> list[FileEntry]:
        with ThreadPoolExecutor(max_workers=min(COPY_THREADS, max(1, len(files)))) as pool:
            return list(pool.map(lambda rel: self._put_one(src_dir, dest_dir, rel), files))

    def _put_one(self, src_dir: str, dest_dir: str, rel: str) -> FileEntry:
        src, dest = os.path.join(src_dir, rel), f"{dest_dir}/{rel}"
        if self.fs.exists(dest):
            raise FileExistsError(_errno.EEXIST, "file already exists in the checkpoint", dest)
        hasher, size = new_hasher(), 0
        try:
            with open(src, "rb") as f, self.fs.open(dest, "wb") as out:
                while chunk := f.read(CHUNK_SIZE):
                    hasher.update(chunk)
                    out.write(chunk)
                    size += len(chunk)
        except Exception as exc:
            raise _wrap("upload", dest, exc) from exc
        return FileEntry(rel, size, hasher.hexdigest())

    def open_read(self, path: str) -> Any:
        return self.fs.open(path, "rb")

    def get_file(self, src: str, local_dest: str) -> None:
        try:
            self.fs.get_file(src, local_dest)
        except Exception as exc:
            raise _wrap("download", src, exc) from exc

    def size(self, path: str) -> int:
        return int(self.fs.size(path))

    def lock(self, run_path: str) -> RunLock:
        return _LeaseLock(self, run_path)


_LIVE_TOKENS: set[str] = set()
_LIVE_TOKENS_GUARD = threading.Lock()


class _LeaseLock(RunLock):
    """A lock file with a heartbeat, for stores without flock.

    A record is stale when its holder is a dead process on this host, or its heartbeat is older than
    ``ttl_s``. Object stores give no compare-and-swap here, so two starts within the same instant on two
    hosts can both win; on one host the check is exact.
    """

    ttl_s = 60.0

    def __init__(self, storage: FsspecStorage, run_path: str) -> None:
        import json

        self._storage = storage
        self._path = f"{run_path}/.trainkeep/lock"
        with _LIVE_TOKENS_GUARD:
            if storage.exists(self._path):
                holder = _parse_holder(storage.read_bytes(self._path))
                if holder and not self._is_stale(holder):
                    raise RunLockedError(run_path, holder)
            self.holder = holder_record()
            self.holder["heartbeat"] = time.time()
            storage.write_atomic(self._path, json.dumps(self.holder).encode())
            _LIVE_TOKENS.add(self.holder["token"])
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="trainkeep-lock-heartbeat", daemon=True)
        self._thread.start()

    def _is_stale(self, holder: dict[str, Any]) -> bool:
        if holder.get("host") == socket.gethostname():
            pid = holder.get("pid")
            if pid == os.getpid():
                return holder.get("token") not in _LIVE_TOKENS
            return not isinstance(pid, int) or not _pid_alive(pid)
        beat = holder.get("heartbeat")
        return not isinstance(beat, (int, float)) or time.time() - beat > self.ttl_s

    def _beat(self) -> None:
        import json

        while not self._stop.wait(self.ttl_s / 4):
            self.holder["heartbeat"] = time.time()
            with contextlib.suppress(Exception):
                self._storage.write_atomic(self._path, json.dumps(self.holder).encode())

    def release(self) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        with _LIVE_TOKENS_GUARD:
            _LIVE_TOKENS.discard(self.holder["token"])
            with contextlib.suppress(Exception):
                self._storage.delete_file(self._path)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# --------------------------------------------------------------------------------------------- resolution


def resolve(path: str | os.PathLike, filesystem: Any = None) -> tuple[Storage, str]:
    """Return the storage and the normalised path for a local path or URL, or for an explicit filesystem.

    Raises:
        ConfigTypeError when ``filesystem`` is neither an fsspec nor a pyarrow filesystem.
    """
    path = os.fspath(path)
    if filesystem is not None:
        fs = _as_fsspec(filesystem)
        stripped = fs._strip_protocol(path) if hasattr(fs, "_strip_protocol") else path
        return storage_for(fs), str(stripped).rstrip("/") or "/"
    fs, stripped = fsspec.core.url_to_fs(os.path.expanduser(path))
    return storage_for(fs), str(stripped).rstrip("/") or "/"


def storage_for(fs: fsspec.AbstractFileSystem) -> Storage:
    """Return the Storage implementation for an fsspec filesystem."""
    from fsspec.implementations.local import LocalFileSystem

    if isinstance(fs, LocalFileSystem):
        return LocalStorage()
    return FsspecStorage(fs)


def _as_fsspec(filesystem: Any) -> fsspec.AbstractFileSystem:
    if isinstance(filesystem, fsspec.AbstractFileSystem):
        return filesystem
    if type(filesystem).__module__.startswith("pyarrow"):
        from fsspec.implementations.arrow import ArrowFSWrapper

        return ArrowFSWrapper(filesystem)
    raise ConfigTypeError(
        "storage_filesystem must be an fsspec filesystem or a pyarrow.fs.FileSystem, got "
        f"{type(filesystem).__name__}"
    )


def iter_files(storage: Storage, root: str) -> Iterator[str]:
    """Yield the relative paths of every file under ``root`` on ``storage``."""
    for name in storage.listdir(root):
        full = f"{root}/{name}"
        if storage.isdir(full):
            for sub in iter_files(storage, full):
                yield f"{name}/{sub}"
        else:
            yield name
