"""Progress of a transfer: a progress bar on a real terminal (a pty) for large transfers only, and one INFO
line per committed checkpoint with its size, time and rate."""

from __future__ import annotations

import logging
import os
import pty
import select
import subprocess
import sys

import trainkeep as tk
from trainkeep._internal.storage.progress import PROGRESS_THRESHOLD, wants_bar

CHILD = r"""
import os, sys, tempfile
import trainkeep._internal.storage.progress as progress
progress.PROGRESS_THRESHOLD = int(sys.argv[1])
from trainkeep._internal.storage import LocalStorage
src, dest = tempfile.mkdtemp(), tempfile.mkdtemp()
with open(os.path.join(src, "m.bin"), "wb") as f:
    f.write(os.urandom(4 << 20))
storage = LocalStorage()
print("showed", storage.put_tree(src, dest, ["m.bin"]).stats.showed_progress)
"""


def run_on_a_terminal(threshold: int) -> tuple[str, bytes]:
    """Run CHILD with its stderr on a pseudo-terminal; return its stdout and what the terminal received."""
    master, slave = pty.openpty()
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(threshold)], stderr=slave,
                             stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    os.close(slave)
    screen = b""
    while select.select([master], [], [], 60)[0]:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        screen += chunk
    os.close(master)
    out, _ = child.communicate(timeout=60)
    return out, screen


def test_a_large_transfer_draws_a_bar_on_a_terminal():
    out, screen = run_on_a_terminal(threshold=1)
    assert out.strip() == "showed True"
    assert b"4.0/4.0 MiB" in screen and "━".encode() in screen


def test_a_small_transfer_draws_nothing():
    out, screen = run_on_a_terminal(threshold=PROGRESS_THRESHOLD)
    assert out.strip() == "showed False" and b"MiB" not in screen


def test_no_bar_without_a_terminal():
    class Pipe:
        def isatty(self) -> bool:
            return False

    class Terminal:
        def isatty(self) -> bool:
            return True

    assert wants_bar(PROGRESS_THRESHOLD, Terminal())
    assert not wants_bar(PROGRESS_THRESHOLD - 1, Terminal())
    assert not wants_bar(10 * PROGRESS_THRESHOLD, Pipe())


def test_each_commit_logs_size_time_and_rate(backend, make_files, caplog):
    source = tk.Checkpoint.from_directory(make_files({"a.bin": os.urandom(3 << 20), "b.bin": b"b"}))
    with caplog.at_level(logging.INFO, logger="trainkeep._internal.engine.manager"), backend.manager() as manager:
        manager.report({"step": 0}, checkpoint=source)
        manager.report({"step": 1})
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("committed checkpoint")]
    assert len(lines) == 1
    assert "checkpoint_000000" in lines[0] and "3.0 MiB in 2 files" in lines[0] and "iB/s)" in lines[0]
