"""The commit protocol on every backend: a checkpoint exists iff its manifest is valid, the manifest is written
last, debris is swept, retention deletes index-first, and a run reads back and resumes."""

from __future__ import annotations

import os
import signal

import pytest

import trainkeep as tk
from trainkeep._internal.core.layout import MANIFEST_NAME
from trainkeep.errors import StorageError


@pytest.fixture
def source(make_files):
    def make(tag: str) -> tk.Checkpoint:
        return tk.Checkpoint.from_directory(make_files({"model.bin": f"weights {tag}".encode(),
                                                        "sub/optim.bin": f"optim {tag}".encode()}))
    return make


def names(manager_or_result) -> list[str]:
    return [ckpt.path.rsplit("/", 1)[-1] for ckpt, _ in manager_or_result.checkpoints]


def result_names(result: tk.Result) -> list[str]:
    return sorted(ckpt.path.rsplit("/", 1)[-1] for ckpt, _ in result.best_checkpoints)


def record_ops(storage, log: list[tuple[str, str]]) -> None:
    """Wrap the storage's writing methods (on this instance only) to log (operation, path) in call order."""
    for op in ("write_atomic", "put_tree", "append", "delete_file", "delete_tree"):
        original = getattr(storage, op)

        def wrapper(path, *args, _op=op, _original=original, **kwargs):
            result = _original(path, *args, **kwargs)
            target = args[0] if _op == "put_tree" else path  # put_tree(src, dest, files)
            log.append((_op, target))
            return result

        setattr(storage, op, wrapper)


def test_manifest_is_written_after_every_file_and_before_history_and_index(backend, source):
    with backend.manager() as manager:
        log: list[tuple[str, str]] = []
        record_ops(manager.storage, log)
        manager.report({"loss": 1.0}, checkpoint=source("a"))
    ops = [(op, path.rsplit("/", 2)[-2] + "/" + path.rsplit("/", 1)[-1]) for op, path in log]
    put = ops.index(("put_tree", "run/checkpoint_000000"))
    manifest = ops.index(("write_atomic", f"checkpoint_000000/{MANIFEST_NAME}"))
    history = next(i for i, (op, path) in enumerate(ops) if op == "append" and path.endswith("history.jsonl"))
    index = next(i for i, (op, path) in enumerate(ops) if path.endswith("trainkeep_run.json") and i > put)
    assert put < manifest < history and manifest < index


def test_checkpoint_without_valid_manifest_does_not_exist(backend, source):
    with backend.manager(config=tk.CheckpointConfig()) as manager:
        for step in range(3):
            manager.report({"step": step}, checkpoint=source(str(step)))
    storage, root = backend.storage()
    storage.delete_file(f"{root}/run/checkpoint_000000/{MANIFEST_NAME}")
    storage.write_atomic(f"{root}/run/checkpoint_000001/{MANIFEST_NAME}", b'{"schema": "trainkeep.manifest", ')
    storage.delete_file(f"{root}/run/trainkeep_run.json")  # the index is a cache: rebuilt from the manifests
    assert result_names(backend.result()) == ["checkpoint_000002"]
    with backend.manager() as manager:
        assert names(manager) == ["checkpoint_000002"]
        assert manager.resume_checkpoint().path.endswith("checkpoint_000002")


def test_failed_manifest_write_fails_the_report_and_leaves_nothing_visible(backend, source):
    with backend.manager() as manager:
        manager.report({"step": 0}, checkpoint=source("0"))
        write_atomic = manager.storage.write_atomic

        def failing(path, data):
            if path.endswith(f"checkpoint_000001/{MANIFEST_NAME}"):
                raise StorageError("write", path, OSError(5, "injected I/O error"))
            return write_atomic(path, data)

        manager.storage.write_atomic = failing
        with pytest.raises(StorageError, match="injected"):
            manager.report({"step": 1}, checkpoint=source("1"))
        manager.storage.write_atomic = write_atomic
        assert names(manager) == ["checkpoint_000000"]
    assert result_names(backend.result()) == ["checkpoint_000000"]
    with backend.manager() as manager:  # reopening sweeps the staged directory
        storage, root = backend.storage()
        assert not storage.exists(f"{root}/run/checkpoint_000001/model.bin")
        assert names(manager) == ["checkpoint_000000"]


@pytest.mark.parametrize("point", ["after-put", "after-manifest"])
def test_sigkill_mid_report_leaves_the_checkpoint_whole_or_invisible(backend, point):
    if not backend.shared_across_processes:
        pytest.skip("memory:// lives inside one process: a killed child's store is gone with it")
    child = backend.run_child("die", "run", point)
    assert child.returncode == -signal.SIGKILL, child.stderr
    storage, root = backend.storage()
    staged_files = storage.exists(f"{root}/run/checkpoint_000001/model.bin")
    assert staged_files  # the child did get as far as writing the files
    with backend.manager() as manager:
        rounds = [row["round"] for row in manager.history]
        if point == "after-put":  # no manifest: swept, not listed, its round not in the history
            assert names(manager) == ["checkpoint_000000"] and rounds == [0]
            assert not storage.exists(f"{root}/run/checkpoint_000001")
        else:  # the manifest is the commit point: it exists, and the index and history are repaired
            assert names(manager) == ["checkpoint_000000", "checkpoint_000001"] and rounds == [0, 1]
            assert manager.next_round == 2
    assert len(backend.result().best_checkpoints) == (1 if point == "after-put" else 2)


