"""Asynchronous validation (ValidationConfig) and report(checkpoint_upload_fn=...), with real workers.

The validations run in processes of their own; the tests synchronise with them through marker files, never
through wall-clock thresholds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

import pytest

import trainkeep as tk
from trainkeep._internal.core.history_rows import parse_history
from trainkeep._internal.core.manifest import IndexEntry, Manifest, RunIndex, encode, parse_run_index
from trainkeep._internal.core.validation_state import merge_validated
from trainkeep._internal.engine.verify import verify_checkpoint
from trainkeep._internal.storage import LocalStorage
from trainkeep.errors import CorruptRunError

# ---------------------------------------------------------------------------------------------- functions


def wait_for(path: str, limit_s: float = 60.0) -> bool:
    """Wait until ``path`` exists (True), or give up after ``limit_s`` (False): a test never hangs."""
    end = time.monotonic() + limit_s
    while not os.path.exists(path):
        if time.monotonic() > end:
            return False
        time.sleep(0.02)
    return True


def touch(path: str, text: str = "") -> None:
    with open(path, "w") as f:
        f.write(text)


def save(epoch: int) -> tk.Checkpoint:
    d = tempfile.mkdtemp()
    touch(os.path.join(d, "state.json"), json.dumps({"epoch": epoch}))
    return tk.Checkpoint.from_directory(d)


def score_fn(checkpoint: tk.Checkpoint, score: float = 0.0, marks: str = "") -> dict:
    """Validate by returning the score it is given, and the epoch read from the checkpoint itself."""
    with checkpoint.as_directory() as d:
        epoch = json.load(open(os.path.join(d, "state.json")))["epoch"]
    if marks:
        touch(os.path.join(marks, f"validated_{epoch}"), str(os.getpid()))
    return {"score": score, "validated_epoch": epoch}


def train_scores(config: dict) -> None:
    for epoch, (reported, validated) in enumerate(config["scores"]):
        task = tk.ValidationTaskConfig(fn_kwargs={"score": validated})
        tk.report({"epoch": epoch, "score": reported}, checkpoint=save(epoch), validation=task)


def blocking_fn(checkpoint: tk.Checkpoint, marks: str, block: bool = True) -> dict:
    """Mark that it started (with its pid), wait for the "release" mark when ``block``, then mark "done"."""
    touch(os.path.join(marks, "started"), str(os.getpid()))
    if block:
        wait_for(os.path.join(marks, "release"))
    touch(os.path.join(marks, "done"))
    return {"val": 7}


def train_while_validating(config: dict) -> None:
    marks = config["marks"]
    rank = tk.get_context().get_world_rank()
    touch(os.path.join(marks, f"worker_{rank}"), str(os.getpid()))
    tk.report({"epoch": 0}, checkpoint=save(0) if rank == 0 else None, validation=rank == 0)
    for epoch in range(1, 4):  # rounds that complete while the validation still waits for its release
        tk.report({"epoch": epoch}, checkpoint=save(epoch) if epoch == 3 and rank == 0 else None)
    if rank == 0:
        if os.path.exists(os.path.join(marks, "done")):
            raise AssertionError("the validation ended before the training released it: report() waited for it")
        touch(os.path.join(marks, "release"))


def outcome_fn(checkpoint: tk.Checkpoint, how: str = "ok", unused: object = None) -> dict:
    if how == "raise":
        raise RuntimeError("validation blew up")
    if how == "sleep":
        time.sleep(60)
    if how == "not a dict":
        return [1]  # type: ignore[return-value]
    return {"val_acc": 0.5}


def train_outcomes(config: dict) -> None:
    tasks = [tk.ValidationTaskConfig(fn_kwargs={"how": "raise", "unused": lambda: None}),
             tk.ValidationTaskConfig(fn_kwargs={"how": "sleep"}, timeout_s=2),
             tk.ValidationTaskConfig(fn_kwargs={"how": "not a dict"}),
             True]
    for epoch, task in enumerate(tasks):
        tk.report({"epoch": epoch}, checkpoint=save(epoch), validation=task)


def train_then_fail_mid_validation(config: dict) -> None:
    if tk.get_checkpoint() is not None:
        return  # the resumed run: nothing more to train
    tk.report({"epoch": 0}, checkpoint=save(0), validation=True)
    if not wait_for(os.path.join(config["marks"], "started")):
        raise AssertionError("the validation never started")
    raise RuntimeError("the worker fails while the validation runs")


def train_then_wait(config: dict) -> None:
    if tk.get_checkpoint() is not None:
        return  # the resumed run: nothing more to train
    tk.report({"epoch": 0}, checkpoint=save(0), validation=True)
    wait_for(os.path.join(config["marks"], "release"))


def train_asks_validation(config: dict) -> None:
    tk.report({"epoch": 0}, checkpoint=save(0) if config["with_checkpoint"] else None, validation=True)


# ---------------------------------------------------------------------------------------------- helpers


def fit(fn, config, run_config, validation_config=None, workers=1):
    return tk.DataParallelTrainer(fn, train_loop_config=config, scaling_config=tk.ScalingConfig(num_workers=workers),
                                  run_config=run_config, validation_config=validation_config).fit()


def index_of(run_path: str) -> dict:
    return json.load(open(os.path.join(run_path, "trainkeep_run.json")))


def statuses(run_path: str) -> dict[str, str | None]:
    return {c["name"]: (c.get("validation") or {}).get("status") for c in index_of(run_path)["checkpoints"]}


def history_rows(run_path: str) -> list[dict]:
    return parse_history(open(os.path.join(run_path, "history.jsonl"), "rb").read())[0]


def dirs(run_path: str) -> list[str]:
    return sorted(n for n in os.listdir(run_path) if n.startswith("checkpoint_"))


# ---------------------------------------------------------------------------------------------- validation


def test_validation_scores_reorder_retention(make_run, tmp_path):
    # reported 9, 1, 5 would keep checkpoint 0; the validations say 1, 9, 5, so checkpoint 1 is the best
    config = {"scores": [(9, 1), (1, 9), (5, 5)]}
    run = make_run(checkpoint_config=tk.CheckpointConfig(num_to_keep=1, checkpoint_score_attribute="score"))
    result = fit(train_scores, config, run, tk.ValidationConfig(score_fn))

    assert dirs(result.path) == ["checkpoint_000001", "checkpoint_000002"]  # the best, and the latest
    assert statuses(result.path) == {"checkpoint_000001": "VALIDATED", "checkpoint_000002": "VALIDATED"}
    [(best, metrics)] = result.best_checkpoints
    assert best.path.endswith("checkpoint_000001")
    assert metrics == {"epoch": 1, "score": 9, "validated_epoch": 1}  # the function saw the committed files
    assert [r["metrics"]["score"] for r in history_rows(result.path)] == [1, 9, 5]
    assert tk.Result.from_path(result.path).metrics_dataframe["score"].tolist() == [1, 9, 5]
    for name in dirs(result.path):
        assert verify_checkpoint(LocalStorage(), result.path, name) == []  # the manifests are untouched

    # the run index lost: rebuilt from the manifests, the validations come back from the history, so reopening
    # with the same policy keeps the validated best (ranked by its reported score 1, it would be deleted)
    os.remove(os.path.join(result.path, "trainkeep_run.json"))
    with tk.CheckpointManager(result.path, run.checkpoint_config) as manager:
        assert [(c.path.rsplit("/", 1)[1], m["score"]) for c, m in manager.best_checkpoints] == [
            ("checkpoint_000001", 9)]
    assert dirs(result.path) == ["checkpoint_000001", "checkpoint_000002"]
    assert statuses(result.path) == {"checkpoint_000001": "VALIDATED", "checkpoint_000002": "VALIDATED"}


def test_a_slow_validation_does_not_hold_up_report_rounds(make_run, tmp_path):
    marks = str(tmp_path)
    result = fit(train_while_validating, {"marks": marks}, make_run(),
                 tk.ValidationConfig(blocking_fn, task_config=tk.ValidationTaskConfig(fn_kwargs={"marks": marks})),
                 workers=2)
    # three rounds completed on both ranks while the validation waited; it ended only after, and fit() waited
    assert os.path.exists(os.path.join(marks, "done"))
    pid = int(open(os.path.join(marks, "started")).read())
    assert pid not in {os.getpid(), *(int(open(os.path.join(marks, f"worker_{r}")).read()) for r in (0, 1))}
    assert statuses(result.path) == {"checkpoint_000000": "VALIDATED", "checkpoint_000003": None}
    assert history_rows(result.path)[0]["metrics"] == {"epoch": 0, "val": 7}


def test_failing_and_timed_out_validations_do_not_fail_the_run(make_run, caplog):
    result = fit(train_outcomes, {}, make_run(), tk.ValidationConfig(outcome_fn))
    assert statuses(result.path) == {"checkpoint_000000": "VALIDATION_FAILED",
                                     "checkpoint_000001": "VALIDATION_TIMEOUT",
                                     "checkpoint_000002": "VALIDATION_FAILED",
                                     "checkpoint_000003": "VALIDATED"}
    entries = {c["name"]: c for c in index_of(result.path)["checkpoints"]}
    assert "RuntimeError: validation blew up" in entries["checkpoint_000000"]["validation"]["error"]
    assert "must return a dict" in entries["checkpoint_000002"]["validation"]["error"]
    assert entries["checkpoint_000000"]["metrics"] == {"epoch": 0}  # unchanged
    assert entries["checkpoint_000003"]["metrics"] == {"epoch": 3, "val_acc": 0.5}
    assert "validation blew up" in caplog.text and "VALIDATION_TIMEOUT" in caplog.text
    # the per-report timeout was persisted with its kwargs
    assert entries["checkpoint_000001"]["validation"]["task"] == {"fn_kwargs": {"how": "sleep"}, "timeout_s": 2}
    # kwargs that are not JSON (a closure reached the validation by cloudpickle) are not persisted, and that is said
    assert entries["checkpoint_000000"]["validation"]["task"] == {"fn_kwargs": None, "timeout_s": None}
    assert "are not JSON values" in caplog.text


def test_a_validation_pending_when_the_run_stops_runs_when_it_resumes(make_run, tmp_path):
    marks = str(tmp_path)
    run = make_run(checkpoint_config=tk.CheckpointConfig(num_to_keep=1))
    blocking = tk.ValidationConfig(blocking_fn, task_config=tk.ValidationTaskConfig(fn_kwargs={"marks": marks}))
    with pytest.raises(tk.TrainingFailedError):
        fit(train_then_fail_mid_validation, {"marks": marks}, run, blocking)
    run_path = os.path.join(run.storage_path, "run")
    assert statuses(run_path) == {"checkpoint_000000": "PENDING_VALIDATION"}
    assert not os.path.exists(os.path.join(marks, "done"))  # it was stopped, not finished

    quick = tk.ValidationConfig(blocking_fn,
                                task_config=tk.ValidationTaskConfig(fn_kwargs={"marks": marks, "block": False}))
    result = fit(train_then_fail_mid_validation, {"marks": marks}, run, quick)
    assert statuses(result.path) == {"checkpoint_000000": "VALIDATED"}
    assert result.best_checkpoints[0][1] == {"epoch": 0, "val": 7}
    assert history_rows(result.path)[0]["metrics"] == {"epoch": 0, "val": 7}


DRIVER = """
import sys
sys.path[:0] = {paths!r}
import trainkeep as tk
import test_validation as t
config = {{"marks": {marks!r}}}
validation = tk.ValidationConfig(t.blocking_fn, task_config=tk.ValidationTaskConfig(fn_kwargs=config))
t.fit(t.train_then_wait, config, tk.RunConfig(name="run", storage_path={storage!r}), validation)
"""


def is_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_a_validation_cut_short_by_a_killed_driver_runs_when_the_run_resumes(storage, tmp_path):
    marks = str(tmp_path)
    script = DRIVER.format(paths=[os.path.dirname(__file__), *sys.path], marks=marks, storage=storage)
    driver = subprocess.Popen([sys.executable, "-c", script])
    try:
        assert wait_for(os.path.join(marks, "started"), 120), "the validation never started"
    finally:
        driver.kill()
        driver.wait()
    validator = int(open(os.path.join(marks, "started")).read())
    end = time.monotonic() + 30
    while is_alive(validator) and time.monotonic() < end:  # it ends with the driver: nobody would read it
        time.sleep(0.05)
    assert not is_alive(validator)
    touch(os.path.join(marks, "release"))  # lets the orphaned worker return, and find its driver gone
    run_path = os.path.join(storage, "run")
    assert statuses(run_path) == {"checkpoint_000000": "PENDING_VALIDATION"}
    assert not os.path.exists(os.path.join(marks, "done"))

    quick = tk.ValidationConfig(blocking_fn,
                                task_config=tk.ValidationTaskConfig(fn_kwargs={"marks": marks, "block": False}))
    result = fit(train_then_wait, {"marks": marks}, tk.RunConfig(name="run", storage_path=storage), quick)
    assert statuses(result.path) == {"checkpoint_000000": "VALIDATED"}
    assert history_rows(result.path)[0]["metrics"] == {"epoch": 0, "val": 7}


def test_a_pending_checkpoint_is_never_deleted_by_retention(make_run, tmp_path):
    # keep 1 by score: checkpoint 0 (score 0) would go with the next commit, but its validation is held until
    # training ends
    marks = str(tmp_path)

    def train(config: dict) -> None:
        tk.report({"score": 0}, checkpoint=save(0), validation=True)
        for epoch in (1, 2):
            tk.report({"score": 10 + epoch}, checkpoint=save(epoch))
        if not os.path.exists(os.path.join(config["run"], "checkpoint_000000")):
            raise AssertionError("the pending checkpoint was deleted")
        touch(os.path.join(config["marks"], "release"))

    run = make_run(checkpoint_config=tk.CheckpointConfig(num_to_keep=1, checkpoint_score_attribute="score"))
    config = {"marks": marks, "run": os.path.join(run.storage_path, "run")}
    result = fit(train, config, run,
                 tk.ValidationConfig(blocking_fn, task_config=tk.ValidationTaskConfig(fn_kwargs={"marks": marks})))
    assert dirs(result.path) == ["checkpoint_000002"]  # once validated (no score), it ranks last and goes


def test_validation_without_a_validation_config_or_a_checkpoint_is_a_value_error(make_run):
    with pytest.raises(ValueError, match="`validation_config` was not set on the trainer, but a validation was "
                                         "requested"):
        fit(train_asks_validation, {"with_checkpoint": True}, make_run("a"))
    with pytest.raises(ValueError, match="Validation requires a checkpoint to be provided"):
        fit(train_asks_validation, {"with_checkpoint": False}, make_run("b"), tk.ValidationConfig(score_fn))


def test_validation_configs_check_their_fields():
    with pytest.raises(TypeError, match="fn must be a function"):
        tk.ValidationConfig(fn=3)
    with pytest.raises(ValueError, match="timeout_s must be None or a number > 0, got 0"):
        tk.ValidationTaskConfig(timeout_s=0)
    with pytest.raises(TypeError, match="fn_kwargs must be None or a dict"):
        tk.ValidationTaskConfig(fn_kwargs=[1])
    assert tk.ValidationConfig(score_fn).task_config == tk.ValidationTaskConfig()


def test_validated_metrics_merge_by_flattened_name():
    merged = merge_validated({"val": {"acc": 1, "n": 2}, "loss": 3}, {"val/acc": 5})
    assert merged == {"val/n": 2, "loss": 3, "val/acc": 5}  # one spelling of val/acc, the validation's
    assert merge_validated({"val": {"acc": 1}}, {"val": {"f1": 2}}) == {"val": {"f1": 2}}  # as dict.update
    assert merge_validated({"a": 1}, {"b": {"c": 2}}) == {"a": 1, "b": {"c": 2}}


def test_the_run_index_keeps_validation_states_and_refuses_bad_ones():
    manifest = Manifest("checkpoint_000000", 0, 1.0, {"loss": 1}, ())
    pending = {"status": "PENDING_VALIDATION", "task": None, "metrics": {}}
    entry = IndexEntry.from_manifest(manifest).with_validation(pending)
    done = entry.with_validation({"status": "VALIDATED", "task": None, "metrics": {"acc": 2}})
    assert done.metrics == {"loss": 1, "acc": 2} and done.agrees_with(manifest)

    def index(validation: object) -> bytes:
        entry_dict = {**done.to_dict(), "validation": validation}
        return encode({"schema": "trainkeep.run", "version": 1, "status": "running", "created": 1.0,
                       "updated": 1.0, "next_round": 1, "checkpoint_config": {}, "checkpoints": [entry_dict]})

    assert parse_run_index(index(done.validation), "i").checkpoints[0] == done
    # only an index with a validation state is version 3: a trainkeep reading up to 2 refuses it (instead of
    # rebuilding it without the states and deleting what they protect); others keep their version
    assert RunIndex({}, checkpoints=[done]).to_dict()["version"] == 3
    assert RunIndex({}, checkpoints=[IndexEntry.from_manifest(manifest)]).to_dict()["version"] == 1
    for bad in ({"status": "DONE", "metrics": {}}, {"status": "VALIDATED", "metrics": []}, [], {"status": "VALIDATED",
                                                                                               "extra": 1}):
        with pytest.raises(CorruptRunError):
            parse_run_index(index(bad), "i")


# ---------------------------------------------------------------------------------------------- checkpoint_upload_fn


def upload_by_hand(checkpoint: tk.Checkpoint, name: str) -> tk.Checkpoint:
    """Upload file by file through the run's filesystem, plus a file of its own; return the uploaded checkpoint."""
    storage = tk.get_context().get_storage()
    dest = storage.build_checkpoint_path_from_name(name)
    fs = storage.storage_filesystem
    fs.makedirs(dest, exist_ok=True)  # the directory does not exist yet, as in Ray
    for root, _, files in os.walk(checkpoint.path):
        for file in files:
            rel = os.path.relpath(os.path.join(root, file), checkpoint.path)
            fs.put_file(os.path.join(root, file), f"{dest}/{rel}")
    with fs.open(f"{dest}/uploaded_by.txt", "wb") as f:
        f.write(f"{name} by rank {tk.get_context().get_world_rank()}".encode())
    return tk.Checkpoint(dest, fs)


