"""Port of ray-project/ray python/ray/train/v2/tests/test_async_checkpointing.py (Ray 2.60), imports swapped.

Ray makes the upload fail by patching its storage context inside the worker; here the upload is the user's own
``checkpoint_upload_fn``, which raises, in ASYNC mode. Ray's older keyword ``checkpoint_upload_function`` is
spelled ``checkpoint_upload_fn`` in 2.60, as here. ``ray.cloudpickle`` files are plain pickle files here.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import tempfile
from pathlib import Path

import pytest

import trainkeep as train
from trainkeep import (
    Checkpoint,
    CheckpointUploadMode,
    DataParallelTrainer,
    RunConfig,
    ScalingConfig,
    WorkerGroupError,
)


def get_checkpoint_iteration(checkpoint):
    return int(checkpoint.path.split("_")[-1]) if checkpoint else -1


def mixed_modes_train_fn(config):
    """Every pair of (ASYNC, SYNC, NO_UPLOAD, no checkpoint) across two ranks, one pair per iteration."""
    rank = train.get_context().get_world_rank()
    if rank == 0:
        modes = {**dict.fromkeys([0, 1, 2, 3], "ASYNC"), **dict.fromkeys([4, 5, 6], "SYNC"),
                 **dict.fromkeys([7, 8], "NO_UPLOAD"), 9: None}
    else:
        modes = {0: "ASYNC", **dict.fromkeys([1, 4], "SYNC"), **dict.fromkeys([2, 5, 7], "NO_UPLOAD"),
                 **dict.fromkeys([3, 6, 8, 9], None)}
    prev = -1
    for i in range(10):
        metrics = {"metric": f"iteration_{i}_shard_{rank}"}
        if modes[i] is None:
            train.report(metrics=metrics, checkpoint=None)
            assert prev <= get_checkpoint_iteration(train.get_checkpoint())
            continue
        mode = CheckpointUploadMode[modes[i]]
        name = f"checkpoint_iteration_{i}"
        if mode == CheckpointUploadMode.NO_UPLOAD:
            checkpoint_dir = train.get_context().get_storage().build_checkpoint_path_from_name(name)
        else:  # ASYNC sources must outlive report(): not a TemporaryDirectory
            checkpoint_dir = os.path.join(config["tmp"], name, f"_{rank}")
        os.makedirs(checkpoint_dir, exist_ok=True)
        with open(os.path.join(checkpoint_dir, f"shard_{rank}"), "wb") as f:
            pickle.dump(f"iteration_{i}_shard_{rank}", f)
        checkpoint = Checkpoint(checkpoint_dir)
        train.report(metrics=metrics, checkpoint=checkpoint, checkpoint_upload_mode=mode, checkpoint_dir_name=name)
        latest = train.get_checkpoint()
        if mode == CheckpointUploadMode.NO_UPLOAD:
            assert latest == checkpoint
        elif mode == CheckpointUploadMode.SYNC:
            assert name in latest.path
        else:
            assert prev <= get_checkpoint_iteration(latest)
        prev = get_checkpoint_iteration(latest)


def test_report_mixed_checkpoint_upload_modes(tmp_path):
    """Covers test_report_mixed_checkpoint_upload_modes: 9 checkpoints in report order, rank 0's metrics."""
    (tmp_path / "src").mkdir()
    result = DataParallelTrainer(mixed_modes_train_fn, train_loop_config={"tmp": str(tmp_path / "src")},
                                 scaling_config=ScalingConfig(num_workers=2),
                                 run_config=RunConfig(storage_path=str(tmp_path / "storage"))).fit()
    assert len(result.best_checkpoints) == 9  # the (None, None) pair makes no checkpoint
    for i, (checkpoint, metrics) in enumerate(result.best_checkpoints):
        assert checkpoint.path.endswith(f"checkpoint_iteration_{i}")
        assert metrics["metric"] == f"iteration_{i}_shard_0"


