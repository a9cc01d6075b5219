"""The body of test_disk_errors.py's real-ENOSPC test. Run as ``python enospc_child.py DISK SOURCES`` as root in
a private mount namespace where DISK is a fresh 4 MiB tmpfs (SOURCES lies elsewhere).

A run on DISK commits a first checkpoint; then, with the disk filled to leave 0, 1, 2, ... pages free, it
reports the next one, until one fits. Each report that does not fit must fail with a StorageError carrying
ENOSPC and the path, leave every earlier checkpoint verifying (retention must not have run) and nothing new
in the run but a whole checkpoint (when the disk filled up after its manifest); after the filler is deleted
the same manager's next report must succeed. Prints one JSON object.
"""

from __future__ import annotations

import errno
import json
import os
import sys
from typing import Any

import trainkeep as tk
from trainkeep._internal.engine.verify import verify_checkpoint
from trainkeep._internal.storage import LocalStorage
from trainkeep.errors import StorageError
from trainkeep.testing import Expectation, FaultyStorage, check_run

PAGE = 4096
FILES = {"model.bin": b"w" * (40 * 1024), "optim/state.bin": b"s" * (12 * 1024), "meta.json": b"{}\n"}


def write_source(root: str, step: int) -> tk.Checkpoint:
    src = os.path.join(root, f"src_{step}")
    for rel, data in FILES.items():
        os.makedirs(os.path.dirname(os.path.join(src, rel)), exist_ok=True)
        with open(os.path.join(src, rel), "wb") as f:
            f.write(data)
    return tk.Checkpoint.from_directory(src)


def fill(disk: str, leave: int) -> str:
    """Allocate a filler file that leaves about ``leave`` bytes free on ``disk``; return its path."""
    stats = os.statvfs(disk)
    path = os.path.join(disk, "filler")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        size = stats.f_bavail * stats.f_frsize - leave
        if size > 0:
            os.posix_fallocate(fd, 0, size)
    finally:
        os.close(fd)
    return path


def names(manager: tk.CheckpointManager) -> list[str]:
    return [os.path.basename(c.path) for c, _ in manager.checkpoints]


def attempt(manager: tk.CheckpointManager, faulty: FaultyStorage, disk: str, sources: str, free: int,
            step: int) -> dict[str, Any]:
    """Report with ``free`` bytes left on the disk, check what happened, free the disk, report again."""
    run, before, start = manager.path, names(manager), faulty.count
    filler = fill(disk, free)
    outcome: dict[str, Any] = {"free": free, "violations": []}
    bad = outcome["violations"].append
    try:
        manager.report({"step": step}, write_source(sources, step))
        outcome["fit"] = True
    except Exception as exc:
        outcome["fit"], outcome["error"] = False, f"{type(exc).__name__}: {exc}"
        failed = next((op for op in faulty.ops if op.index > start and op.error == "ENOSPC"), None)
        outcome["op"] = f"{failed.name} {os.path.basename(failed.path)}" if failed else "?"
        if not (isinstance(exc, StorageError) and exc.errno == errno.ENOSPC and exc.path and exc.path in str(exc)):
            bad(f"not a StorageError naming ENOSPC and the path: {exc!r}")
        committed = [n for n in names(manager) if n not in before]
        outcome["committed"] = bool(committed)  # an error after the manifest: committed, yet the report failed
        for name in before:  # retention must not have run: every earlier checkpoint is still there
            if verify_checkpoint(LocalStorage(), run, name):
                bad(f"checkpoint {name}, committed before, does not verify: retention or the error broke it")
        for name in committed:
            if verify_checkpoint(LocalStorage(), run, name):
                bad(f"checkpoint {name} is listed as committed but does not verify")
        leftovers = sorted(set(os.listdir(run)) - set(before) - set(committed) - {"trainkeep_run.json",
                                                                                  "history.jsonl", ".trainkeep"})
        if leftovers:
            bad(f"the failed report left {leftovers} in the run")
    os.unlink(filler)
    if not outcome["fit"]:
        try:
            manager.report({"step": step}, write_source(sources, step + 1000))
        except Exception as exc:
            bad(f"with space again, the next report failed: {exc!r}")
    return outcome


def main(disk: str, sources: str) -> None:
    run = os.path.join(disk, "run")
    config = tk.CheckpointConfig(num_to_keep=1)
    faulty = FaultyStorage(LocalStorage())  # records what failed; the full disk does the failing
    manager = tk.CheckpointManager(run, config, storage=faulty)
    manager.report({"step": 0}, write_source(sources, 0))
    outcomes = []
    for step, pages in enumerate(range(0, 64), start=1):
        outcomes.append(attempt(manager, faulty, disk, sources, pages * PAGE, step))
        if outcomes[-1]["fit"]:
            break
    manager.close()
    final = check_run(LocalStorage(), run, Expectation(config, rows=None, new=tuple(os.listdir(run))))
    print(json.dumps({"outcomes": outcomes, "final": final.violations}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
