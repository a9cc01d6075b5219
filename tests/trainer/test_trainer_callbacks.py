"""RunConfig(callbacks=...): UserCallback hooks in the driver, and TensorBoard event files of a run (real workers)."""

from __future__ import annotations

import logging
import os
from typing import Any

import pytest
import trainer_loops as loops

import trainkeep as tk
from trainkeep._internal.engine.run import read_run
from trainkeep._internal.engine.verify import verify_checkpoint
from trainkeep._internal.storage import LocalStorage


class Recorder(tk.UserCallback):
    def __init__(self) -> None:
        self.reports: list[tuple[int, list[dict[str, Any]], str | None]] = []
        self.exceptions: list[dict[int, BaseException]] = []

    def after_report(self, run_context, metrics, checkpoint):
        assert isinstance(run_context.get_run_config(), tk.RunConfig)
        self.reports.append((run_context.report_index, metrics, os.path.basename(checkpoint.path) if checkpoint else None))

    def after_exception(self, run_context, worker_exceptions):
        self.exceptions.append(worker_exceptions)


class Raising(tk.UserCallback):
    def after_report(self, run_context, metrics, checkpoint):
        raise RuntimeError("callback bug")


def fit(config: dict[str, Any], run_config: tk.RunConfig, workers: int = 2) -> tk.Result:
    return tk.DataParallelTrainer(loops.train, train_loop_config=config,
                                  scaling_config=tk.ScalingConfig(num_workers=workers), run_config=run_config).fit()


def test_after_report_gets_every_rank_s_metrics_and_the_committed_checkpoint(loop_config, make_run):
    loop_config.update(every=2, epochs=3)
    recorder = Recorder()
    fit(loop_config, make_run(callbacks=[recorder]))

    assert [(index, name) for index, _, name in recorder.reports] == [
        (0, "checkpoint_000000"), (1, None), (2, "checkpoint_000002")]
    for index, metrics, _ in recorder.reports:
        assert [m["rank"] for m in metrics] == [0, 1]  # metrics[i] is rank i's
        assert all(m["epoch"] == index for m in metrics)
    assert recorder.exceptions == []


def test_a_raising_callback_is_logged_and_loses_no_round(loop_config, make_run, caplog):
    recorder = Recorder()
    with caplog.at_level(logging.ERROR, logger="trainkeep._internal.trainer.callbacks"):
        result = fit(loop_config, make_run(callbacks=[Raising(), recorder]))

    assert len(recorder.reports) == 3  # the callbacks after the raising one still run
    assert [os.path.basename(c.path) for c, _ in result.best_checkpoints] == [
        "checkpoint_000000", "checkpoint_000001", "checkpoint_000002"]
    errors = [r for r in caplog.records if "Raising.after_report raised" in r.getMessage()]
    assert len(errors) == 3 and "callback bug" in (errors[0].exc_text or "")


def test_after_exception_names_the_failed_rank_and_the_run_goes_on(loop_config, make_run, tmp_path):
    loop_config["fail"] = {"rank": 1, "epoch": 1, "once": str(tmp_path / "once")}
    recorder = Recorder()
    fit(loop_config, make_run(callbacks=[recorder], failure_config=tk.FailureConfig(max_failures=1)))

    assert len(recorder.exceptions) == 1
    (failures,) = recorder.exceptions
    assert list(failures) == [1] and "injected failure on rank 1" in str(failures[1])
    # round 0 once; round 1 was cut short by the failure, then reported by the restarted group
    assert [index for index, _, _ in recorder.reports] == [0, 1, 2]


def _scalars(log_dir: str) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(log_dir)
    accumulator.Reload()
    return {tag: [(e.step, e.value) for e in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]}


