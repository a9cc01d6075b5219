"""The training loop that test_sigkill_report.py kills. Run with ``runpy.run_path(..., init_globals={"PLAN": ...})``.

It opens the run (resuming it), then reports forever: mostly multi-file checkpoints, sometimes a metrics-only
round. Everything it reports is a pure function of (seed, round), so the parent can recompute it. Around each
checkpoint report it appends to an fsynced side log: an "intent" line with the files' checksums before
``report()``, a "committed" line after it returns.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
from typing import Any

import xxhash

import trainkeep as tk

FILE_SIZES = {"model.bin": 200_000, "optim/state.bin": 90_000, "optim/extra/rng.bin": 1_000, "meta.json": 0}


def metrics_for(seed: int, round_index: int) -> dict[str, Any]:
    """Return the metrics of ``round_index``: a score that goes up and down, sometimes NaN or missing."""
    rng = random.Random(seed * 1_000_003 + round_index)
    roll = rng.random()
    metrics: dict[str, Any] = {"round": round_index, "train": {"loss": round(rng.uniform(0, 5), 3)}}
    if roll < 0.08:
        metrics["score"] = math.nan
    elif roll > 0.92:
        pass  # the score is missing from this report
    else:
        metrics["score"] = rng.randrange(20)  # a small range: ties happen
    return metrics


def is_checkpoint_round(seed: int, round_index: int) -> bool:
    """Return False for the metrics-only rounds (about one in five)."""
    return random.Random(seed * 7 + round_index).random() > 0.2


def files_for(seed: int, round_index: int) -> dict[str, bytes]:
    """Return the checkpoint files of ``round_index`` (a few hundred KB, some in subdirectories)."""
    rng = random.Random(seed * 1_000_033 + round_index)
    files = {rel: rng.randbytes(size) for rel, size in FILE_SIZES.items() if size}
    files["meta.json"] = json.dumps({"round": round_index}).encode()
    return files


def checksums(files: dict[str, bytes]) -> dict[str, str]:
    return {rel: xxhash.xxh3_128(data).hexdigest() for rel, data in files.items()}


def main(plan: dict[str, Any]) -> None:
    log = os.open(plan["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def write_log(record: dict[str, Any]) -> None:
        os.write(log, (json.dumps(record) + "\n").encode())
        os.fsync(log)

    seed = plan["seed"]
    manager = tk.CheckpointManager(plan["run_dir"], tk.CheckpointConfig(**plan["config"]))
    write_log({"event": "open", "next_round": manager.next_round, "pid": os.getpid()})
    while True:
        round_index = manager.next_round
        metrics = metrics_for(seed, round_index)
        if not is_checkpoint_round(seed, round_index):
            manager.report(metrics)
            continue
        files = files_for(seed, round_index)
        src = os.path.join(plan["scratch"], f"src_{os.getpid()}_{round_index}")
        for rel, data in files.items():
            os.makedirs(os.path.dirname(os.path.join(src, rel)), exist_ok=True)
            with open(os.path.join(src, rel), "wb") as f:
                f.write(data)
        write_log({"event": "intent", "round": round_index, "checksums": checksums(files)})
        committed = manager.report(metrics, tk.Checkpoint.from_directory(src))
        assert committed is not None
        write_log({"event": "committed", "round": round_index, "name": os.path.basename(committed.path)})
        shutil.rmtree(src)


if __name__ == "__main__":
    main(globals()["PLAN"])
