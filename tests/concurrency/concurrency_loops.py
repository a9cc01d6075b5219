"""Training functions and child processes of the concurrency tests, importable by name in worker processes.

Kept light (no pytest, no click): every forked child unpickles its target from here."""

from __future__ import annotations

import json
import os
import random
import sys
import tempfile
import time
from typing import Any

import trainkeep as tk
from trainkeep.errors import RunLockedError


def _checkpoint(root: str, data: bytes) -> tk.Checkpoint:
    d = tempfile.mkdtemp(dir=root)
    with open(os.path.join(d, "model.bin"), "wb") as f:
        f.write(data)
    return tk.Checkpoint.from_directory(d)


def tell(fifo: str, line: str) -> None:
    """Write ``line`` to the parent's FIFO (it holds the read end open)."""
    fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    try:
        os.write(fd, line.encode() + b"\n")
    finally:
        os.close(fd)


def report_then_wait(config: dict[str, Any]) -> None:
    """Report one checkpoint, tell the parent, then wait until killed (a live holder of the run)."""
    tk.report({"epoch": 0}, checkpoint=_checkpoint(config["tmp"], b"first holder"))
    tell(config["fifo"], "holding")
    time.sleep(3600)


def resume_and_report(config: dict[str, Any]) -> None:
    """Log the checkpoint the run resumed from, then report one more checkpoint."""
    start = tk.get_checkpoint()
    with open(config["log"], "a") as f:
        f.write(json.dumps({"from": os.path.basename(start.path) if start else None}) + "\n")
    tk.report({"epoch": 1}, checkpoint=_checkpoint(config["tmp"], b"second writer"))


def write_forever(run: str, scratch: str, stop: Any, commits: Any) -> None:
    """Report checkpoints (and some metrics-only rounds) with retention until ``stop`` is set (a forked child)."""
    config = tk.CheckpointConfig(num_to_keep=2, checkpoint_score_attribute="score", checkpoint_score_order="max")
    with tk.CheckpointManager(run, config) as manager:
        i = 0
        while not stop.is_set():
            metrics = {"i": i, "score": (i * 7) % 5}
            if i % 4 == 3:
                manager.report(metrics)
            else:
                files = {"model.bin": os.urandom(3000), "sub/opt.bin": os.urandom(700)}
                d = tempfile.mkdtemp(dir=scratch)
                for rel, data in files.items():
                    os.makedirs(os.path.dirname(os.path.join(d, rel)), exist_ok=True)
                    with open(os.path.join(d, rel), "wb") as f:
                        f.write(data)
                manager.report(metrics, tk.Checkpoint.from_directory(d))
                with commits.get_lock():
                    commits.value += 1
            i += 1


def append_line(path: str, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def hold(run: str, scratch: str, ready: Any) -> None:
    """Open the run, commit one checkpoint, tell the parent, and hold the run until killed."""
    manager = tk.CheckpointManager(run)
    manager.report({"holder": os.getpid()}, _checkpoint(scratch, b"held"))
    ready.set()
    time.sleep(3600)


def race(run: str, scratch: str, log: str, patience_s: float = 1.0) -> None:
    """Try to open the run (again a few ms after each refusal, for ``patience_s``); a winner commits one
    checkpoint between its logged enter and exit times, then lets go."""
    rng = random.Random(os.getpid())
    deadline = time.monotonic() + patience_s
    while time.monotonic() < deadline:
        try:
            manager = tk.CheckpointManager(run)
        except RunLockedError as refused:
            append_line(log, json.dumps({"refused": os.getpid(), "holder": refused.holder.get("pid")}))
            time.sleep(rng.uniform(0, 0.05))
            continue
        append_line(log, json.dumps({"enter": os.getpid(), "t": time.monotonic_ns()}))
        manager.report({"writer": os.getpid()}, _checkpoint(scratch, str(os.getpid()).encode()))
        append_line(log, json.dumps({"exit": os.getpid(), "t": time.monotonic_ns()}))
        manager.close()
        return


def race_starts(run: str, scratch: str, log: str, racers: int) -> None:
    """Fork ``racers`` children that block on one pipe, release them all at once by closing it, wait for them.

    Exits 1 if any child failed. Run as ``python concurrency_loops.py RUN SCRATCH LOG RACERS``: trainkeep is
    imported once here and shared by every fork.
    """
    gate_r, gate_w = os.pipe()
    children = []
    for _ in range(racers):
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                os.close(gate_w)
                os.read(gate_r, 1)  # returns at EOF: when the parent closes the gate, every child starts
                race(run, scratch, log)
                code = 0
            finally:
                os._exit(code)
        children.append(pid)
    os.close(gate_w)
    failed = [pid for pid in children if os.waitpid(pid, 0)[1] != 0]
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    race_starts(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))