def train_with_upload_fn(config: dict) -> None:
    for epoch in range(2):
        mode = tk.CheckpointUploadMode.ASYNC if epoch == 1 else tk.CheckpointUploadMode.SYNC
        tk.report({"epoch": epoch}, checkpoint=save(epoch), checkpoint_upload_mode=mode,
                  checkpoint_upload_fn=upload_by_hand)


def train_with_bad_upload_fn(config: dict) -> None:
    returns = {"local": lambda ckpt, name: ckpt, "none": lambda ckpt, name: None}[config["returns"]]
    tk.report({"epoch": 0}, checkpoint=save(0), checkpoint_upload_fn=returns)


def test_checkpoint_upload_fn_uploads_and_trainkeep_commits_what_it_finds(make_run):
    result = fit(train_with_upload_fn, {}, make_run(), workers=2)
    for epoch, name in enumerate(["checkpoint_000000", "checkpoint_000001"]):
        manifest = json.load(open(os.path.join(result.path, name, ".trainkeep_manifest.json")))
        assert sorted(f["path"] for f in manifest["files"]) == ["state.json", "uploaded_by.txt"]
        assert verify_checkpoint(LocalStorage(), result.path, name) == []  # checksums of what is on storage
        with open(os.path.join(result.path, name, "state.json")) as f:
            assert json.load(f) == {"epoch": epoch}
    assert result.checkpoint.path.endswith("checkpoint_000001")


