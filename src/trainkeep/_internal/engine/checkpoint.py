"""Checkpoint: a directory on a filesystem, as in Ray Train."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from typing import Any

import fsspec

from trainkeep._internal.core.layout import METADATA_NAME, TEMP_SUFFIX, is_reserved_file
from trainkeep.errors import CheckpointNotFoundError, MetadataError, NotAPathError


class Checkpoint:
    """A directory of files that make up one checkpoint, on the local disk or any fsspec filesystem.

    Two Checkpoints are equal when they name the same path on the same filesystem.

    Args:
        path: a local path or a URL (``s3://bucket/run/checkpoint_000003``).
        filesystem: the fsspec filesystem of ``path`` (a ``pyarrow.fs.FileSystem`` is wrapped); inferred from
            the URL when None.

    Raises:
        ConfigTypeError when ``filesystem`` is neither an fsspec nor a pyarrow filesystem.
    """

    def __init__(self, path: str | os.PathLike, filesystem: Any = None) -> None:
        path = os.fspath(path)
        if filesystem is None:
            filesystem, path = fsspec.core.url_to_fs(os.path.expanduser(path))
        else:  # a pyarrow.fs.FileSystem (what Ray's Checkpoint takes) is wrapped, as RunConfig's is
            from trainkeep._internal.storage.resolution import as_fsspec

            filesystem = as_fsspec(filesystem, "Checkpoint filesystem")
        if hasattr(filesystem, "_strip_protocol"):
            path = filesystem._strip_protocol(path)
        self.filesystem: fsspec.AbstractFileSystem = filesystem
        self.path: str = str(path).rstrip("/") or "/"

    @classmethod
    def from_directory(cls, path: str | os.PathLike) -> Checkpoint:
        """Return a Checkpoint for a local directory (nothing is copied until it is reported)."""
        return cls(os.path.abspath(os.path.expanduser(os.fspath(path))), fsspec.filesystem("file"))

    @property
    def is_local(self) -> bool:
        return "file" in _protocols(self.filesystem)

    def to_directory(self, path: str | os.PathLike | None = None) -> str:
        """Copy the checkpoint's files into local directory ``path`` (a fresh temp dir when None); return it.

        Files are fetched in parallel and, when the checkpoint has a manifest, each is verified against it
        before it takes its name (the temp name is short and hidden, so any name a report accepts, up to 255
        bytes, restores). trainkeep's own bookkeeping files are not copied. Existing files of the same names are
        replaced.

        Raises:
            FileNotFoundError when the checkpoint directory does not exist; ChecksumMismatchError naming a file
            that differs from the manifest or is missing; CorruptRunError for an invalid manifest;
            StorageError when the store fails.
        """
        from trainkeep._internal.storage import storage_for
        from trainkeep._internal.storage.download import download_tree, expected_files

        dest = os.fspath(path) if path is not None else tempfile.mkdtemp(
            prefix=f"checkpoint_tmp_{uuid.uuid4().hex[:8]}_"
        )
        os.makedirs(dest, exist_ok=True)
        storage = storage_for(self.filesystem)
        download_tree(storage, self.path, self._files(), dest, expected_files(storage, self.path))
        return dest

    @contextlib.contextmanager
    def as_directory(self) -> Iterator[str]:
        """Yield a local directory holding the checkpoint's files.

        A local checkpoint yields its own path (no copy; do not modify it). A remote one is downloaded (in
        parallel, verified against its manifest as in :meth:`to_directory`) to a temp dir removed on exit.
        """
        if self.is_local:
            yield self.path
            return
        tmp = self.to_directory()
        try:
            yield tmp
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _files(self) -> list[str]:
        with contextlib.suppress(Exception):  # list what is on the store now, not an older cached listing
            self.filesystem.invalidate_cache(self.path)
        if not self.filesystem.isdir(self.path):
            raise CheckpointNotFoundError(f"checkpoint directory {self.path!r} does not exist")
        base = self.path.rstrip("/")
        out = []
        for full in self.filesystem.find(self.path):
            rel = full[len(base) :].lstrip("/") if full.startswith(base) else full.rsplit("/", 1)[-1]
            if not is_reserved_file(rel):
                out.append(rel)
        return sorted(out)

    def get_metadata(self) -> dict[str, Any]:
        """Return the user metadata stored with the checkpoint ({} when none)."""
        path = f"{self.path}/{METADATA_NAME}"
        try:
            raw = self.filesystem.cat_file(path)
        except FileNotFoundError:
            return {}
        return json.loads(raw)

    def set_metadata(self, metadata: dict[str, Any]) -> None:
        """Replace the user metadata. It is encoded first, so a value JSON cannot hold changes nothing.

        On a local disk the file is replaced atomically: if the process dies inside, the old metadata (or none)
        stays, plus at most a temp file that verification ignores.

        Raises:
            TypeError when ``metadata`` is not a dict or holds values JSON cannot encode; OSError when the write
            fails (the old metadata stays).
        """
        if not isinstance(metadata, dict):
            raise MetadataError(f"metadata must be a dict, got {type(metadata).__name__}")
        try:
            data = json.dumps(metadata).encode()
        except (TypeError, ValueError) as exc:
            raise MetadataError(f"metadata must be JSON-serialisable: {exc}") from None
        path = f"{self.path}/{METADATA_NAME}"
        if self.is_local:
            # Our temp suffix, so a leftover from a crash here is never taken for a user file of the checkpoint.
            tmp = f"{path}.{uuid.uuid4().hex[:8]}{TEMP_SUFFIX}"
            try:
                with open(tmp, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
        else:
            self.filesystem.pipe_file(path, data)

    def update_metadata(self, metadata: dict[str, Any]) -> None:
        """Merge ``metadata`` into the stored metadata (``dict.update``)."""
        merged = self.get_metadata()
        if not isinstance(metadata, dict):
            raise MetadataError(f"metadata must be a dict, got {type(metadata).__name__}")
        merged.update(metadata)
        self.set_metadata(merged)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Checkpoint):
            return NotImplemented
        return self.path == other.path and _fs_key(self.filesystem) == _fs_key(other.filesystem)

    def __hash__(self) -> int:
        return hash((self.path, _protocols(self.filesystem)))

    def __repr__(self) -> str:
        proto = "local" if self.is_local else _protocols(self.filesystem)[0]
        return f"Checkpoint(filesystem={proto}, path={self.path})"

    def __fspath__(self) -> str:
        raise NotAPathError(
            "a Checkpoint is not a path; use `with checkpoint.as_directory() as d:` or checkpoint.path"
        )

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "filesystem": self.filesystem}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.path = state["path"]
        self.filesystem = state["filesystem"]


def _protocols(fs: fsspec.AbstractFileSystem) -> tuple[str, ...]:
    proto = fs.protocol
    return (proto,) if isinstance(proto, str) else tuple(proto)


def _fs_key(fs: fsspec.AbstractFileSystem) -> Any:
    if "file" in _protocols(fs):
        return ("file",)
    return (_protocols(fs), getattr(fs, "_fs_token", id(fs)))
