"""Port of ray-project/ray python/ray/train/tests/test_result.py and python/ray/air/tests/test_result.py
(Ray 2.60), ``test_result_restore`` in trainer mode, imports swapped to trainkeep.

Two workers report 5 iterations, each a metrics-only round and a round where rank 0 checkpoints; keep 3 by
``metric_a`` (max); the loop then raises. ``Result.from_path`` on the run restores the checkpoints and
``get_best_checkpoint`` finds the right ones by either metric. The "tuner" mode tests Ray Tune and is not ported;
upstream's TorchTrainer is a DataParallelTrainer here (the loop uses no torch), and its dict checkpoints are a
JSON file. Where Ray 2.60 (Train V2) differs from the upstream test, which predates it, the test follows V2:
``Result.from_path`` restores no error, and no ``config`` is merged into the metrics.
"""

from __future__ import annotations

import json
import os
import tempfile

import pytest

import trainkeep as train
from trainkeep import CheckpointConfig, DataParallelTrainer, Result, RunConfig, ScalingConfig

NUM_ITERATIONS = 5
NUM_CHECKPOINTS = 3


def worker_loop(_config):
    for i in range(NUM_ITERATIONS):
        train.report({"metric_a": -100, "metric_b": -100})  # a metrics-only round in between
        if train.get_context().get_world_rank() == 0:
            with tempfile.TemporaryDirectory() as d:
                with open(os.path.join(d, "state.json"), "w") as f:
                    json.dump({"iter": i}, f)
                train.report(metrics={"metric_a": i, "metric_b": -i}, checkpoint=train.Checkpoint.from_directory(d))
        else:
            train.report(metrics={"metric_a": i, "metric_b": -i})
    raise RuntimeError()


def load(checkpoint: train.Checkpoint) -> dict:
    with checkpoint.as_directory() as d:
        return json.load(open(os.path.join(d, "state.json")))


@pytest.fixture(params=["local", "remote"])
def storage(request, tmp_path):
    if request.param == "local":
        return str(tmp_path), None
    import s3fs

    endpoint = request.getfixturevalue("moto_endpoint")
    fs = s3fs.S3FileSystem(key="testing", secret="testing", endpoint_url=endpoint,
                           client_kwargs={"region_name": "us-east-1"}, skip_instance_cache=True)
    bucket = f"result-{os.urandom(6).hex()}"
    fs.call_s3("create_bucket", Bucket=bucket)
    return f"s3://{bucket}/sub", fs


def test_result_restore(storage):
    storage_path, filesystem = storage
    trainer = DataParallelTrainer(
        worker_loop, train_loop_config={"a": 1, "b": 2}, scaling_config=ScalingConfig(num_workers=2),
        run_config=RunConfig(name="test_result_restore", storage_path=storage_path, storage_filesystem=filesystem,
                             checkpoint_config=CheckpointConfig(num_to_keep=NUM_CHECKPOINTS,
                                                                checkpoint_score_attribute="metric_a",
                                                                checkpoint_score_order="max")))
    with pytest.raises(train.TrainingFailedError):
        trainer.fit()

    result = Result.from_path(f"{storage_path}/test_result_restore", storage_filesystem=filesystem)
    assert result.checkpoint
    assert len(result.best_checkpoints) == NUM_CHECKPOINTS
    # the top 3 are iterations 4, 3, 2
    best_ckpt_a = result.get_best_checkpoint(metric="metric_a", mode="max")
    assert load(best_ckpt_a)["iter"] == NUM_ITERATIONS - 1
    best_ckpt_b = result.get_best_checkpoint(metric="metric_b", mode="max")
    assert load(best_ckpt_b)["iter"] == NUM_ITERATIONS - NUM_CHECKPOINTS
    with pytest.raises(RuntimeError, match="Invalid metric name.*"):
        result.get_best_checkpoint(metric="invalid_metric", mode="max")
    assert result.error is None  # V2: from_path restores no error
    assert "config" not in result.metrics
