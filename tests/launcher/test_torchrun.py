"""trainkeep.init() in scripts started by a real torchrun (2 processes on 127.0.0.1)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import threading
import time
from pathlib import Path

import pytest
from launcher_helpers import free_port_pair, listeners, read_log, torchrun

import trainkeep as tk

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torchrun comes with torch")]


def _shards(run: Path, name: str) -> dict[str, dict]:
    return {f: json.loads((run / name / f).read_text()) for f in sorted(os.listdir(run / name))
            if f.startswith("shard_")}


def test_run_reports_and_checkpoints_with_both_ranks_in_each_round(tmp_path: Path, out: Path) -> None:
    storage = tmp_path / "storage"
    proc = torchrun({"storage": str(storage), "name": "run", "epochs": 3, "out": str(out)})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    run = storage / "run"
    result = tk.Result.from_path(str(run))
    # every round is in the history once, with rank 0's metrics
    assert [h["metrics"]["epoch"] for h in result.history] == [0, 1, 2]
    assert all(h["metrics"]["rank"] == 0 for h in result.history)
    # each checkpoint holds the files of both ranks, from the same epoch
    for epoch in range(3):
        shards = _shards(run, f"checkpoint_{epoch:06d}")
        assert shards == {"shard_0.json": {"epoch": epoch, "rank": 0}, "shard_1.json": {"epoch": epoch, "rank": 1}}
    # both ranks agree on every round: after each SYNC report, get_checkpoint() is the checkpoint just committed
    seen = {rank: [(e["epoch"], e["latest"]) for e in read_log(out, rank) if e["event"] == "reported"]
            for rank in (0, 1)}
    assert seen[0] == seen[1] == [(k, str(run / f"checkpoint_{k:06d}")) for k in range(3)]
    # the context has the launcher's ranks
    joined = {rank: next(e for e in read_log(out, rank) if e["event"] == "joined") for rank in (0, 1)}
    for rank in (0, 1):
        assert joined[rank]["world_rank"] == joined[rank]["local_rank"] == rank
        assert (joined[rank]["world_size"], joined[rank]["local_world_size"], joined[rank]["node_rank"]) == (2, 2, 0)
        assert joined[rank]["experiment"] == "run"
        assert read_log(out, rank)[-1]["event"] == "done"
    assert result.checkpoint is not None and result.checkpoint.path.endswith("checkpoint_000002")


def test_validations_run_on_rank_0_and_their_scores_rank_the_checkpoints(tmp_path: Path, out: Path) -> None:
    storage = tmp_path / "storage"
    proc = torchrun({"storage": str(storage), "name": "run", "epochs": 4, "out": str(out), "validate": True})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = tk.Result.from_path(str(storage / "run"))
    # validated scores 9, 10, 9, 8: the best is epoch 1 (kept with the latest), though nothing reported "val"
    [(best, metrics)] = result.best_checkpoints
    assert best.path.endswith("checkpoint_000001")
    assert metrics == {"epoch": 1, "rank": 0, "val": 10, "val_shards": 2}
    assert sorted(n for n in os.listdir(storage / "run") if n.startswith("checkpoint_")) == [
        "checkpoint_000001", "checkpoint_000003"]


def test_a_rank_killed_resumes_from_the_latest_checkpoint_after_an_elastic_restart(tmp_path: Path, out: Path) -> None:
    storage = tmp_path / "storage"
    proc = torchrun({"storage": str(storage), "name": "run", "epochs": 4, "out": str(out), "kill": [1, 2]},
                    "--max-restarts", "1")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    run = storage / "run"
    # attempt 0: rounds 0 and 1 committed, then rank 1 was SIGKILLed before round 2
    # attempt 1: both ranks started from checkpoint_000001 and ran rounds 2 and 3
    for rank in (0, 1):
        starts = [(e["attempt"], e["checkpoint"], e["first"]) for e in read_log(out, rank) if e["event"] == "start"]
        assert starts == [(0, None, 0), (1, str(run / "checkpoint_000001"), 2)]
        assert read_log(out, rank)[-1] == {"attempt": 1, "event": "done"}
    # nothing lost, nothing twice: every epoch once in the history, every checkpoint with both ranks' shards
    result = tk.Result.from_path(str(run))
    assert [h["metrics"]["epoch"] for h in result.history] == [0, 1, 2, 3]
    for epoch in range(4):
        assert set(_shards(run, f"checkpoint_{epoch:06d}")) == {"shard_0.json", "shard_1.json"}
    assert sorted(n for n in os.listdir(run) if n.startswith("checkpoint_")) == [
        f"checkpoint_{k:06d}" for k in range(4)]


def test_a_rank_that_never_joins_fails_the_run_naming_it_and_rank_0_listens_on_loopback_only(
        tmp_path: Path, out: Path) -> None:
    storage = tmp_path / "storage"
    args = {"storage": str(storage), "name": "run", "epochs": 2, "out": str(out), "skip_init": 1,
            "skip_sleep": 8, "timeout": 4}
    started = time.monotonic()
    proc = _run_watching_listeners(args)
    assert proc.returncode != 0
    output = proc.stdout + proc.stderr
    assert "rank(s) [1] of 2 did not join the run" in output, output
    assert "RunConfig(report_timeout_s=...)" in output
    assert time.monotonic() - started < 60
    assert read_log(out, 1) == [{"attempt": 0, "event": "skipped init"}]
    assert not [e for e in read_log(out, 0) if e["event"] == "joined"]


def _run_watching_listeners(args: dict) -> subprocess.CompletedProcess[str]:
    """Run torchrun while this test watches which addresses listen on trainkeep's port; assert loopback only."""
    port = free_port_pair()
    seen: set[str] = set()
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            seen.update(listeners(port + 1))
            time.sleep(0.05)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        proc = torchrun(args, port=port)
    finally:
        done.set()
        watcher.join()
    assert seen == {"127.0.0.1"}, f"trainkeep's port {port + 1} was listened on at {seen or 'no address'}"
    return proc
