"""Download a checkpoint directory to the local disk: files in parallel, each verified against its manifest."""

from __future__ import annotations

import contextlib
import os
import uuid
from concurrent.futures import ThreadPoolExecutor

from trainkeep._internal.core.layout import MANIFEST_NAME, METADATA_NAME, TEMP_SUFFIX
from trainkeep._internal.core.manifest import FileEntry, parse_manifest
from trainkeep._internal.storage.base import Storage
from trainkeep.errors import ChecksumMismatchError

DOWNLOAD_THREADS = 8


def expected_files(storage: Storage, root: str) -> dict[str, FileEntry] | None:
    """Return the manifest's entries of the checkpoint at ``root`` by path, or None when it has no manifest.

    Raises:
        CorruptRunError when the manifest is invalid.
    """
    path = f"{root}/{MANIFEST_NAME}"
    try:
        raw = storage.read_bytes(path)
    except FileNotFoundError:
        return None
    return {entry.path: entry for entry in parse_manifest(raw, path).files}


def download_tree(storage: Storage, root: str, files: list[str], dest: str,
                  expected: dict[str, FileEntry] | None) -> None:
    """Copy ``files`` (relative to ``root`` on ``storage``) into local directory ``dest``, in parallel.

    Each file is written to a temp name, checksummed in the same pass, compared with ``expected`` (the user
    metadata file is exempt: it may change after the commit) and only then renamed into place, replacing a
    file of the same name. If the process dies inside, ``dest`` holds whole files and maybe temp files.

    Raises:
        ChecksumMismatchError naming a file whose size or checksum differs from ``expected``, or that
        ``expected`` lists but that is missing; StorageError when the store fails.
    """
    if expected is not None:
        missing = sorted(set(expected) - set(files) - {METADATA_NAME})
        if missing:
            raise ChecksumMismatchError(f"{root}/{missing[0]} is listed in the checkpoint's manifest but is "
                                        f"missing ({len(missing)} missing in all)")
    for sub in sorted({os.path.dirname(rel) for rel in files if "/" in rel}):
        os.makedirs(os.path.join(dest, *sub.split("/")), exist_ok=True)

    def one(rel: str) -> None:
        target = os.path.join(dest, *rel.split("/"))
        # a short temp name: the target's own name plus a suffix could pass NAME_MAX (255 bytes)
        tmp = os.path.join(os.path.dirname(target), f".{uuid.uuid4().hex[:16]}{TEMP_SUFFIX}")
        try:
            size, digest = storage.download(f"{root}/{rel}", tmp)
            entry = (expected or {}).get(rel)
            if entry is not None and rel != METADATA_NAME and (size, digest) != (entry.size, entry.checksum):
                raise ChecksumMismatchError(
                    f"{root}/{rel} does not match the checkpoint's manifest: {size} bytes with checksum "
                    f"{digest}, the manifest says {entry.size} bytes with checksum {entry.checksum}")
            os.replace(tmp, target)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    with ThreadPoolExecutor(max_workers=min(DOWNLOAD_THREADS, max(1, len(files)))) as pool:
        list(pool.map(one, files))
