"""From a user's ``storage_path`` (and optional ``storage_filesystem``) to a Storage and a path on it."""

from __future__ import annotations

import os
from typing import Any

import fsspec

from trainkeep.errors import ConfigTypeError
from trainkeep.storage.base import Storage
from trainkeep.storage.local import LocalStorage
from trainkeep.storage.remote import FsspecStorage


def resolve(path: str | os.PathLike, filesystem: Any = None) -> tuple[Storage, str]:
    """Return the storage and the normalised path for a local path or any fsspec URL, or an explicit filesystem.

    URLs take fsspec's per-protocol defaults (``fsspec.config.conf``, e.g. an S3 endpoint) and the usual
    environment (AWS_* variables...). A ``pyarrow.fs.FileSystem`` is wrapped for fsspec.

    Raises:
        ConfigTypeError when ``filesystem`` is neither an fsspec nor a pyarrow filesystem.
    """
    path = os.fspath(path)
    if filesystem is not None:
        fs = as_fsspec(filesystem)
        stripped = fs._strip_protocol(path) if hasattr(fs, "_strip_protocol") else path
        return storage_for(fs), str(stripped).rstrip("/") or "/"
    fs, stripped = fsspec.core.url_to_fs(os.path.expanduser(path))
    return storage_for(fs), str(stripped).rstrip("/") or "/"


def storage_for(fs: fsspec.AbstractFileSystem) -> Storage:
    """Return the Storage implementation for an fsspec filesystem (the local disk gets the fast one)."""
    from fsspec.implementations.local import LocalFileSystem

    if isinstance(fs, LocalFileSystem):
        return LocalStorage()
    return FsspecStorage(fs)


def as_fsspec(filesystem: Any) -> fsspec.AbstractFileSystem:
    """Return ``filesystem`` as an fsspec filesystem: pyarrow's local one becomes fsspec's, others are wrapped.

    Raises:
        ConfigTypeError for anything else, naming its type.
    """
    if isinstance(filesystem, fsspec.AbstractFileSystem):
        return filesystem
    if type(filesystem).__module__.startswith("pyarrow"):
        if type(filesystem).__name__ == "LocalFileSystem":
            return fsspec.filesystem("file")  # the same disk: keep fsync, rename and flock
        from fsspec.implementations.arrow import ArrowFSWrapper

        return ArrowFSWrapper(filesystem)
    raise ConfigTypeError(
        "storage_filesystem must be an fsspec filesystem or a pyarrow.fs.FileSystem, got "
        f"{type(filesystem).__name__} ({filesystem!r})"
    )
