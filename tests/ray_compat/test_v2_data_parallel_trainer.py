"""Port of ray-project/ray python/ray/train/v2/tests/test_data_parallel_trainer.py (Ray 2.60), imports swapped.

Not ported here, pinned in test_v2_differences.py instead: ``test_backend_setup`` (trainkeep has no public
``BackendConfig``/``Backend``), ``test_setup_working_directory`` (workers keep the driver's working directory:
there is no ``RAY_CHDIR_TO_TRIAL_DIR``), and ``Result.filesystem`` being an fsspec filesystem where Ray's is a
``pyarrow.fs.FileSystem`` (the rest of ``test_result_output`` is here).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

import trainkeep as train
from trainkeep import (
    Checkpoint,
    DataParallelTrainer,
    Result,
    RunConfig,
    ScalingConfig,
    TrainingFailedError,
    UserCallback,
    WorkerGroupError,
)


def dict_checkpoint(directory: str, data: dict) -> Checkpoint:
    Path(directory, "data.json").write_text(json.dumps(data))
    return Checkpoint.from_directory(directory)


def test_result_output(tmp_path):
    """Covers test_result_output (path of the Result; its filesystem type is a pinned difference)."""
    trainer = DataParallelTrainer(lambda: None, scaling_config=ScalingConfig(num_workers=2),
                                  run_config=RunConfig(name="test", storage_path=str(tmp_path)))
    result = trainer.fit()
    assert isinstance(result, Result)
    assert result.path == str(tmp_path / "test")
    assert result.filesystem is not None


def test_no_optional_arguments(tmp_path, monkeypatch):
    """Covers test_no_optional_arguments (the default storage lands under a HOME of the test's own)."""
    monkeypatch.setenv("HOME", str(tmp_path))
    result = DataParallelTrainer(lambda: "not used").fit()
    assert result.path.startswith(str(tmp_path / "trainkeep_results"))


def test_train_loop_config(tmp_path):
    """Covers test_train_loop_config: the config reaches a function that takes one."""

    def train_fn(config):
        with tempfile.TemporaryDirectory() as d:
            train.report(metrics=config, checkpoint=dict_checkpoint(d, {}))

    train_loop_config = {"x": 1}
    trainer = DataParallelTrainer(train_fn, train_loop_config=train_loop_config,
                                  scaling_config=ScalingConfig(num_workers=2),
                                  run_config=RunConfig(storage_path=str(tmp_path)))
    assert trainer.fit().metrics == train_loop_config


def test_report_checkpoint_rank0(tmp_path):
    """Covers test_report_checkpoint_rank0: only rank 0 passes a checkpoint."""

    def train_fn():
        metrics = {"rank": train.get_context().get_world_rank()}
        if train.get_context().get_world_rank() == 0:
            with tempfile.TemporaryDirectory() as d:
                train.report(metrics=metrics, checkpoint=dict_checkpoint(d, {}))
        else:
            train.report(metrics=metrics, checkpoint=None)

    result = DataParallelTrainer(train_fn, scaling_config=ScalingConfig(num_workers=2),
                                 run_config=RunConfig(storage_path=str(tmp_path))).fit()
    assert result.metrics == {"rank": 0}
    assert result.checkpoint


def test_report_checkpoint_multirank(tmp_path):
    """Covers test_report_checkpoint_multirank: ranks 1 and 3 of 4 pass files; both land in one checkpoint."""
    ranks_to_report = [1, 3]

    def train_fn():
        rank = train.get_context().get_world_rank()
        if rank in ranks_to_report:
            with tempfile.TemporaryDirectory() as d:
                Path(d, str(rank)).touch()
                train.report(metrics={"rank": rank}, checkpoint=Checkpoint.from_directory(d))
        else:
            train.report(metrics={"rank": rank}, checkpoint=None)

    result = DataParallelTrainer(train_fn, scaling_config=ScalingConfig(num_workers=4),
                                 run_config=RunConfig(storage_path=str(tmp_path))).fit()
    assert result.checkpoint
    result.checkpoint.to_directory(tmp_path / "validate")
    assert sorted(os.listdir(tmp_path / "validate")) == ["1", "3"]


def test_report_get_all_reported_checkpoints(tmp_path):
    """Covers test_report_get_all_reported_checkpoints: the count follows the checkpoint rounds reported."""

    def train_fn():
        if train.get_context().get_world_rank() == 0:
            train.report(metrics={}, checkpoint=None)
            with tempfile.TemporaryDirectory() as d:
                train.report(metrics={}, checkpoint=dict_checkpoint(d, {}))
            assert len(train.get_all_reported_checkpoints()) == 1
            with tempfile.TemporaryDirectory() as d:
                train.report(metrics={}, checkpoint=dict_checkpoint(d, {}))
        else:
            for _ in range(3):
                train.report(metrics={}, checkpoint=None)
            assert len(train.get_all_reported_checkpoints()) == 2

    DataParallelTrainer(train_fn, scaling_config=ScalingConfig(num_workers=2),
                        run_config=RunConfig(storage_path=str(tmp_path))).fit()


def test_error(tmp_path):
    """Covers test_error: a rank's exception fails fit() with a WorkerGroupError that carries it."""

    def error_func_rank_0():
        if train.get_context().get_world_rank() == 0:
            raise ValueError("error")

    trainer = DataParallelTrainer(error_func_rank_0, scaling_config=ScalingConfig(num_workers=2),
                                  run_config=RunConfig(name="test", storage_path=str(tmp_path)))
    with pytest.raises(TrainingFailedError) as exc_info:
        trainer.fit()
    assert isinstance(exc_info.value, WorkerGroupError)
    assert isinstance(exc_info.value.worker_failures[0], ValueError)
    assert list(exc_info.value.worker_failures) == [0]


def test_user_callback(tmp_path):
    """Covers test_user_callback: after_report gets every rank's metrics, after_exception the failed rank."""
    num_workers = 2
    calls: list[tuple] = []

    class MyUserCallback(UserCallback):
        def after_report(self, run_context, metrics, checkpoint):
            calls.append(("after_report", metrics, checkpoint))

        def after_exception(self, run_context, worker_exceptions):
            calls.append(("after_exception", worker_exceptions))

    def train_fn(config):
        train.report(metrics={"rank": train.get_context().get_world_rank()})
        if train.get_context().get_world_rank() == 0:
            raise ValueError("error")

    trainer = DataParallelTrainer(train_fn, scaling_config=ScalingConfig(num_workers=num_workers),
                                  run_config=RunConfig(storage_path=str(tmp_path), callbacks=[MyUserCallback()]))
    with pytest.raises(WorkerGroupError):
        trainer.fit()
    assert calls[0] == ("after_report", [{"rank": 0}, {"rank": 1}], None)
    assert calls[1][0] == "after_exception"
    assert list(calls[1][1]) == [0] and isinstance(calls[1][1][0], ValueError)
    assert len(calls) == 2


SIGINT_SCRIPT = textwrap.dedent("""
    import sys, time
    import trainkeep as train
    from trainkeep import DataParallelTrainer, RunConfig, ScalingConfig

    def train_fn(config):
        open(config["marker"] + f".{train.get_context().get_world_rank()}", "w").close()
        while True:
            time.sleep(0.05)

    DataParallelTrainer(train_fn, train_loop_config={"marker": sys.argv[2]}, scaling_config=ScalingConfig(num_workers=2),
                        run_config=RunConfig(name="run", storage_path=sys.argv[1])).fit()
""")


def test_sigint_abort(tmp_path):
    """Covers test_sigint_abort: one SIGINT to a driver whose workers loop forever ends the process."""
    script = tmp_path / "driver.py"
    script.write_text(SIGINT_SCRIPT)
    marker = tmp_path / "started"
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path / "storage"), str(marker)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not all(Path(f"{marker}.{rank}").exists() for rank in (0, 1)):
            assert proc.poll() is None and time.monotonic() < deadline, "training never started"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGINT)
        assert proc.wait(timeout=30) != 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