def test_checkpoint_upload_fn_must_return_the_uploaded_checkpoint(make_run):
    with pytest.raises(ValueError, match="checkpoint_upload_fn must upload into the checkpoint directory"):
        fit(train_with_bad_upload_fn, {"returns": "local"}, make_run("a"))
    with pytest.raises(ValueError, match="checkpoint_upload_fn must return a trainkeep.Checkpoint, got NoneType"):
        fit(train_with_bad_upload_fn, {"returns": "none"}, make_run("b"))
    assert dirs(os.path.join(make_run().storage_path, "a")) == []  # the round was swept


def test_validation_on_s3_reads_the_committed_checkpoint_from_the_bucket(s3_fs, tmp_path):
    run = tk.RunConfig(name="run", storage_path=f"s3://{s3_fs.bucket_name}/runs", storage_filesystem=s3_fs)
    result = fit(train_scores, {"scores": [(1, 2)]}, run, tk.ValidationConfig(score_fn))
    assert result.best_checkpoints[0][1] == {"epoch": 0, "score": 2, "validated_epoch": 0}
    read_back = tk.Result.from_path(f"s3://{s3_fs.bucket_name}/runs/run", storage_filesystem=s3_fs)
    assert read_back.metrics_dataframe["score"].tolist() == [2]


def test_checkpoint_upload_fn_on_s3(s3_fs, tmp_path):
    run = tk.RunConfig(name="run", storage_path=f"s3://{s3_fs.bucket_name}/runs", storage_filesystem=s3_fs)
    result = fit(train_with_upload_fn, {}, run)
    assert result.path == f"{s3_fs.bucket_name}/runs/run"
    local = result.checkpoint.to_directory(str(tmp_path / "download"))  # verified against the manifest
    assert sorted(os.listdir(local)) == ["state.json", "uploaded_by.txt"]
    assert open(os.path.join(local, "uploaded_by.txt")).read() == "checkpoint_000001 by rank 0"
