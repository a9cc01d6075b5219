"""Port of ray-project/ray python/ray/train/tests/test_data_parallel_trainer.py (Ray 2.60), imports swapped to
trainkeep.

Upstream patches Ray internals to see every worker's report (``_report``, ``BackendExecutor``); a
``UserCallback``, which receives every rank's metrics of a round, does that here. Dict checkpoints
(``Checkpoint.from_dict``, gone from Ray) are a JSON file. Not ported: ``test_scaling_config`` and
``test_gpu_requests`` (Ray's resource accounting), ``test_datasets`` (Ray Data), ``test_preprocessor_in_checkpoint``
and ``test_tune`` (removed from Ray), ``test_resume_from_checkpoint`` (pinned in test_doc_differences.py);
``test_checkpoint_config`` is air/tests/test_checkpoint_config.py's, ported in test_air_configs.py.
"""

from __future__ import annotations

import json
import os
import tempfile
import time

import pytest

import trainkeep as train
from trainkeep import DataParallelTrainer, RunConfig, ScalingConfig, UserCallback

scale_config = ScalingConfig(num_workers=2)


def dict_checkpoint(data: dict) -> train.Checkpoint:
    d = tempfile.mkdtemp()
    with open(os.path.join(d, "data.json"), "w") as f:
        json.dump(data, f)
    return train.Checkpoint.from_directory(d)


def to_dict(checkpoint: train.Checkpoint) -> dict:
    with checkpoint.as_directory() as d:
        return json.load(open(os.path.join(d, "data.json")))


class CaptureReports(UserCallback):
    """Collect every round's per-rank metrics in the driver."""

    def __init__(self) -> None:
        self.rounds: list[list[dict]] = []

    def after_report(self, run_context, metrics, checkpoint) -> None:
        self.rounds.append(metrics)


def fit(fn, tmp_path, **kwargs) -> train.Result:
    run_config = kwargs.pop("run_config", None) or RunConfig(storage_path=str(tmp_path))
    return DataParallelTrainer(fn, scaling_config=scale_config, run_config=run_config, **kwargs).fit()


def test_fit_train(tmp_path):
    def train_func():
        train.report({"loss": 1})

    assert fit(train_func, tmp_path).metrics["loss"] == 1


def test_fit_train_config(tmp_path):
    def train_func(config):
        train.report({"loss": config["x"]})

    assert fit(train_func, tmp_path, train_loop_config={"x": 100}).metrics["loss"] == 100


def test_checkpoint(tmp_path):
    def train_func():
        for i in range(3):
            train.report({"epoch": i}, checkpoint=dict_checkpoint({"model": i}))

    assert to_dict(fit(train_func, tmp_path).checkpoint)["model"] == 2


def test_invalid_train_loop():
    def train_loop(config, extra_arg):
        pass

    with pytest.raises(ValueError):
        DataParallelTrainer(train_loop_per_worker=train_loop)


def test_bad_return_in_train_loop(tmp_path):
    """Returns from the train loop that cannot be pickled are discarded: no exception."""

    class FailOnUnpickle:
        def __reduce__(self):
            raise RuntimeError("Failing")

    def train_loop(config):
        train.report({"loss": 1})
        return FailOnUnpickle()

    result = fit(train_loop, tmp_path)
    assert result.metrics["loss"] == 1
    assert result.return_value is None


def test_fast_slow(tmp_path):
    """One worker slower than the other: both rounds still complete, each reported once."""

    def train_func():
        for i in range(2):
            train.report({"index": i}, checkpoint=dict_checkpoint({"epoch": i}))
            if train.get_context().get_world_rank() == 0:
                time.sleep(0.5)

    callback = CaptureReports()
    results = fit(train_func, tmp_path, run_config=RunConfig(storage_path=str(tmp_path), callbacks=[callback]))
    assert to_dict(results.checkpoint)["epoch"] == 1
    assert len(callback.rounds) == 2


def test_mismatch_report(tmp_path):
    """A worker that reports fewer times than the others fails the run with a RuntimeError."""

    def train_func():
        for _ in range(1 + train.get_context().get_world_rank()):  # rank 0 once, rank 1 twice
            train.report({"loss": 1})

    with pytest.raises(RuntimeError):
        fit(train_func, tmp_path)


def test_world_rank(tmp_path):
    def train_func():
        train.report({"world_rank": train.get_context().get_world_rank()})

    callback = CaptureReports()
    fit(train_func, tmp_path, run_config=RunConfig(storage_path=str(tmp_path), callbacks=[callback]))
    assert [m["world_rank"] for m in callback.rounds[0]] == [0, 1]
