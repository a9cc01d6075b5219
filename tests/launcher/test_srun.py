"""trainkeep.init() under srun's variables: plain processes with SLURM_PROCID / SLURM_NTASKS / ... set."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from launcher_helpers import read_log, srun_like

import trainkeep as tk

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("mode", ["SYNC", "ASYNC"])
def test_srun_tasks_run_and_name_the_run_after_the_job(tmp_path: Path, out: Path, mode: str) -> None:
    storage = tmp_path / "storage"
    procs = srun_like({"storage": str(storage), "epochs": 2, "out": str(out), "mode": mode})
    assert [p.returncode for p in procs] == [0, 0], "\n".join(p.stdout for p in procs)
    run = storage / "srun_4242"  # no RunConfig(name=...): named after SLURM_JOB_ID, so a requeue resumes it
    assert [h["metrics"]["epoch"] for h in tk.Result.from_path(str(run)).history] == [0, 1]
    for epoch in range(2):
        names = sorted(os.listdir(run / f"checkpoint_{epoch:06d}"))
        assert [n for n in names if n.startswith("shard_")] == ["shard_0.json", "shard_1.json"]
    for rank in (0, 1):
        joined = next(e for e in read_log(out, rank) if e["event"] == "joined")
        assert (joined["world_rank"], joined["local_rank"], joined["world_size"], joined["node_rank"]) == (
            rank, rank, 2, 0)
        assert joined["local_world_size"] == 2  # counted by rank 0: srun without --ntasks-per-node does not say


def test_a_rank_that_raises_fails_every_rank_and_a_rerun_resumes(tmp_path: Path, out: Path) -> None:
    storage = tmp_path / "storage"
    args = {"storage": str(storage), "name": "run", "epochs": 3, "out": str(out)}
    procs = srun_like({**args, "fail": [1, 1]})
    assert procs[1].returncode == 1 and "RuntimeError: rank 1 fails at epoch 1" in procs[1].stdout
    assert procs[0].returncode != 0
    assert "the run failed (srun job): rank 1 raised RuntimeError: rank 1 fails at epoch 1" in procs[0].stdout, (
        procs[0].stdout)
    run = storage / "run"
    assert sorted(n for n in os.listdir(run) if n.startswith("checkpoint_")) == ["checkpoint_000000"]
    # the next job resumes from the latest committed checkpoint
    procs = srun_like(args)
    assert [p.returncode for p in procs] == [0, 0], "\n".join(p.stdout for p in procs)
    starts = [e for e in read_log(out, 1) if e["event"] == "start"]
    assert starts[-1]["checkpoint"] == str(run / "checkpoint_000000") and starts[-1]["first"] == 1
    assert [h["metrics"]["epoch"] for h in tk.Result.from_path(str(run)).history] == [0, 1, 2]


def test_rank_0_killed_ends_the_others_and_the_next_rank_0_takes_the_lock_over(tmp_path: Path, out: Path) -> None:
    storage = tmp_path / "storage"
    args = {"storage": str(storage), "name": "run", "epochs": 3, "out": str(out)}
    procs = srun_like({**args, "kill": [0, 1]})
    assert procs[0].returncode == -9
    assert procs[1].returncode == 1
    assert "the run failed on rank 0" in procs[1].stdout and "rank 0 closed the connection" in procs[1].stdout
    procs = srun_like(args)
    assert [p.returncode for p in procs] == [0, 0], "\n".join(p.stdout for p in procs)
    result = tk.Result.from_path(str(tmp_path / "storage" / "run"))
    assert [h["metrics"]["epoch"] for h in result.history] == [0, 1, 2]
    assert json.loads((tmp_path / "storage" / "run" / "checkpoint_000002" / "shard_1.json").read_text())["epoch"] == 2


def test_uneven_reports_fail_every_rank_naming_them(tmp_path: Path, out: Path) -> None:
    storage = tmp_path / "storage"
    procs = srun_like({"storage": str(storage), "name": "run", "epochs": 3, "out": str(out),
                       "epochs_by_rank": {"1": 1}})
    assert [p.returncode for p in procs] == [1, 1], "\n".join(p.stdout for p in procs)
    message = "rank 1 returned after 1 report() call(s) in this attempt, but rank(s) [0] reported more"
    assert message in procs[0].stdout, procs[0].stdout
    assert "the run failed on rank 0" in procs[1].stdout and message in procs[1].stdout
    assert [h["metrics"]["epoch"] for h in tk.Result.from_path(str(storage / "run")).history] == [0]