def test_tensorboard_event_files_hold_every_report_and_a_resume_continues_them(loop_config, make_run):
    pytest.importorskip("tensorboard")
    loop_config.update(losses={"0": 3.0, "1": 2.0, "2": 0.5}, epochs=3)
    result = fit(loop_config, make_run(callbacks=[tk.TensorBoardCallback()]))
    log_dir = os.path.join(result.path, "tensorboard")

    scalars = _scalars(log_dir)
    assert scalars["loss"] == [(0, 3.0), (1, 2.0), (2, 0.5)]
    assert scalars["epoch"] == [(0, 0.0), (1, 1.0), (2, 2.0)]

    # a resumed run continues the curves at the next report index
    loop_config["epochs"] = 5
    fit(loop_config, make_run(callbacks=[tk.TensorBoardCallback()]))
    assert [step for step, _ in _scalars(log_dir)["epoch"]] == [0, 1, 2, 3, 4]

    # the directory is not a checkpoint: the run reads, verifies and resumes as before
    state = read_run(LocalStorage(), result.path)
    assert state.problems == []
    assert [c.name for c in state.index.checkpoints][-1] == "checkpoint_000004"
    for entry in state.index.checkpoints:
        assert verify_checkpoint(LocalStorage(), result.path, entry.name) == []


def test_nested_metrics_become_slash_joined_tags_and_non_numbers_are_skipped():
    from trainkeep._internal.trainer.callbacks import _scalars as leaves

    metrics = {"a": {"b": 1, "c": {"d": 2.5}}, "s": "text", "flag": True, "n": None, "x": 3}
    assert leaves(metrics) == [("a/b", 1.0), ("a/c/d", 2.5), ("x", 3.0)]


def test_tensorboard_files_of_a_run_on_s3_are_uploaded_into_the_run(s3_fs, loop_config, tmp_path):
    pytest.importorskip("tensorboard")
    loop_config.update(losses={"0": 3.0, "1": 2.0, "2": 0.5}, epochs=3)
    run = tk.RunConfig(name="run", storage_path=f"s3://{s3_fs.bucket_name}/runs", storage_filesystem=s3_fs,
                       callbacks=[tk.TensorBoardCallback()])
    result = fit(loop_config, run)

    remote = f"{result.path}/tensorboard"
    names = [p.rsplit("/", 1)[1] for p in s3_fs.ls(remote, refresh=True)]
    assert len(names) == 1 and names[0].startswith("events.out.tfevents.")
    local = tmp_path / "download"
    local.mkdir()
    s3_fs.get(f"{remote}/{names[0]}", str(local / names[0]))
    assert _scalars(str(local))["loss"] == [(0, 3.0), (1, 2.0), (2, 0.5)]
    read_back = tk.Result.from_path(f"s3://{s3_fs.bucket_name}/runs/run", storage_filesystem=s3_fs)
    assert read_back.checkpoint == result.checkpoint  # the directory is not mistaken for a checkpoint


def _write_one_report(tmp_path, callback: tk.TensorBoardCallback) -> None:
    from trainkeep._internal.trainer.callbacks import TrainRunContext

    context = TrainRunContext(tk.RunConfig(), None, tk.ScalingConfig(), str(tmp_path), None, True)
    for index, loss in enumerate([2.0, 1.5]):
        context.report_index = index
        callback.after_report(context, [{"loss": loss, "nested": {"acc": index / 2}}], None)
    callback.close()


def test_tensorboardx_is_used_without_tensorboard_and_neither_is_a_clear_import_error(tmp_path, monkeypatch):
    pytest.importorskip("tensorboardX")
    pytest.importorskip("tensorboard")
    with monkeypatch.context() as m:
        m.setitem(__import__("sys").modules, "tensorboard", None)  # import tensorboard now raises ImportError
        callback = tk.TensorBoardCallback()
        assert callback._writer_class.__module__.startswith("tensorboardX")
        _write_one_report(tmp_path, callback)
    scalars = _scalars(str(tmp_path / "tensorboard"))
    assert scalars["loss"] == [(0, 2.0), (1, 1.5)] and scalars["nested/acc"] == [(0, 0.0), (1, 0.5)]

    monkeypatch.setitem(__import__("sys").modules, "tensorboard", None)
    monkeypatch.setitem(__import__("sys").modules, "tensorboardX", None)
    with pytest.raises(ImportError, match=r"pip install 'trainkeep\[tensorboard\]'"):
        tk.TensorBoardCallback()
