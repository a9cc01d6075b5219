"""Port of ray-project/ray python/ray/air/tests/test_configs.py and test_checkpoint_config.py (Ray 2.60), imports
swapped to trainkeep.

The configs' ``repr`` round-trips through ``eval`` and stays under Ray's ``MAX_REPR_LENGTH`` (120 characters),
also with a filesystem in it; and a run keeping 2 checkpoints by minimum loss drops a NaN and the worst one.
``FailureConfig(fail_fast=...)`` (a DeprecationWarning in Ray 2.60) is pinned in test_doc_differences.py.
Upstream's ``ScalingConfig(use_acc=True)`` is the accelerator flag of its era: ``use_gpu=True`` here.
"""

from __future__ import annotations

import json
import os
import tempfile

import pytest

import trainkeep as train
from trainkeep import CheckpointConfig, DataParallelTrainer, FailureConfig, RunConfig, ScalingConfig

MAX_REPR_LENGTH = 120  # ray.air.constants.MAX_REPR_LENGTH


@pytest.mark.parametrize("config", [
    ScalingConfig(),
    ScalingConfig(use_gpu=True),
    FailureConfig(),
    FailureConfig(max_failures=2),
    CheckpointConfig(),
    CheckpointConfig(num_to_keep=1),
    RunConfig(),
    RunConfig(name="experiment"),
    RunConfig(failure_config=FailureConfig()),
], ids=repr)
def test_repr(config):
    representation = repr(config)
    assert eval(representation) == config
    assert len(representation) < MAX_REPR_LENGTH


def test_storage_filesystem_repr():
    pyarrow_fs = pytest.importorskip("pyarrow.fs")
    config = RunConfig(storage_filesystem=pyarrow_fs.S3FileSystem(region="us-east-1"))
    assert len(repr(config)) < MAX_REPR_LENGTH


def report_losses(config):
    for idx, loss in enumerate([float("nan"), 3, 7, 5]):  # nan: deleted; 3: best; 7: worst, deleted; 5
        with tempfile.TemporaryDirectory() as d:
            with open(os.path.join(d, "state.json"), "w") as f:
                json.dump({"idx": idx}, f)
            train.report({"loss": loss}, checkpoint=train.Checkpoint.from_directory(d))


def idx(checkpoint: train.Checkpoint) -> int:
    with checkpoint.as_directory() as d:
        return json.load(open(os.path.join(d, "state.json")))["idx"]


def test_checkpoint_config(tmp_path):
    """test_checkpoint_config.py: keep 2 by min loss. Ray 2.60 (V2) lists best_checkpoints worst first; the
    V1-era upstream test listed them best first."""
    checkpoint_config = CheckpointConfig(num_to_keep=2, checkpoint_score_attribute="loss",
                                         checkpoint_score_order="min")
    results = DataParallelTrainer(report_losses, scaling_config=ScalingConfig(num_workers=2),
                                  run_config=RunConfig(storage_path=str(tmp_path),
                                                       checkpoint_config=checkpoint_config)).fit()
    assert idx(results.checkpoint) == 3
    assert [(idx(c), m["loss"]) for c, m in results.best_checkpoints] == [(3, 5), (1, 3)]
    kept = sorted(n for n in os.listdir(results.path) if n.startswith("checkpoint_"))
    assert kept == ["checkpoint_000001", "checkpoint_000003"]
