"""Checkpoint: a directory on a filesystem, with Ray Train's API, on the local disk and on fsspec's memory fs."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

import fsspec
import pytest

import trainkeep as tk
from trainkeep._internal.core.layout import MANIFEST_NAME, METADATA_NAME
from trainkeep._internal.engine.verify import verify_checkpoint
from trainkeep._internal.storage import LocalStorage

FILES = {"model.pt": b"m" * 5000, "optim/state.pt": b"o" * 300, "optim/deep/rng.bin": b"r"}



@pytest.fixture
def committed(run_dir: str, make_source: Callable[..., tk.Checkpoint]) -> tk.Checkpoint:
    """A checkpoint committed by a CheckpointManager (so its directory holds our manifest too)."""
    with tk.CheckpointManager(run_dir) as manager:
        checkpoint = manager.report({"epoch": 0}, make_source(FILES))
    assert checkpoint is not None and Path(checkpoint.path, MANIFEST_NAME).is_file()
    return checkpoint


@pytest.fixture
def memory_checkpoint() -> tk.Checkpoint:
    fs = fsspec.filesystem("memory")
    root = f"/ckpt-{uuid.uuid4().hex}"
    for rel, data in FILES.items():
        fs.pipe_file(f"{root}/{rel}", data)
    yield tk.Checkpoint(root, fs)
    fs.rm(root, recursive=True)


def test_from_directory_makes_an_absolute_local_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    Path("rel").mkdir()
    checkpoint = tk.Checkpoint.from_directory("rel")
    assert checkpoint.path == str(tmp_path / "rel") and checkpoint.is_local
    assert tk.Checkpoint.from_directory(tmp_path / "rel") == checkpoint


def test_to_directory_copies_user_files_not_our_manifest(committed: tk.Checkpoint, tmp_path: Path,
                                                         read_tree: Callable[[str], dict[str, bytes]]) -> None:
    fresh = committed.to_directory()
    try:
        assert read_tree(fresh) == FILES
        assert fresh != committed.path
    finally:
        shutil.rmtree(fresh)
    target = tmp_path / "restore" / "here"
    assert committed.to_directory(target) == str(target)
    assert read_tree(str(target)) == FILES


def test_as_directory_yields_the_local_path_itself(committed: tk.Checkpoint) -> None:
    with committed.as_directory() as d:
        assert d == committed.path
    assert Path(committed.path, "model.pt").exists()  # nothing was cleaned up


def test_remote_checkpoint_downloads_to_a_temp_dir_removed_on_exit(memory_checkpoint: tk.Checkpoint,
                                                                   read_tree: Callable[[str], dict[str, bytes]]) -> None:
    assert not memory_checkpoint.is_local
    with memory_checkpoint.as_directory() as d:
        assert os.path.isdir(d) and read_tree(d) == FILES
    assert not os.path.exists(d)


def test_metadata_get_set_update(committed: tk.Checkpoint, run_dir: str) -> None:
    assert committed.get_metadata() == {}
    committed.set_metadata({"epoch": 3, "tags": ["a"]})
    committed.update_metadata({"epoch": 4, "lr": 0.1})
    assert committed.get_metadata() == {"epoch": 4, "tags": ["a"], "lr": 0.1}
    assert tk.Checkpoint(committed.path).get_metadata() == {"epoch": 4, "tags": ["a"], "lr": 0.1}
    assert sorted(os.listdir(committed.path)) == sorted([MANIFEST_NAME, METADATA_NAME, "model.pt", "optim"])
    # Metadata may change after the commit without breaking verification.
    assert verify_checkpoint(LocalStorage(), run_dir, Path(committed.path).name) == []


@pytest.mark.parametrize("bad", [{"x": object()}, {"x": {1, 2}}, {"x": b"bytes"}])
def test_a_failed_encode_never_destroys_existing_metadata(committed: tk.Checkpoint, bad: dict) -> None:
    committed.set_metadata({"keep": 1})
    for call in (committed.set_metadata, committed.update_metadata):
        with pytest.raises(TypeError, match="JSON-serialisable"):
            call(bad)
    assert committed.get_metadata() == {"keep": 1}
    with pytest.raises(TypeError, match="must be a dict"):
        committed.set_metadata([("a", 1)])  # type: ignore[arg-type]
    assert committed.get_metadata() == {"keep": 1}


def test_a_failed_metadata_write_leaves_the_old_metadata_and_no_stray_file(
        committed: tk.Checkpoint, run_dir: str, monkeypatch: pytest.MonkeyPatch) -> None:
    committed.set_metadata({"keep": 1})

    def failing_replace(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="No space"):
        committed.set_metadata({"keep": 2})
    monkeypatch.undo()
    assert committed.get_metadata() == {"keep": 1}
    assert sorted(os.listdir(committed.path)) == sorted([MANIFEST_NAME, METADATA_NAME, "model.pt", "optim"])
    assert verify_checkpoint(LocalStorage(), run_dir, Path(committed.path).name) == []


def test_metadata_on_a_remote_checkpoint(memory_checkpoint: tk.Checkpoint) -> None:
    memory_checkpoint.update_metadata({"step": 7})
    assert memory_checkpoint.get_metadata() == {"step": 7}
    assert json.loads(memory_checkpoint.filesystem.cat_file(f"{memory_checkpoint.path}/{METADATA_NAME}")) == {"step": 7}


def test_value_equality_and_hashing(tmp_path: Path, memory_checkpoint: tk.Checkpoint) -> None:
    a = tk.Checkpoint(str(tmp_path / "c"))
    b = tk.Checkpoint.from_directory(tmp_path / "c")
    c = tk.Checkpoint(str(tmp_path / "c") + "/")
    assert a == b == c and hash(a) == hash(b) == hash(c)
    assert len({a, b, c}) == 1
    assert a != tk.Checkpoint(str(tmp_path / "d"))
    assert a != str(tmp_path / "c")
    same_remote = tk.Checkpoint(memory_checkpoint.path, memory_checkpoint.filesystem)
    assert same_remote == memory_checkpoint and hash(same_remote) == hash(memory_checkpoint)
    assert tk.Checkpoint(memory_checkpoint.path) != tk.Checkpoint(memory_checkpoint.path, memory_checkpoint.filesystem)


def test_pickling_keeps_path_filesystem_and_equality(committed: tk.Checkpoint,
                                                     memory_checkpoint: tk.Checkpoint) -> None:
    for checkpoint in (committed, memory_checkpoint):
        clone = pickle.loads(pickle.dumps(checkpoint))
        assert clone == checkpoint and clone.path == checkpoint.path
        assert clone.get_metadata() == checkpoint.get_metadata()


def test_repr_and_fspath(tmp_path: Path, memory_checkpoint: tk.Checkpoint) -> None:
    local = tk.Checkpoint.from_directory(tmp_path)
    assert repr(local) == f"Checkpoint(filesystem=local, path={tmp_path})"
    assert repr(memory_checkpoint) == f"Checkpoint(filesystem=memory, path={memory_checkpoint.path})"
    with pytest.raises(TypeError, match="not a path"):
        os.fspath(local)
    with pytest.raises(TypeError):
        open(local)  # type: ignore[call-overload]


def test_missing_directory_is_a_file_not_found_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        tk.Checkpoint.from_directory(tmp_path / "nope").to_directory()


@pytest.mark.parametrize("store", ["local", "memory"])
def test_to_directory_restores_a_name_of_255_bytes(run_dir: str, make_source: Callable[..., tk.Checkpoint],
                                                   tmp_path: Path, store: str,
                                                   read_tree: Callable[[str], dict[str, bytes]]) -> None:
    """A name at NAME_MAX commits, so it must restore: the download's temp name is not the name plus a suffix
    (issue 14.1: before the fix to_directory failed with ENAMETOOLONG after the commit)."""
    files = {"n" * 255: b"long", "sub/" + "é" * 127: b"long utf-8"}
    fs = fsspec.filesystem("memory")
    url = run_dir if store == "local" else f"memory://long-{uuid.uuid4().hex}/run"
    with tk.CheckpointManager(url, storage_filesystem=None if store == "local" else fs) as manager:
        committed = manager.report({"epoch": 0}, make_source(files))
    assert committed is not None
    assert read_tree(committed.to_directory(str(tmp_path / "out"))) == files
    assert read_tree(committed.to_directory(str(tmp_path / "out"))) == files  # again, replacing the files
    with committed.as_directory() as local:
        assert {k: v for k, v in read_tree(local).items() if k != MANIFEST_NAME} == files
    assert not [n for n in os.listdir(tmp_path / "out") if n.endswith(".trainkeep_tmp")]
