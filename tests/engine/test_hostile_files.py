"""Entries of a reported directory that are not plain files, and directories that hold the run (issue 14, 3-4).

Rule: symlinks to regular files and to directories are followed (the target's bytes are stored under the link's
name); loops, dangling links and anything that is not a regular file or a directory after resolving (FIFO,
device, socket) are refused at ``report()`` with ``UnsupportedCheckpointFileError`` naming the path, and nothing
is written. A directory that contains the run (the run dir, the storage path, an ancestor) is refused the same way.
Before the fix: a FIFO hung ``report()``, a device was stored as an empty file, a symlink to a directory was left
out while ``verify`` said ok, and reporting the storage path copied the run into itself.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import fsspec
import pytest

import trainkeep as tk
from trainkeep._internal.core.layout import MANIFEST_NAME
from trainkeep._internal.engine.verify import verify_checkpoint
from trainkeep._internal.storage import FsspecStorage, LocalStorage, Storage, list_source_files
from trainkeep.errors import UnsupportedCheckpointFileError

Snapshot = Callable[[str], dict]


def _tree(root: str) -> dict[str, bytes]:
    out = {}
    for dirpath, _, names in os.walk(root):
        for name in names:
            full = os.path.join(dirpath, name)
            assert not os.path.islink(full), f"{full} was restored as a symlink"
            out[os.path.relpath(full, root).replace(os.sep, "/")] = Path(full).read_bytes()
    return out


@pytest.fixture
def source(tmp_path: Path) -> Path:
    root = tmp_path / "source"
    (root / "sub").mkdir(parents=True)
    (root / "model.bin").write_bytes(b"weights")
    (root / "sub" / "state.bin").write_bytes(b"state")
    return root


@pytest.fixture
def manager(run_dir: str) -> Iterator[tk.CheckpointManager]:
    with tk.CheckpointManager(run_dir) as manager:
        yield manager


def _refused(manager: tk.CheckpointManager, src: Path, snapshot: Snapshot, *fragments: str) -> None:
    """Report ``src``: it must be refused naming the path and reason, and nothing under the run may change."""
    before = snapshot(manager.path)
    with pytest.raises(UnsupportedCheckpointFileError) as info:
        manager.report({"epoch": 0}, tk.Checkpoint.from_directory(src))
    assert isinstance(info.value, ValueError)
    for fragment in fragments:
        assert fragment in str(info.value)
    assert snapshot(manager.path) == before
    assert manager.next_round == 0 and manager.resume_checkpoint() is None


def test_a_fifo_is_refused_instead_of_hanging_report(manager: tk.CheckpointManager, source: Path,
                                                     snapshot: Snapshot) -> None:
    fifo = source / "sub" / "pipe"
    os.mkfifo(fifo)
    outcome: list[BaseException | None] = []

    def attempt() -> None:
        try:
            _refused(manager, source, snapshot, str(fifo), "FIFO")
            outcome.append(None)
        except BaseException as exc:  # handed to the test's thread
            outcome.append(exc)

    worker = threading.Thread(target=attempt, daemon=True)
    worker.start()
    worker.join(20)
    if worker.is_alive():  # the old code blocks in open(): give it a writer so the thread can end
        with open(os.open(fifo, os.O_WRONLY), "wb"):
            pass
        pytest.fail("report() hung on a FIFO")
    assert outcome == [None], outcome


@pytest.mark.parametrize("device", ["/dev/null", "/dev/zero"])
def test_a_device_is_refused(manager: tk.CheckpointManager, source: Path, snapshot: Snapshot, device: str) -> None:
    (source / "dev").symlink_to(device)  # a symlink is followed: what counts is what it points to
    _refused(manager, source, snapshot, str(source / "dev"), "character device")


def test_a_socket_is_refused(manager: tk.CheckpointManager, tmp_path: Path, snapshot: Snapshot) -> None:
    src = tmp_path / "s"  # short: an AF_UNIX path must fit in 108 bytes
    src.mkdir()
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(src / "sock"))
        _refused(manager, src, snapshot, str(src / "sock"), "socket")


@pytest.mark.parametrize("target", ["..", ".", "../..", "loop"], ids=["parent", "self", "grandparent", "itself"])
def test_a_symlink_loop_is_refused(manager: tk.CheckpointManager, source: Path, snapshot: Snapshot,
                                   target: str) -> None:
    (source / "sub" / "loop").symlink_to(target)
    _refused(manager, source, snapshot, str(source / "sub" / "loop"), "loop")


def test_a_dangling_symlink_is_refused(manager: tk.CheckpointManager, source: Path, snapshot: Snapshot) -> None:
    (source / "gone").symlink_to(source / "never-written")
    _refused(manager, source, snapshot, str(source / "gone"), "dangling")


def test_symlinks_to_files_and_directories_are_followed(manager: tk.CheckpointManager, source: Path,
                                                        tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    (outside / "deeper").mkdir(parents=True)
    (outside / "a.bin").write_bytes(b"a" * 1000)
    (outside / "deeper" / "b.bin").write_bytes(b"b")
    (source / "linked_dir").symlink_to(outside)
    (source / "linked_file").symlink_to(outside / "a.bin")
    (source / "sub" / "relative").symlink_to("../model.bin")
    committed = manager.report({"epoch": 0}, tk.Checkpoint.from_directory(source))
    assert committed is not None
    expected = {"model.bin": b"weights", "sub/state.bin": b"state", "sub/relative": b"weights",
                "linked_file": b"a" * 1000, "linked_dir/a.bin": b"a" * 1000, "linked_dir/deeper/b.bin": b"b"}
    assert {f.path for f in manager.manifest("checkpoint_000000").files} == set(expected)
    stored = _tree(committed.path)  # regular files, not links to the user's files
    assert {k: v for k, v in stored.items() if k != MANIFEST_NAME} == expected
    assert verify_checkpoint(LocalStorage(), manager.path, "checkpoint_000000") == []
    assert _tree(committed.to_directory(str(tmp_path / "restored"))) == expected
    assert manager.resume_checkpoint() == committed


def test_the_run_directory_is_refused(manager: tk.CheckpointManager, snapshot: Snapshot) -> None:
    manager.report({"epoch": 0}, None)
    src = Path(manager.path)
    before = snapshot(manager.path)
    with pytest.raises(UnsupportedCheckpointFileError, match="holds a trainkeep run"):
        manager.report({"epoch": 1}, tk.Checkpoint.from_directory(src))
    assert snapshot(manager.path) == before


@pytest.mark.parametrize("levels", [1, 2], ids=["storage-path", "its-parent"])
def test_a_directory_that_contains_the_run_is_refused(tmp_path: Path, snapshot: Snapshot, levels: int) -> None:
    storage_path = tmp_path / "results"
    with tk.CheckpointManager(str(storage_path / "run")) as manager:
        first = manager.report({"epoch": 0}, tk.Checkpoint.from_directory(_plain(tmp_path / "src")))
        assert first is not None
        src = storage_path if levels == 1 else tmp_path
        before = snapshot(str(storage_path))
        with pytest.raises(UnsupportedCheckpointFileError) as info:
            manager.report({"epoch": 1}, tk.Checkpoint.from_directory(src))
        assert str(storage_path / "run") in str(info.value) and "holds a trainkeep run" in str(info.value)
        assert snapshot(str(storage_path)) == before  # no copy of the run inside itself
        assert manager.resume_checkpoint() == first


def test_a_committed_checkpoint_can_be_reported_again(manager: tk.CheckpointManager, source: Path,
                                                      tmp_path: Path) -> None:
    first = manager.report({"epoch": 0}, tk.Checkpoint.from_directory(source))
    assert first is not None
    with tk.CheckpointManager(str(tmp_path / "other")) as other:
        again = other.report({"epoch": 1}, first)  # its manifest is ours: skipped, not refused
    assert again is not None and _tree(again.path).keys() == {MANIFEST_NAME, "model.bin", "sub/state.bin"}


def _plain(root: Path) -> Path:
    root.mkdir()
    (root / "model.bin").write_bytes(b"weights")
    return root


@pytest.mark.parametrize("store", ["local", "memory"])
def test_a_handed_over_source_never_moves_or_deletes_a_symlinks_target(source: Path, tmp_path: Path,
                                                                       store: str) -> None:
    """``put_tree(move=True)`` (a worker's source with delete_local_checkpoint_after_upload) copies linked files:
    renaming or deleting them would take the user's files outside the checkpoint directory with it."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "a.bin").write_bytes(b"a")
    (outside / "b.bin").write_bytes(b"b")
    (source / "linked_dir").symlink_to(outside)
    (source / "linked_file").symlink_to(outside / "b.bin")
    storage: Storage = LocalStorage() if store == "local" else FsspecStorage(fsspec.filesystem("memory"))
    dest = str(tmp_path / "dest") if store == "local" else f"/handover-{tmp_path.name}"
    storage.makedirs(dest)
    entries = storage.put_tree(str(source), dest, list_source_files(str(source)), move=True).entries
    assert {e.path for e in entries} == {"model.bin", "sub/state.bin", "linked_dir/a.bin", "linked_dir/b.bin",
                                        "linked_file"}
    assert _tree(str(outside)) == {"a.bin": b"a", "b.bin": b"b"}  # the user's files are where they were
    assert not (source / "model.bin").exists()  # the source's own files were handed over
    if store == "local":
        assert os.stat(Path(dest, "linked_file")).st_ino != os.stat(outside / "b.bin").st_ino
        assert os.stat(Path(dest, "linked_dir", "a.bin")).st_ino != os.stat(outside / "a.bin").st_ino


def _report_a_fifo(config: dict) -> None:
    """A training loop whose first report hands over a directory with a FIFO in it."""
    src = Path(config["src"])
    src.mkdir()
    (src / "model.bin").write_bytes(b"weights")
    os.mkfifo(src / "pipe")
    tk.report({"epoch": 0}, checkpoint=tk.Checkpoint.from_directory(src))


def test_a_trainer_worker_refuses_a_fifo_before_writing(tmp_path: Path) -> None:
    """The worker side (session's plan) goes through the same scan: the run fails typed, no checkpoint staged."""
    trainer = tk.DataParallelTrainer(_report_a_fifo, train_loop_config={"src": str(tmp_path / "src")},
                                     run_config=tk.RunConfig(name="run", storage_path=str(tmp_path / "results")))
    with pytest.raises(tk.TrainingFailedError) as info:
        trainer.fit()
    [failure] = info.value.worker_failures.values()
    assert isinstance(failure, UnsupportedCheckpointFileError) and "FIFO" in str(failure)
    assert str(tmp_path / "src" / "pipe") in str(failure)
    run = tmp_path / "results" / "run"
    assert not [p for p in run.iterdir() if p.name.startswith("checkpoint_")]
    assert not list((run / ".trainkeep").glob("intent-*"))
