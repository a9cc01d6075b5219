"""Port of ray-project/ray python/ray/train/tests/test_checkpoint.py (Ray 2.60), imports swapped to trainkeep, and
of what python/ray/air/tests/test_checkpoints.py still means in Ray 2.60 (its APIs are gone).

A Checkpoint on three filesystems (a local directory, an in-memory "mock" filesystem, a custom filesystem: Ray's
``_create_mock_custom_fs`` is a pyarrow wrapper around an fsspec DirFileSystem), then ``to_directory`` with and
without a path, ``as_directory`` (the local path itself, or a temporary download removed afterwards) and the
metadata calls. Ray's ``mock://`` (pyarrow's MockFileSystem) is fsspec's ``memory://`` here.
"""

from __future__ import annotations

import os
import pickle
import uuid
from pathlib import Path

import fsspec
import pytest
from fsspec.implementations.dirfs import DirFileSystem

from trainkeep import Checkpoint

CONTENT_FILE = "dummy.txt"
TMP_PREFIX = "checkpoint_tmp_"  # Ray's _CHECKPOINT_DIR_PREFIX


def upload(local: Path, fs: fsspec.AbstractFileSystem, path: str) -> None:
    fs.makedirs(path, exist_ok=True)
    fs.put_file(str(local / CONTENT_FILE), f"{path}/{CONTENT_FILE}")


@pytest.fixture(params=["local", "mock", "custom_fs"])
def checkpoint(request, tmp_path):
    local = tmp_path / "ckpt_dir"
    local.mkdir()
    (local / CONTENT_FILE).write_text("dummy")
    if request.param == "local":
        return Checkpoint.from_directory(str(local))
    if request.param == "mock":
        bucket = f"/mock_bucket_{uuid.uuid4().hex[:8]}/ckpt_dir"  # memory:// is shared by the process
        ckpt = Checkpoint(path=f"memory://{bucket}")
        upload(local, ckpt.filesystem, ckpt.path)
        return ckpt
    pyarrow_fs = pytest.importorskip("pyarrow.fs")
    (tmp_path / "custom_fs").mkdir()
    inner = DirFileSystem(str(tmp_path / "custom_fs"), fsspec.filesystem("file"))
    upload(local, inner, "mock_bucket/ckpt_dir")
    custom = pyarrow_fs.PyFileSystem(pyarrow_fs.FSSpecHandler(inner))
    return Checkpoint(path="mock_bucket/ckpt_dir", filesystem=custom)


def is_local(checkpoint: Checkpoint) -> bool:
    from fsspec.implementations.local import LocalFileSystem

    return isinstance(checkpoint.filesystem, LocalFileSystem)


def test_to_directory(checkpoint):
    """test_to_directory: a temporary directory named with Ray's prefix, holding the files."""
    checkpoint_path = Path(checkpoint.to_directory())
    assert (checkpoint_path / CONTENT_FILE).read_text() == "dummy"
    assert TMP_PREFIX in checkpoint_path.name


def test_to_directory_with_user_specified_path(checkpoint, tmp_path):
    """test_to_directory_with_user_specified_path: a str and a PathLike destination."""
    checkpoint_path = Path(checkpoint.to_directory(str(tmp_path / "special_dir")))
    assert (checkpoint_path / CONTENT_FILE).exists()
    assert checkpoint_path.name == "special_dir"
    checkpoint_path = Path(checkpoint.to_directory(tmp_path / "special_dir2"))
    assert (checkpoint_path / CONTENT_FILE).exists()
    assert checkpoint_path.name == "special_dir2"


def test_as_directory(checkpoint):
    """test_as_directory: a local checkpoint is given as is and kept; a remote one is downloaded and removed."""
    with checkpoint.as_directory() as checkpoint_path:
        checkpoint_path = Path(checkpoint_path)
        assert (checkpoint_path / CONTENT_FILE).exists()
        if is_local(checkpoint):
            assert str(checkpoint_path) == checkpoint.path
        else:
            assert TMP_PREFIX in checkpoint_path.name
    if is_local(checkpoint):
        assert (checkpoint_path / CONTENT_FILE).exists()
    else:
        assert not checkpoint_path.exists()


def test_metadata(checkpoint):
    """test_metadata (later Ray versions): empty by default; set replaces, update merges; it travels with the
    checkpoint in a hidden .metadata.json."""
    assert checkpoint.get_metadata() == {}
    checkpoint.set_metadata({"foo": "bar"})
    assert checkpoint.get_metadata() == {"foo": "bar"}
    checkpoint.update_metadata({"foo": "baz", "x": 1})
    assert checkpoint.get_metadata() == {"foo": "baz", "x": 1}
    checkpoint.set_metadata({"only": True})
    assert checkpoint.get_metadata() == {"only": True}
    assert checkpoint.filesystem.exists(f"{checkpoint.path}/.metadata.json")


def test_a_checkpoint_pickles_and_is_not_a_path(tmp_path):
    """Ray's Checkpoint pickles (path and filesystem) and refuses os.fspath with a TypeError."""
    checkpoint = Checkpoint.from_directory(str(tmp_path))
    again = pickle.loads(pickle.dumps(checkpoint))
    assert again.path == checkpoint.path
    with pytest.raises(TypeError):
        os.fspath(checkpoint)


@pytest.mark.parametrize("name", ["from_dict", "to_dict", "from_bytes", "to_bytes", "from_uri", "to_uri", "uri",
                                  "get_preprocessor", "set_preprocessor"])
def test_removed_air_checkpoint_apis_raise_attribute_error(name, tmp_path):
    """python/ray/air/tests/test_checkpoints.py tested the AIR Checkpoint's dict, bytes and URI forms; Ray 2.60
    removed them (an AttributeError with a migration hint). They are absent here too."""
    checkpoint = Checkpoint.from_directory(str(tmp_path))
    with pytest.raises(AttributeError):
        getattr(checkpoint, name)
    with pytest.raises(AttributeError):
        getattr(Checkpoint, name)
