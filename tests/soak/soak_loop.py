"""The training loop that the SIGKILL soak (test_soak_sigkill.py) kills, and the pure functions both sides share.

Everything the loop reports is a function of (seed, epoch), so the parent can recompute it: the metrics (a score
with ties, sometimes NaN or missing), which epochs checkpoint (about three in four; the others are metrics-only
rounds), and every byte of every file (rank 0: a state file, a model and an optimizer file; rank 1: its shard).

Rank 0 appends to an fsynced side log (one JSON line per event):

* ``start``: at the start of every attempt, what ``get_checkpoint()`` returned (``from``) and the newest committed
  checkpoint it sees on storage itself (``seen``). Nothing can commit between the two: a round needs rank 0's
  report, and the previous attempt's workers are dead before a new one starts.
* ``committed``: after each SYNC ``report()`` with a checkpoint returned, the name ``get_checkpoint()`` gives,
  the epoch, the metrics and the checksums of every file of the round.

It also writes ``start`` to a FIFO, so the parent can time its next kill from the start of an attempt.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import tempfile
from typing import Any

import xxhash

import trainkeep as tk
from trainkeep._internal.core.layout import MANIFEST_NAME
from trainkeep._internal.core.manifest import parse_manifest
from trainkeep.errors import CorruptRunError, IncompatibleRunError

CONFIG: dict[str, Any] = {"num_to_keep": 2, "checkpoint_score_attribute": "score", "checkpoint_score_order": "max"}
FILE_SIZES = {0: {"model.bin": 3_000, "optim/state.bin": 1_500}, 1: {"shard_1.bin": 2_000}}


def metrics_for(seed: int, epoch: int) -> dict[str, Any]:
    """Return rank 0's metrics of ``epoch``: a small-range score (ties happen), sometimes NaN or missing."""
    rng = random.Random(f"metrics {seed} {epoch}")
    metrics: dict[str, Any] = {"epoch": epoch, "train": {"loss": round(rng.uniform(0, 3), 3)}}
    roll = rng.random()
    if roll < 0.05:
        metrics["score"] = math.nan
    elif roll < 0.10:
        pass  # no score in this report
    else:
        metrics["score"] = rng.randrange(10)
    return metrics


def has_checkpoint(seed: int, epoch: int) -> bool:
    """Return False for the metrics-only epochs (about one in four)."""
    return random.Random(f"ckpt {seed} {epoch}").random() >= 0.25


def files_for(seed: int, epoch: int, rank: int) -> dict[str, bytes]:
    """Return the files that ``rank`` puts into the checkpoint of ``epoch``."""
    rng = random.Random(f"files {seed} {epoch} {rank}")
    files = {rel: rng.randbytes(size) for rel, size in FILE_SIZES[rank].items()}
    if rank == 0:
        files["state.json"] = json.dumps({"epoch": epoch}).encode()
    return files


def checksums_for(seed: int, epoch: int) -> dict[str, str]:
    """Return the xxh3_128 checksum of every file of the checkpoint of ``epoch``, all ranks together."""
    files = {**files_for(seed, epoch, 0), **files_for(seed, epoch, 1)}
    return {rel: xxhash.xxh3_128(data).hexdigest() for rel, data in files.items()}


def newest_committed(run_path: str) -> str | None:
    """Return the name of the checkpoint with the highest round among the directories with a valid manifest."""
    best: tuple[int, str] | None = None
    for name in os.listdir(run_path) if os.path.isdir(run_path) else []:
        path = os.path.join(run_path, name, MANIFEST_NAME)
        try:
            with open(path, "rb") as f:
                manifest = parse_manifest(f.read(), path)
        except (OSError, CorruptRunError, IncompatibleRunError):
            continue
        if best is None or manifest.round > best[0]:
            best = (manifest.round, name)
    return best[1] if best else None


def _log(config: dict[str, Any], event: dict[str, Any]) -> None:
    fd = os.open(config["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(event) + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def _signal(config: dict[str, Any], line: str) -> None:
    """Tell the parent through its FIFO (it keeps the read end open; a full pipe only drops the signal)."""
    try:
        fd = os.open(config["fifo"], os.O_WRONLY | os.O_NONBLOCK)
    except OSError:
        return
    try:
        os.write(fd, line.encode() + b"\n")
    except BlockingIOError:
        pass
    finally:
        os.close(fd)


def _start_epoch(checkpoint: tk.Checkpoint | None) -> int:
    if checkpoint is None:
        return 0
    with checkpoint.as_directory() as d, open(os.path.join(d, "state.json")) as f:
        return int(json.load(f)["epoch"]) + 1


def _name(checkpoint: tk.Checkpoint | None) -> str | None:
    return os.path.basename(checkpoint.path.rstrip("/")) if checkpoint else None


def train(config: dict[str, Any]) -> None:
    """Resume from ``get_checkpoint()`` and report forever (the parent ends the run with SIGKILL)."""
    context = tk.get_context()
    rank, seed = context.get_world_rank(), config["seed"]
    start = tk.get_checkpoint()
    epoch = _start_epoch(start)
    if rank == 0:
        seen = newest_committed(context.get_storage().experiment_fs_path)
        _log(config, {"event": "start", "pid": os.getpid(), "driver": os.getppid(), "from": _name(start),
                      "seen": seen, "epoch": epoch})
        _signal(config, f"start {os.getpid()}")
    while True:
        checkpoint, src = None, None
        if has_checkpoint(seed, epoch):
            src = tempfile.mkdtemp(prefix=f"r{rank}_e{epoch}_", dir=config["scratch"])
            for rel, data in files_for(seed, epoch, rank).items():
                os.makedirs(os.path.dirname(os.path.join(src, rel)), exist_ok=True)
                with open(os.path.join(src, rel), "wb") as f:
                    f.write(data)
            checkpoint = tk.Checkpoint.from_directory(src)
        metrics = metrics_for(seed, epoch)
        tk.report(metrics, checkpoint=checkpoint)
        if src is not None:
            shutil.rmtree(src)
        if rank == 0 and checkpoint is not None:
            _log(config, {"event": "committed", "name": _name(tk.get_checkpoint()), "epoch": epoch,
                          "metrics": metrics, "checksums": checksums_for(seed, epoch)})
        epoch += 1
