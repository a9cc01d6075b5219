"""Failure handling with real processes: a worker that raises or is SIGKILLed, retries, uneven reports."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time

import psutil
import pytest
import trainer_loops as loops
from trainer_loops import read_log

import trainkeep as tk
from trainkeep._internal.engine.verify import verify_checkpoint
from trainkeep._internal.storage import LocalStorage


def fit(config, run_config, fn=loops.train, workers=2):
    return tk.DataParallelTrainer(fn, train_loop_config=config, scaling_config=tk.ScalingConfig(num_workers=workers),
                                  run_config=run_config).fit()


def starts(config, rank=0):
    return [line for line in read_log(config["log"]) if line.startswith(f"start rank={rank}")]


@pytest.mark.parametrize("how", ["raise", "sigkill"])
def test_a_failed_worker_restarts_the_group_from_the_latest_checkpoint(how, loop_config, make_run, tmp_path,
                                                                      list_checkpoint_dirs):
    loop_config.update(epochs=4, fail={"rank": 1, "epoch": 2, "how": how, "once": str(tmp_path / "failed")})
    result = fit(loop_config, make_run(failure_config=tk.FailureConfig(max_failures=1)))

    assert starts(loop_config) == ["start rank=0 epoch=0 from=None", "start rank=0 epoch=2 from=checkpoint_000001"]
    # every round exactly once; round 2 is the rerun's (attempt 1): the partial round 2 of attempt 0 is gone
    frame = result.metrics_dataframe
    assert frame["round"].tolist() == [0, 1, 2, 3]
    assert frame["epoch"].tolist() == [0, 1, 2, 3]
    assert frame["attempt"].tolist() == [0, 0, 1, 1]
    names = list_checkpoint_dirs(result.path)
    assert names == ["checkpoint_000000", "checkpoint_000001", "checkpoint_000002", "checkpoint_000003"]
    assert all(verify_checkpoint(LocalStorage(), result.path, n) == [] for n in names)


@pytest.mark.parametrize(("how", "error", "text"), [
    ("raise", ValueError, "injected failure on rank 1 at epoch 1"),
    ("sigkill", RuntimeError, "killed by signal SIGKILL"),
])
def test_when_retries_run_out_fit_raises_each_failed_rank_s_error(how, error, text, loop_config, make_run,
                                                                 list_checkpoint_dirs):
    loop_config.update(fail={"rank": 1, "epoch": 1, "how": how})
    run = make_run(failure_config=tk.FailureConfig(max_failures=1))
    with pytest.raises(tk.TrainingFailedError) as info:
        fit(loop_config, run)

    failed = info.value
    assert isinstance(failed, tk.WorkerGroupError) and not isinstance(failed, tk.ControllerError)
    assert list(failed.worker_failures) == [1]
    assert isinstance(failed.worker_failures[1], error) and text in str(failed.worker_failures[1])
    assert "2 attempt(s)" in str(failed) and text in str(failed)
    if how == "raise":
        assert "in maybe_fail" in failed.tracebacks[1] and "ValueError" in failed.tracebacks[1]
        assert "--- traceback of rank 1 ---" in str(failed)
    assert len(starts(loop_config, rank=1)) == 2  # rank 1 logs before it fails; rank 0 may be killed sooner
    run_path = os.path.join(run.storage_path, "run")
    assert list_checkpoint_dirs(run_path) == ["checkpoint_000000"]  # the partial round 1 was swept
    assert tk.Result.from_path(run_path).metrics_dataframe["round"].tolist() == [0]


def test_without_failure_config_a_failure_is_final(loop_config, make_run):
    loop_config.update(fail={"rank": 0, "epoch": 0, "how": "exit"})
    with pytest.raises(tk.TrainingFailedError, match="rank 0 .* exited with code 7"):
        fit(loop_config, make_run())
    assert len(starts(loop_config)) == 1


def test_the_checkpoint_a_restarted_group_runs_from_is_never_deleted(loop_config, make_run, tmp_path):
    # keep 1 by min loss: epoch 0 is the best forever; the restart runs from checkpoint_000001 (the latest),
    # which retention would delete at the next commit if it were not protected while the workers use it
    loop_config.update(epochs=4, losses={"0": 0.1, "1": 0.5, "2": 0.9, "3": 0.9}, list_run=True,
                       fail={"rank": 1, "epoch": 2, "how": "raise", "once": str(tmp_path / "failed")})
    config = tk.CheckpointConfig(num_to_keep=1, checkpoint_score_attribute="loss", checkpoint_score_order="min")
    fit(loop_config, make_run(checkpoint_config=config, failure_config=tk.FailureConfig(max_failures=1)))

    lines = [line for line in read_log(loop_config["log"]) if line.startswith("reported rank=0")]
    assert lines[-2:] == [
        "reported rank=0 epoch=2 latest=checkpoint_000002 dirs=checkpoint_000000,checkpoint_000001,checkpoint_000002",
        "reported rank=0 epoch=3 latest=checkpoint_000003 dirs=checkpoint_000000,checkpoint_000001,checkpoint_000003",
    ]


def test_a_rank_that_stops_reporting_times_out_naming_the_missing_rank(loop_config, make_run):
    loop_config.update(reports=3, then="hang")
    started = time.monotonic()
    with pytest.raises(tk.ReportTimeoutError, match=r"rank\(s\) \[1\] did not reach report round 2 within 2 s"):
        fit(loop_config, make_run(report_timeout_s=2.0), fn=loops.uneven)
    assert time.monotonic() - started < 60


def test_a_rank_that_returns_early_fails_the_run_at_once(loop_config, make_run):
    loop_config.update(reports=3, then="return")
    run = make_run(report_timeout_s=600.0, failure_config=tk.FailureConfig(max_failures=2))
    started = time.monotonic()
    with pytest.raises(tk.ReportTimeoutError, match=r"rank 1 returned after 2 report\(\) call\(s\).*\[0\]") as info:
        fit(loop_config, run, fn=loops.uneven)
    assert time.monotonic() - started < 60  # not the 600 s timeout
    assert isinstance(info.value, tk.TrainingFailedError) and isinstance(info.value, tk.ControllerError)
    assert isinstance(info.value.controller_failure, tk.ReportTimeoutError)
    assert "1 attempt(s)" in str(info.value)  # uneven reports are a bug in the loop: not retried


class _Unpicklable(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.lock = threading.Lock()


def _raise_unpicklable() -> None:
    raise _Unpicklable("holds a lock")


def test_an_exception_that_cannot_be_pickled_arrives_as_a_runtime_error_with_its_text(make_run):
    with pytest.raises(tk.TrainingFailedError) as info:
        tk.DataParallelTrainer(_raise_unpicklable, run_config=make_run()).fit()
    error = info.value.worker_failures[0]
    assert type(error) is RuntimeError and str(error) == "_Unpicklable: holds a lock"
    assert "_raise_unpicklable" in info.value.tracebacks[0]


def _wait_for(predicate, timeout_s=60.0):
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.05)


def test_when_the_driver_is_killed_its_workers_die_and_the_next_fit_resumes(loop_config, make_run,
                                                                          list_checkpoint_dirs):
    loop_config["epochs"] = 2
    run = make_run()
    code = (f"import trainkeep as tk, trainer_loops as loops; tk.DataParallelTrainer(loops.report_then_hang, "
            f"train_loop_config={loop_config!r}, scaling_config=tk.ScalingConfig(num_workers=2), run_config="
            f"tk.RunConfig(name='run', storage_path={run.storage_path!r})).fit()")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.path.dirname(loops.__file__), *sys.path])}
    driver = subprocess.Popen([sys.executable, "-c", code], env=env)
    run_path = os.path.join(run.storage_path, "run")
    try:
        debris = os.path.join(run_path, "checkpoint_000002", "shard_0.txt")
        _wait_for(lambda: len([x for x in read_log(loop_config["log"]) if x.startswith("hang")]) == 2
                  and os.path.exists(debris))
        pids = [int(line.split("pid=")[1]) for line in read_log(loop_config["log"]) if line.startswith("hang")]
        driver.send_signal(signal.SIGKILL)
        driver.wait(30)
        _, alive = psutil.wait_procs([psutil.Process(pid) for pid in pids if psutil.pid_exists(pid)], timeout=30)
        assert alive == []  # the workers died with their driver
    finally:
        driver.kill()

    loop_config["epochs"] = 3
    result = fit(loop_config, make_run())  # resumes; the half-written round 2 of the dead driver is swept first
    assert starts(loop_config) == ["start rank=0 epoch=2 from=checkpoint_000001"]
    assert list_checkpoint_dirs(result.path) == ["checkpoint_000000", "checkpoint_000001", "checkpoint_000002"]
    assert open(os.path.join(result.path, "checkpoint_000002", "shard_0.txt")).read() == "rank 0 epoch 2"
    assert verify_checkpoint(LocalStorage(), result.path, "checkpoint_000002") == []


@pytest.mark.parametrize(("kind", "words"), [("lock", "could not be pickled"), ("driver", "could not be unpickled")])
def test_a_return_value_that_cannot_reach_the_driver_warns_and_gives_none(make_run, caplog, kind, words):
    with caplog.at_level(logging.WARNING, logger="trainkeep"):
        result = tk.DataParallelTrainer(loops.returns_unpicklable, train_loop_config={"kind": kind},
                                        run_config=make_run()).fit()
    assert result.return_value is None and result.metrics == {"epoch": 0}
    warnings = [r.getMessage() for r in caplog.records if "return value" in r.getMessage()]
    assert len(warnings) == 1 and words in warnings[0] and "Result.return_value is None" in warnings[0]


def test_ray_s_error_classes_sort_failures_into_worker_and_controller_errors():
    """Ray Train's key-concepts error handling runs unchanged: WorkerGroupError or ControllerError."""
    import pickle

    from trainkeep._internal.trainer.failures import AttemptFailed

    storage_error = tk.StorageError("commit", "/run/checkpoint_000001", OSError(5, "Input/output error"))
    controller = AttemptFailed(storage_error, True).to_training_error(1, 0)
    assert isinstance(controller, tk.ControllerError) and controller.controller_failure is storage_error
    assert controller.worker_failures == {}
    workers = AttemptFailed(ValueError("x"), True, {0: ValueError("x")}).to_training_error(1, 0)
    assert isinstance(workers, tk.WorkerGroupError) and list(workers.worker_failures) == [0]
    bad_report = AttemptFailed(TypeError("score"), False, {1: TypeError("score")}).to_training_error(1, 0)
    assert isinstance(bad_report, tk.WorkerGroupError) and isinstance(bad_report, TypeError)
    copy = pickle.loads(pickle.dumps(controller))
    assert type(copy) is type(controller) and type(copy.controller_failure) is tk.StorageError
    caught = []
    for error in (controller, workers):
        try:
            raise error
        except tk.WorkerGroupError as e:
            caught.append(("workers", e.worker_failures))
        except tk.ControllerError as e:
            caught.append(("controller", e.controller_failure))
    assert [kind for kind, _ in caught] == ["controller", "workers"]
