"""From a user's ``storage_path`` (and optional ``storage_filesystem``) to a Storage and a path on it."""

from __future__ import annotations

import os
from typing import Any

import fsspec

from trainkeep._internal.storage.base import Storage
from trainkeep._internal.storage.local import LocalStorage
from trainkeep._internal.storage.remote import FsspecStorage
from trainkeep._internal.storage.s3 import is_s3
from trainkeep._internal.storage.timeouts import Timeouts
from trainkeep.errors import ConfigError, ConfigTypeError

S3_PROTOCOLS = ("s3", "s3a")
ONE_ATTEMPT = Timeouts().botocore_config()["retries"]


def resolve(path: str | os.PathLike, filesystem: Any = None) -> tuple[Storage, str]:
    """Return the storage and the normalised path for a local path or any fsspec URL, or an explicit filesystem.

    URLs take fsspec's per-protocol defaults (``fsspec.config.conf``, e.g. an S3 endpoint) and the usual
    environment (AWS_* variables...); an ``s3://`` URL also gets our timeouts (see :func:`s3_options`). A
    ``pyarrow.fs.FileSystem`` is wrapped for fsspec. An explicit ``filesystem`` is used as it is.

    Raises:
        ConfigTypeError when ``filesystem`` is neither an fsspec nor a pyarrow filesystem; ConfigError when a
        ``TRAINKEEP_STORAGE_*`` variable is not a number of seconds > 0, or when a URL has a query string
        (``s3://b/p?endpoint_override=...``: options go on ``filesystem``).
    """
    path = os.fspath(path)
    if filesystem is not None:
        fs = as_fsspec(filesystem)
        stripped = fs._strip_protocol(path) if hasattr(fs, "_strip_protocol") else path
        return storage_for(fs), str(stripped).rstrip("/") or "/"
    url = os.path.expanduser(path)
    protocol = fsspec.core.split_protocol(url)[0]
    if protocol not in (None, "file", "local") and "?" in url:
        # pyarrow (so Ray) reads "?endpoint_override=..." as options; fsspec would make it part of the key
        raise ConfigError(
            f"storage_path {path!r} has a query string, which trainkeep does not read as filesystem options; "
            "pass the options on a filesystem instead, e.g. storage_filesystem=s3fs.S3FileSystem(endpoint_url=...) "
            "(or set AWS_ENDPOINT_URL), with storage_path='bucket/sub-path'")
    if protocol not in S3_PROTOCOLS:
        fs, stripped = fsspec.core.url_to_fs(url)
        return storage_for(fs), str(stripped).rstrip("/") or "/"
    timeouts = Timeouts.from_env()
    fs, stripped = fsspec.core.url_to_fs(url, **s3_options(timeouts))
    return storage_for(fs, timeouts), str(stripped).rstrip("/") or "/"


def s3_options(timeouts: Timeouts) -> dict[str, Any]:
    """Return the options trainkeep builds an s3fs filesystem with: botocore's ``config_kwargs`` set to our
    connect and read timeouts and to one attempt (we retry), under what ``fsspec.config.conf`` sets for s3.

    A ``config_kwargs`` key set in fsspec's configuration (e.g. ``read_timeout``) wins over ours.
    """
    configured: dict[str, Any] = {}
    for proto in S3_PROTOCOLS:
        configured.update((fsspec.config.conf.get(proto) or {}).get("config_kwargs") or {})
    return {"config_kwargs": {**timeouts.botocore_config(), **configured}}


def storage_for(fs: fsspec.AbstractFileSystem, timeouts: Timeouts | None = None) -> Storage:
    """Return the Storage implementation for an fsspec filesystem (the local disk gets the fast one).

    Raises:
        ConfigError when ``timeouts`` is None and a ``TRAINKEEP_STORAGE_*`` variable is not valid (remote
        filesystems only: the local disk has no timeouts).
    """
    from fsspec.implementations.local import LocalFileSystem

    if isinstance(fs, LocalFileSystem):
        return LocalStorage()
    if is_s3(fs) and (getattr(fs, "config_kwargs", None) or {}).get("retries") == ONE_ATTEMPT:
        # botocore told to try once (as we build it, also after pickling to a worker, which drops attributes):
        # s3fs's own loop (5 tries) goes too, so that only ours retries, under its deadline
        fs.retries = 1
    return FsspecStorage(fs, timeouts=timeouts)


def as_fsspec(filesystem: Any, field: str = "storage_filesystem") -> fsspec.AbstractFileSystem:
    """Return ``filesystem`` as an fsspec filesystem: pyarrow's local one becomes fsspec's, others are wrapped.

    Raises:
        ConfigTypeError for anything else, naming ``field`` and the type.
    """
    if isinstance(filesystem, fsspec.AbstractFileSystem):
        return filesystem
    if type(filesystem).__module__.startswith("pyarrow"):
        if type(filesystem).__name__ == "LocalFileSystem":
            return fsspec.filesystem("file")  # the same disk: keep fsync, rename and flock
        from fsspec.implementations.arrow import ArrowFSWrapper

        return ArrowFSWrapper(filesystem)
    raise ConfigTypeError(
        f"{field} must be an fsspec filesystem or a pyarrow.fs.FileSystem, got "
        f"{type(filesystem).__name__} ({filesystem!r})"
    )
