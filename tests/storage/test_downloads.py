"""Checkpoint.to_directory / as_directory on every backend: all files come down, each verified against the
manifest; a file that differs or is missing raises ChecksumMismatchError naming it; user metadata is exempt."""

from __future__ import annotations

import os

import pytest

import trainkeep as tk
from trainkeep._internal.core.layout import MANIFEST_NAME
from trainkeep.errors import ChecksumMismatchError


@pytest.fixture
def committed(backend, make_files):
    files = {f"shard_{i}.bin": os.urandom(100_000 + i) for i in range(6)} | {"nested/dir/cfg.json": b"{}"}
    with backend.manager() as manager:
        checkpoint = manager.report({"step": 0}, checkpoint=tk.Checkpoint.from_directory(make_files(files)))
    return checkpoint, files


def tree(root: str) -> dict[str, bytes]:
    out = {}
    for dirpath, _, names in os.walk(root):
        for name in names:
            full = os.path.join(dirpath, name)
            with open(full, "rb") as f:
                out[os.path.relpath(full, root).replace(os.sep, "/")] = f.read()
    return out


def test_to_directory_brings_every_file_and_no_bookkeeping(committed, tmp_path):
    checkpoint, files = committed
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "shard_0.bin").write_bytes(b"stale")  # replaced
    assert tree(checkpoint.to_directory(str(tmp_path / "out"))) == files
    with checkpoint.as_directory() as local:
        assert {k: v for k, v in tree(local).items() if k != MANIFEST_NAME} == files
    if checkpoint.is_local:
        assert local == checkpoint.path  # no copy of a local checkpoint
    else:
        assert not os.path.exists(local)  # a download is removed on exit


def test_a_corrupted_file_is_named_and_never_takes_its_name(committed, backend, tmp_path):
    checkpoint, _ = committed
    storage, _ = backend.storage()
    storage.delete_file(f"{checkpoint.path}/shard_3.bin")
    storage.write_atomic(f"{checkpoint.path}/shard_3.bin", os.urandom(100_003))  # same size, other bytes
    with pytest.raises(ChecksumMismatchError, match="shard_3.bin does not match the checkpoint's manifest"):
        checkpoint.to_directory(str(tmp_path / "out"))
    assert not (tmp_path / "out" / "shard_3.bin").exists()
    assert not [p for p in os.listdir(tmp_path / "out") if p.endswith(".trainkeep_tmp")]


def test_a_missing_file_is_named(committed, backend, tmp_path):
    checkpoint, _ = committed
    backend.storage()[0].delete_file(f"{checkpoint.path}/nested/dir/cfg.json")
    with pytest.raises(ChecksumMismatchError, match="nested/dir/cfg.json is listed in the checkpoint's manifest"):
        checkpoint.to_directory(str(tmp_path / "out"))


def test_metadata_may_change_after_the_commit(committed, backend, tmp_path):
    checkpoint, files = committed
    checkpoint.set_metadata({"epoch": 3})
    assert tree(checkpoint.to_directory(str(tmp_path / "out"))) == files | {".metadata.json": b'{"epoch": 3}'}


def test_a_directory_without_manifest_downloads_unverified(backend, make_files, tmp_path):
    storage, root = backend.storage()
    storage.makedirs(f"{root}/plain")
    storage.put_tree(make_files({"a.bin": b"a"}), f"{root}/plain", ["a.bin"])
    assert not storage.exists(f"{root}/plain/{MANIFEST_NAME}")
    checkpoint = tk.Checkpoint(backend.url("plain"), None if backend.name != "s3" else backend.fs)
    assert tree(checkpoint.to_directory(str(tmp_path / "out"))) == {"a.bin": b"a"}