@pytest.mark.parametrize("delete_local_checkpoint_after_upload,checkpoint_upload_mode", [
    (True, CheckpointUploadMode.ASYNC), (False, CheckpointUploadMode.ASYNC),
    (True, CheckpointUploadMode.SYNC), (False, CheckpointUploadMode.SYNC),
    (True, CheckpointUploadMode.NO_UPLOAD), (False, CheckpointUploadMode.NO_UPLOAD),
])
def test_report_delete_local_checkpoint_after_upload(tmp_path, delete_local_checkpoint_after_upload,
                                                     checkpoint_upload_mode):
    """Covers test_report_delete_local_checkpoint_after_upload."""
    local_dir = tmp_path / "my_checkpoint_dir"

    def train_fn():
        if train.get_context().get_world_rank() == 0:
            if checkpoint_upload_mode == CheckpointUploadMode.NO_UPLOAD:
                checkpoint_dir = train.get_context().get_storage().build_checkpoint_path_from_name(
                    "my_checkpoint_dir")
            else:
                checkpoint_dir = str(local_dir)
            os.makedirs(checkpoint_dir, exist_ok=True)
            Path(checkpoint_dir, "shard_0").write_bytes(pickle.dumps("some_checkpoint_contents"))
            train.report({}, Checkpoint(checkpoint_dir), checkpoint_upload_mode=checkpoint_upload_mode,
                         delete_local_checkpoint_after_upload=delete_local_checkpoint_after_upload)
        else:
            train.report({}, None)

    DataParallelTrainer(train_fn, scaling_config=ScalingConfig(num_workers=2),
                        run_config=RunConfig(storage_path=str(tmp_path / "storage"))).fit()
    gone = delete_local_checkpoint_after_upload or checkpoint_upload_mode == CheckpointUploadMode.NO_UPLOAD
    assert local_dir.exists() is not gone


def test_report_checkpoint_upload_error(tmp_path):
    """Covers test_report_checkpoint_upload_error: a failing ASYNC upload fails fit() with the worker's error."""

    def failing_upload(checkpoint, checkpoint_dir_name):
        raise ValueError("error")

    def train_fn(config):
        if train.get_context().get_world_rank() == 0:
            local = os.path.join(config["tmp"], "local_checkpoint_dir")
            os.makedirs(local, exist_ok=True)
            Path(local, "weights").write_bytes(b"w")
            train.report({}, Checkpoint.from_directory(local), checkpoint_upload_mode=CheckpointUploadMode.ASYNC,
                         checkpoint_upload_fn=failing_upload)
        else:
            train.report({}, None, checkpoint_upload_mode=CheckpointUploadMode.ASYNC)

    trainer = DataParallelTrainer(train_fn, train_loop_config={"tmp": str(tmp_path)},
                                  scaling_config=ScalingConfig(num_workers=2),
                                  run_config=RunConfig(storage_path=str(tmp_path / "storage")))
    with pytest.raises(WorkerGroupError) as exc_info:
        trainer.fit()
    assert isinstance(exc_info.value.worker_failures[0], ValueError)
    (run_dir,) = (tmp_path / "storage").iterdir()
    assert not [p.name for p in run_dir.iterdir() if p.name.startswith("checkpoint_")]  # the round was swept


def test_report_checkpoint_upload_function(tmp_path):
    """Covers test_report_checkpoint_upload_function: the user's upload function's copy is the checkpoint."""

    def checkpoint_upload_fn(checkpoint, checkpoint_dir_name):
        full_path = train.get_context().get_storage().build_checkpoint_path_from_name(checkpoint_dir_name)
        shutil.copytree(checkpoint.path, full_path)
        return Checkpoint.from_directory(full_path)

    def train_fn():
        if train.get_context().get_world_rank() == 0:
            with tempfile.TemporaryDirectory() as d:
                Path(d, "data.json").write_text(json.dumps({"checkpoint_key": "checkpoint_value"}))
                train.report(metrics={}, checkpoint=Checkpoint.from_directory(d),
                             checkpoint_dir_name="my_checkpoint_dir_name", checkpoint_upload_fn=checkpoint_upload_fn)
        else:
            train.report(metrics={}, checkpoint=None)

    result = DataParallelTrainer(train_fn, scaling_config=ScalingConfig(num_workers=2),
                                 run_config=RunConfig(storage_path=str(tmp_path))).fit()
    with result.checkpoint.as_directory() as d:
        assert json.loads(Path(d, "data.json").read_text()) == {"checkpoint_key": "checkpoint_value"}
