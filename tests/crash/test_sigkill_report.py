"""SIGKILL a real CheckpointManager loop at random points, reopen the run after each kill, check DESIGN §5.

The child (sigkill_child.py) reports multi-file checkpoints with retention (num_to_keep=2 by "score") and logs,
fsynced, each checkpoint's checksums before report() and its name after report() returns. After every kill the
parent reopens the run in-process and asserts:

* every checkpoint known committed that retention has no reason to delete is present and verifies, with the
  checksums the child wrote; nothing else is present but committed checkpoints;
* the index lists exactly the directories present, all with valid manifests (no debris, no intent records);
* the history is rounds 0..next_round-1 with exactly the metrics the child reported, and next_round continues.

``SEED=`` replays a run, ``KILLS=`` sets the number of kills (default 50).
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import random
import runpy
import signal
import time
from pathlib import Path
from typing import Any

import trainkeep as tk
from trainkeep._internal.core.layout import INTERNAL_DIR, LOCK_NAME, MANIFEST_NAME, RUN_INDEX_NAME
from trainkeep._internal.engine.verify import verify_checkpoint
from trainkeep._internal.storage import LocalStorage

CHILD = str(Path(__file__).with_name("sigkill_child.py"))
CONFIG = {"num_to_keep": 2, "checkpoint_score_attribute": "score", "checkpoint_score_order": "max"}
MAX_DELAY_S = 0.3
CHILD_LIB = runpy.run_path(CHILD)  # the child's pure helpers: metrics and files are functions of (seed, round)


def _rank(entry: tuple[int, dict[str, Any]]) -> tuple:
    """Better sorts later: a finite score beats a missing/NaN one, then the higher score, then the newer."""
    round_index, metrics = entry
    score = metrics.get("score")
    finite = isinstance(score, int | float) and math.isfinite(score)
    return (finite, score if finite else 0, round_index)


def _must_keep(committed: dict[int, dict[str, Any]]) -> set[int]:
    """Return the rounds retention keeps among every committed checkpoint: the top 2 and the latest."""
    if not committed:
        return set()
    ranked = sorted(committed.items(), key=_rank)
    return {r for r, _ in ranked[-CONFIG["num_to_keep"]:]} | {max(committed)}


def _read_log(path: Path) -> list[dict[str, Any]]:
    if not path.exists():  # the first child was killed before it logged anything
        return []
    events = []
    for line in path.read_bytes().split(b"\n"):
        try:
            events.append(json.loads(line))
        except ValueError:
            break  # a torn last line: the kill hit the log write
    return events


def _spawn(ctx: Any, plan: dict[str, Any]) -> Any:
    child = ctx.Process(target=runpy.run_path, args=(CHILD,), kwargs={"init_globals": {"PLAN": plan},
                                                                    "run_name": "__main__"})
    child.start()
    return child


def _check_after_kill(run_dir: str, seed: int, committed: dict[int, dict[str, Any]],
                      intents: dict[int, dict[str, str]]) -> int:
    """Reopen the run, assert the invariants, add a committed in-flight round to ``committed``; return next_round."""
    storage = LocalStorage()
    index_path = Path(run_dir, RUN_INDEX_NAME)  # as the kill left it, before any repair (absent: killed early)
    index = json.loads(index_path.read_bytes()) if index_path.exists() else {"checkpoints": []}
    for entry in index["checkpoints"]:
        assert Path(run_dir, entry["name"], MANIFEST_NAME).is_file(), f"the index lists {entry['name']}, gone"
    with tk.CheckpointManager(run_dir, tk.CheckpointConfig(**CONFIG)) as manager:
        listed = {int(manager.manifest(Path(c.path).name).round): Path(c.path).name for c, _ in manager.checkpoints}
        dirs = sorted(n for n in os.listdir(run_dir) if Path(run_dir, n).is_dir() and n != INTERNAL_DIR)
        assert sorted(listed.values()) == dirs, "a directory on storage is not a committed checkpoint (debris)"
        assert os.listdir(Path(run_dir, INTERNAL_DIR)) == [LOCK_NAME], "an intent record survived the reopen"
        for round_index, name in listed.items():
            assert round_index in intents, f"{name} was never reported"
            assert verify_checkpoint(storage, run_dir, name) == []
            manifest = manager.manifest(name)
            assert {f.path: f.checksum for f in manifest.files} == intents[round_index]
            committed.setdefault(round_index, manifest.metrics)  # an in-flight round that did commit
        missing = _must_keep(committed) - set(listed)
        assert not missing, f"committed checkpoints of rounds {sorted(missing)} were lost"
        assert set(listed) <= set(committed)
        history = manager.history
        assert [row["round"] for row in history] == list(range(manager.next_round))
        for row in history:
            expected = CHILD_LIB["metrics_for"](seed, row["round"])
            assert json.dumps(row["metrics"], sort_keys=True) == json.dumps(expected, sort_keys=True)
            if row["round"] in committed:
                assert row["checkpoint"] == f"checkpoint_{row['round']:06d}"
        assert manager.next_round >= max(committed, default=-1) + 1
        return manager.next_round


def test_sigkill_during_reports_never_loses_a_committed_checkpoint(tmp_path: Path, seed: int) -> None:
    kills = int(os.environ.get("KILLS", "50"))
    rng = random.Random(seed)
    run_dir, log = str(tmp_path / "run"), tmp_path / "side.log"
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    plan = {"run_dir": run_dir, "log": str(log), "scratch": str(scratch), "seed": seed, "config": CONFIG}
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["trainkeep", "xxhash"])
    committed: dict[int, dict[str, Any]] = {}
    next_round, mid_report = 0, 0
    started = time.monotonic()
    for kill in range(kills):
        child = _spawn(ctx, plan)
        time.sleep(rng.uniform(0, MAX_DELAY_S))  # the random kill point is the point of this test
        os.kill(child.pid, signal.SIGKILL)
        child.join(timeout=60)
        assert child.exitcode == -signal.SIGKILL, f"kill {kill}: the child ended by itself ({child.exitcode})"
        events = _read_log(log)
        opens = [e for e in events if e["event"] == "open"]
        if opens and opens[-1]["pid"] == child.pid:
            assert opens[-1]["next_round"] == next_round, "the reopened run did not continue where it stopped"
        intents = {e["round"]: e["checksums"] for e in events if e["event"] == "intent"}
        for e in events:
            if e["event"] == "committed":
                committed.setdefault(e["round"], CHILD_LIB["metrics_for"](seed, e["round"]))
        mid_report += bool(events) and events[-1]["event"] == "intent"
        next_round = _check_after_kill(run_dir, seed, committed, intents)
    print(f"{kills} kills in {time.monotonic() - started:.1f}s: {len(committed)} checkpoints committed, "
          f"{next_round} rounds, {mid_report} kills inside report()")
    assert len(committed) >= 5, "too few commits to exercise retention; is the machine very slow?"
