"""Every way to name a store: a local path, file://, memory://, s3:// (by URL alone), and explicit filesystems
(fsspec or pyarrow, wrapped)."""

from __future__ import annotations

import os
import uuid

import fsspec
import pytest

import trainkeep as tk
from trainkeep._internal.storage import FsspecStorage, LocalStorage, resolve
from trainkeep.errors import ConfigTypeError


def roundtrip(url: str, make_files, filesystem=None) -> tk.Result:
    source = tk.Checkpoint.from_directory(make_files({"model.bin": b"weights", "sub/o.bin": b"optim"}))
    with tk.CheckpointManager(url, storage_filesystem=filesystem) as manager:
        manager.report({"loss": 1.0}, checkpoint=source)
        manager.report({"loss": 0.5})
    result = tk.Result.from_path(url, storage_filesystem=filesystem)
    assert [row["round"] for row in result.history] == [0, 1]
    with result.checkpoint.as_directory() as local:
        with open(os.path.join(local, "sub", "o.bin"), "rb") as f:
            assert f.read() == b"optim"
    return result


def test_local_path_and_file_url_are_the_local_disk(tmp_path, make_files):
    assert isinstance(resolve(str(tmp_path))[0], LocalStorage)
    assert isinstance(resolve(f"file://{tmp_path}")[0], LocalStorage)
    roundtrip(f"file://{tmp_path}/run", make_files)
    assert (tmp_path / "run" / "checkpoint_000000" / "model.bin").read_bytes() == b"weights"


def test_memory_url(make_files):
    root = f"memory://tk-{uuid.uuid4().hex[:12]}"
    try:
        assert isinstance(resolve(root)[0], FsspecStorage)
        roundtrip(f"{root}/run", make_files)
    finally:
        fsspec.filesystem("memory").rm(root, recursive=True)


def test_s3_url_alone_with_fsspec_defaults(moto_endpoint, s3_clients, monkeypatch, make_files):
    """A bare s3:// URL works; the endpoint and keys come from fsspec's per-protocol config."""
    bucket = f"tk-{uuid.uuid4().hex[:12]}"
    s3_clients[0].call_s3("create_bucket", Bucket=bucket)
    monkeypatch.setitem(fsspec.config.conf, "s3", {
        "endpoint_url": moto_endpoint, "key": "testing", "secret": "testing",
        "client_kwargs": {"region_name": "us-east-1"}, "skip_instance_cache": True})
    result = roundtrip(f"s3://{bucket}/run", make_files)
    assert result.checkpoint.path == f"{bucket}/run/checkpoint_000000"
    assert sorted(s3_clients[1].ls(f"{bucket}/run/checkpoint_000000", detail=False)) == [
        f"{bucket}/run/checkpoint_000000/.trainkeep_manifest.json", f"{bucket}/run/checkpoint_000000/model.bin",
        f"{bucket}/run/checkpoint_000000/sub"]


def test_pyarrow_local_filesystem_is_the_local_disk(tmp_path, make_files):
    pafs = pytest.importorskip("pyarrow.fs")
    storage, path = resolve(str(tmp_path / "run"), pafs.LocalFileSystem())
    assert isinstance(storage, LocalStorage) and path == str(tmp_path / "run")
    roundtrip(str(tmp_path / "run"), make_files, pafs.LocalFileSystem())


def test_other_pyarrow_filesystems_are_wrapped(tmp_path, make_files):
    pafs = pytest.importorskip("pyarrow.fs")
    (tmp_path / "base").mkdir()
    subtree = pafs.SubTreeFileSystem(str(tmp_path / "base"), pafs.LocalFileSystem())
    storage, _ = resolve("runs/run", subtree)
    assert isinstance(storage, FsspecStorage)
    roundtrip("runs/run", make_files, subtree)
    assert (tmp_path / "base" / "runs" / "run" / "checkpoint_000000" / "sub" / "o.bin").read_bytes() == b"optim"


def test_an_unknown_filesystem_is_refused_naming_its_type(tmp_path):
    with pytest.raises(ConfigTypeError, match="storage_filesystem must be an fsspec filesystem or a "
                                              "pyarrow.fs.FileSystem, got dict"):
        tk.CheckpointManager(str(tmp_path / "run"), storage_filesystem={"endpoint": "x"})
    assert not (tmp_path / "run").exists()
