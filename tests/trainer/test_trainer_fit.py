"""DataParallelTrainer end to end with real worker processes: rounds, results, resume, and bad input."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap

import pytest
import trainer_loops as loops
from trainer_loops import read_log

import trainkeep as tk
from trainkeep._internal.engine.run import read_run
from trainkeep._internal.engine.verify import verify_checkpoint
from trainkeep._internal.storage import LocalStorage

SCORED = tk.CheckpointConfig(num_to_keep=2, checkpoint_score_attribute="loss", checkpoint_score_order="min")


def fit(config, run_config, workers=2, fn=loops.train):
    return tk.DataParallelTrainer(fn, train_loop_config=config, scaling_config=tk.ScalingConfig(num_workers=workers),
                                  run_config=run_config).fit()


def test_checkpoints_from_rank_0_metrics_of_rank_0_and_the_result(loop_config, make_run, list_checkpoint_dirs):
    loop_config["losses"] = {"0": 3.0, "1": 1.0, "2": 2.0}
    result = fit(loop_config, make_run(checkpoint_config=SCORED))

    # retention kept the best two by min loss; the run holds nothing else
    assert list_checkpoint_dirs(result.path) == ["checkpoint_000001", "checkpoint_000002"]
    for name in ("checkpoint_000001", "checkpoint_000002"):
        files = sorted(os.listdir(os.path.join(result.path, name)))
        assert files == [".trainkeep_manifest.json", "shard_0.txt", "state.json"]  # rank 0's files only
        assert verify_checkpoint(LocalStorage(), result.path, name) == []
    assert result.metrics == {"epoch": 2, "rank": 0, "loss": 2.0, "attempt": 0}
    assert result.checkpoint == tk.Checkpoint(os.path.join(result.path, "checkpoint_000002"))
    assert [(os.path.basename(c.path), m["loss"]) for c, m in result.best_checkpoints] == [
        ("checkpoint_000002", 2.0), ("checkpoint_000001", 1.0)]
    assert result.return_value == {"rank": 0, "epochs": 3}
    assert result.path == os.path.join(make_run().storage_path, "run")
    assert "file" in result.filesystem.protocol
    frame = result.metrics_dataframe
    assert frame["round"].tolist() == [0, 1, 2] and frame["rank"].tolist() == [0, 0, 0]
    # SYNC: right after report() returns, every rank (rank 1 supplied no files) sees the round's checkpoint
    for rank in (0, 1):
        seen = [line.split("latest=")[1] for line in read_log(loop_config["log"]) if f"reported rank={rank}" in line]
        assert seen == ["checkpoint_000000", "checkpoint_000001", "checkpoint_000002"]


def test_every_rank_s_files_land_in_one_checkpoint_directory(loop_config, make_run, list_checkpoint_dirs):
    loop_config.update(ckpt_ranks=[0, 1, 2], epochs=2)
    result = fit(loop_config, make_run(), workers=3)

    assert list_checkpoint_dirs(result.path) == ["checkpoint_000000", "checkpoint_000001"]
    manifest = json.loads(open(os.path.join(result.checkpoint.path, ".trainkeep_manifest.json")).read())
    assert [f["path"] for f in manifest["files"]] == ["shard_0.txt", "shard_1.txt", "shard_2.txt", "state.json"]
    assert open(os.path.join(result.checkpoint.path, "shard_2.txt")).read() == "rank 2 epoch 1"
    assert verify_checkpoint(LocalStorage(), result.path, "checkpoint_000001") == []


def test_context_describes_each_worker_and_the_run(loop_config, make_run):
    fit(loop_config, make_run(checkpoint_config=tk.CheckpointConfig(num_to_keep=3)), fn=loops.probe_context)
    facts = sorted(json.loads(line) for line in read_log(loop_config["log"]))
    run_path = os.path.join(make_run().storage_path, "run")
    assert facts == [[rank, rank, 2, 2, 0, "run", run_path, os.path.join(run_path, "x"), 3] for rank in (0, 1)]


def test_a_second_fit_resumes_from_the_latest_checkpoint(loop_config, make_run, caplog):
    fit(loop_config, make_run(checkpoint_config=SCORED))
    loop_config["epochs"] = 5
    with caplog.at_level(logging.INFO, logger="trainkeep"):
        result = fit(loop_config, make_run(checkpoint_config=SCORED))

    starts = [line for line in read_log(loop_config["log"]) if line.startswith("start rank=0")]
    assert starts == ["start rank=0 epoch=0 from=None", "start rank=0 epoch=3 from=checkpoint_000002"]
    assert [row["round"] for row in result.history] == [0, 1, 2, 3, 4]
    assert [row["metrics"]["epoch"] for row in result.history] == [0, 1, 2, 3, 4]
    assert os.path.basename(result.checkpoint.path) == "checkpoint_000004"
    resume_lines = [r for r in caplog.records if "resuming" in r.getMessage()]
    assert len(resume_lines) == 1 and "checkpoint_000002" in resume_lines[0].getMessage()


def test_an_unnamed_run_gets_a_fresh_name_under_the_default_storage_path(loop_config, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    loop_config["epochs"] = 1
    first = fit(loop_config, tk.RunConfig())
    second = fit(loop_config, tk.RunConfig())

    root = str(tmp_path / "home" / "trainkeep_results")
    assert os.path.dirname(first.path) == root and os.path.dirname(second.path) == root
    assert first.path != second.path
    assert os.path.basename(first.path).startswith("trainkeep_run-")
    starts = [line for line in read_log(loop_config["log"]) if line.startswith("start rank=0")]
    assert starts == ["start rank=0 epoch=0 from=None"] * 2  # the second run did not resume the first


def test_closures_and_lambdas_from_main_run_without_a_main_guard(tmp_path):
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent("""
        import sys
        import trainkeep as tk

        print("TOP LEVEL RAN", flush=True)
        scale = 3

        def make_loop(offset):
            def loop(config):
                tk.report({"x": config["v"] * scale + offset})
                return tk.get_context().get_world_rank() + 100
            return loop

        run = tk.RunConfig(name="closure", storage_path=sys.argv[1])
        result = tk.DataParallelTrainer(make_loop(1), train_loop_config={"v": 2},
                                        scaling_config=tk.ScalingConfig(num_workers=2), run_config=run).fit()
        print("CLOSURE", result.metrics, result.return_value)
        run = tk.RunConfig(name="lambda", storage_path=sys.argv[1])
        result = tk.DataParallelTrainer(lambda: tk.report({"y": scale}), run_config=run).fit()
        print("LAMBDA", result.metrics)
    """))
    out = subprocess.run([sys.executable, str(script), str(tmp_path / "runs")], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("TOP LEVEL RAN") == 1  # the workers never re-ran the script
    assert "CLOSURE {'x': 7} 100" in out.stdout
    assert "LAMBDA {'y': 3}" in out.stdout


@pytest.mark.parametrize(("bad", "error", "words"), [
    ({"metrics": {"loss": "high"}, "checkpoint": True}, TypeError, ["'loss'", "'high'", "real number"]),
    ({"metrics": {"loss": 0.5, "tags": {"a", "b"}}}, TypeError, ["set", "JSON"]),
    ({"checkpoint_dir_name": "../escape", "checkpoint": True}, ValueError, ["'../escape'", ".."]),
    ({"checkpoint_upload_mode": "FAST", "checkpoint": True}, ValueError, ["'FAST'", "SYNC", "NO_UPLOAD"]),
])
def test_a_bad_report_fails_the_run_at_once_and_writes_nothing(bad, error, words, loop_config, make_run,
                                                              list_checkpoint_dirs):
    loop_config["bad"] = bad
    run = make_run(checkpoint_config=SCORED, failure_config=tk.FailureConfig(max_failures=3))
    with pytest.raises(error) as info:
        fit(loop_config, run, fn=loops.bad_report)

    assert isinstance(info.value, tk.TrainingFailedError)
    assert isinstance(info.value.worker_failures[0], error)
    assert all(word in str(info.value) for word in words), str(info.value)
    assert read_log(loop_config["log"]) == ["attempt", "attempt"]  # one attempt per rank: bad input is not retried
    run_path = os.path.join(run.storage_path, "run")
    assert list_checkpoint_dirs(run_path) == []
    state = read_run(LocalStorage(), run_path)
    assert [row["round"] for row in state.history] == [0] and state.index.checkpoints == []
    assert os.listdir(os.path.join(run_path, ".trainkeep")) == ["lock"]  # no intent record left behind


def test_a_file_written_by_two_ranks_keeps_rank_0_s_copy(loop_config, make_run):
    """DESIGN §3: the lowest rank's copy is kept (tests/trainer/test_trainer_rounds.py has the details)."""
    loop_config.update(ckpt_ranks=[0, 1], shard_name="model.pt")
    result = fit(loop_config, make_run())
    with open(os.path.join(result.path, "checkpoint_000002", "model.pt")) as f:
        assert f.read() == "rank 0 epoch 2"


def test_ranks_passing_different_checkpoint_names_fail_the_round(loop_config, make_run, list_checkpoint_dirs):
    loop_config.update(ckpt_ranks=[0, 1], dir_names={"0": "a_{epoch}", "1": "b_{epoch}"})
    with pytest.raises(ValueError, match=r"different checkpoint_dir_name values.*'a_0'.*'b_0'|'b_0'.*'a_0'"):
        fit(loop_config, make_run())
    assert list_checkpoint_dirs(os.path.join(make_run().storage_path, "run")) == []


def test_a_name_that_is_already_committed_is_refused_and_the_old_checkpoint_kept(loop_config, make_run):
    loop_config.update(dir_name="same")
    with pytest.raises(tk.TrainingFailedError) as info:
        fit(loop_config, make_run())
    assert isinstance(info.value.__cause__, tk.CheckpointExistsError)
    run_path = os.path.join(make_run().storage_path, "run")
    assert verify_checkpoint(LocalStorage(), run_path, "same") == []
    assert json.load(open(os.path.join(run_path, "same", "state.json"))) == {"epoch": 0}