def test_sweep_deletes_only_our_own_debris(backend, source, make_files):
    with backend.manager() as manager:
        manager.report({"step": 0}, checkpoint=source("0"))
        dest = manager.stage("checkpoint_000001").path  # a report that never commits: our debris
        manager.storage.put_tree(make_files({"model.bin": b"half"}), dest, ["model.bin"])
        manager.storage.makedirs(f"{manager.path}/notes")  # the user's own files in the run directory
        manager.storage.write_atomic(f"{manager.path}/notes/readme.txt", b"mine")
        manager.storage.write_atomic(f"{manager.path}/checkpoint_backup.txt", b"also mine")
        manager._lock.release()  # simulate the holder's death: only the lock goes away
    with backend.manager() as manager:
        storage = manager.storage
        assert not storage.exists(f"{manager.path}/checkpoint_000001")
        assert storage.read_bytes(f"{manager.path}/notes/readme.txt") == b"mine"
        assert storage.read_bytes(f"{manager.path}/checkpoint_backup.txt") == b"also mine"
        assert names(manager) == ["checkpoint_000000"]


def test_retention_drops_the_index_entry_then_the_manifest_then_the_files(backend, source):
    config = tk.CheckpointConfig(num_to_keep=1, checkpoint_score_attribute="acc", checkpoint_score_order="max")
    with backend.manager(config=config) as manager:
        manager.report({"acc": 0.9}, checkpoint=source("best"))
        manager.report({"acc": 0.1}, checkpoint=source("worst"))  # kept: it is the latest
        log: list[tuple[str, str]] = []
        record_ops(manager.storage, log)
        manager.report({"acc": 0.5}, checkpoint=source("middle"))  # the latest now: 000001 goes
        assert names(manager) == ["checkpoint_000000", "checkpoint_000002"]
    deleted = "run/checkpoint_000001"
    index_write = next(i for i, (op, p) in enumerate(log) if p.endswith("trainkeep_run.json")
                       and i > next(j for j, (o, q) in enumerate(log) if q.endswith(f"000002/{MANIFEST_NAME}")))
    manifest_delete = log.index(("delete_file", f"{backend.storage()[1]}/{deleted}/{MANIFEST_NAME}"))
    tree_delete = log.index(("delete_tree", f"{backend.storage()[1]}/{deleted}"))
    assert index_write < manifest_delete < tree_delete
    storage, root = backend.storage()
    assert storage.listdir(f"{root}/run/checkpoint_000001") == []
    result = backend.result()
    assert result_names(result) == ["checkpoint_000000"]
    assert result.checkpoint.path.endswith("checkpoint_000002")


def test_result_from_path_reads_metrics_checkpoints_and_files(backend, source, tmp_path):
    config = tk.CheckpointConfig(checkpoint_score_attribute="loss", checkpoint_score_order="min")
    with backend.manager(config=config) as manager:
        manager.report({"loss": 3.0, "nested": {"x": 1}}, checkpoint=source("a"))
        manager.report({"loss": 1.0})
        manager.report({"loss": 2.0}, checkpoint=source("b"))
    result = backend.result()
    assert result.metrics == {"loss": 2.0}
    assert [m["loss"] for _, m in result.best_checkpoints] == [3.0, 2.0]  # best last
    assert result.get_best_checkpoint("loss", "min").path.endswith("checkpoint_000002")
    local = result.checkpoint.to_directory(str(tmp_path / "out"))
    with open(os.path.join(local, "model.bin"), "rb") as f:
        assert f.read() == b"weights b"
    assert list(result.metrics_dataframe["nested/x"].fillna(0)) == [1, 0, 0]


def test_reopen_resumes_rounds_and_skips_a_corrupt_newest_checkpoint(backend, source):
    with backend.manager() as manager:
        manager.report({"step": 0}, checkpoint=source("0"))
        manager.report({"step": 1}, checkpoint=source("1"))
    storage, root = backend.storage()
    storage.delete_file(f"{root}/run/checkpoint_000001/model.bin")
    storage.write_atomic(f"{root}/run/checkpoint_000001/model.bin", b"weights 1 but flipped")
    with backend.manager() as manager:
        assert manager.next_round == 2
        resumed = manager.resume_checkpoint()
        assert resumed is not None and resumed.path.endswith("checkpoint_000000")
        assert names(manager) == ["checkpoint_000000", "checkpoint_000001"]  # skipped, never deleted
        manager.report({"step": 2}, checkpoint=source("2"))
    assert backend.result().checkpoint.path.endswith("checkpoint_000002")
