"""A committed file that cannot be read (issue 14, item 7): resume falls back to the next older checkpoint with a
warning, ``verify`` checks every checkpoint and reports each unreadable file.

The files are made unreadable for real: ``chmod 000``. Root reads through that, so when the tests run as root the
reads are done with the effective uid and gid dropped to nobody (65534) by ``os.seteuid`` around them, and the
run lies in a directory that nobody may enter and write (the run lock and the index are written on resume).
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import corruption_helpers as h
import pytest

import trainkeep as tk
from trainkeep._internal.engine.run import read_run
from trainkeep._internal.engine.verify import UNREADABLE, verify_checkpoint
from trainkeep._internal.storage import LocalStorage

NOBODY = 65534
OLDEST = "checkpoint_000000"


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pristine")
    (root / "scratch").mkdir()
    h.write_run(str(root / "run"), str(root / "scratch"))
    return root / "run"


@pytest.fixture
def run(pristine: Path) -> Iterator[Path]:
    """A copy of the pristine run that nobody (uid 65534) may read and write, outside pytest's private tmp."""
    base = Path(tempfile.mkdtemp(prefix="trainkeep-unreadable-"))
    os.chmod(base, 0o777)
    dest = base / "run"
    shutil.copytree(pristine, dest, symlinks=True)
    for path in [dest, *dest.rglob("*")]:
        os.chmod(path, 0o777 if path.is_dir() else 0o666)
    yield dest
    shutil.rmtree(base, ignore_errors=True)


@contextmanager
def unprivileged() -> Iterator[None]:
    """Run the body with permission checks that apply (root ignores ``chmod 000``): euid/egid nobody."""
    if os.geteuid() != 0:
        yield
        return
    os.setegid(NOBODY)
    os.seteuid(NOBODY)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)


def _lock_out(path: Path) -> None:
    os.chmod(path, 0)
    with unprivileged(), pytest.raises(PermissionError):  # the damage is real for the code under test
        path.read_bytes()


def test_resume_falls_back_past_an_unreadable_file_with_a_warning(run: Path,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    _lock_out(run / h.NEWEST / "model.bin")
    with unprivileged(), caplog.at_level(logging.WARNING, logger="trainkeep"):
        with tk.CheckpointManager(run, h.KEEP_ALL) as manager:
            resumed = manager.resume_checkpoint()
    assert resumed is not None and os.path.basename(resumed.path) == h.PREVIOUS
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(h.NEWEST in w and "model.bin" in w and "Permission denied" in w for w in warnings), warnings
    # a read error is not damage: the checkpoint is not condemned, and it is back once it can be read
    assert all(c.corrupt is None for c in read_run(LocalStorage(), str(run)).index.checkpoints)
    os.chmod(run / h.NEWEST / "model.bin", 0o666)
    with unprivileged(), tk.CheckpointManager(run, h.KEEP_ALL) as manager:
        resumed = manager.resume_checkpoint()
    assert resumed is not None and os.path.basename(resumed.path) == h.NEWEST


def test_resume_with_nothing_readable_raises_a_typed_error_instead_of_starting_over(run: Path) -> None:
    for name in (OLDEST, h.PREVIOUS, h.NEWEST):
        _lock_out(run / name / "sub" / "opt.bin")
    with unprivileged(), tk.CheckpointManager(run, h.KEEP_ALL) as manager:
        with pytest.raises(tk.errors.StorageError) as raised:
            manager.resume_checkpoint()
    assert "opt.bin" in str(raised.value) and isinstance(raised.value, OSError)


def test_verify_checks_every_checkpoint_and_reports_each_unreadable_file(run: Path) -> None:
    _lock_out(run / h.NEWEST / "model.bin")
    _lock_out(run / h.PREVIOUS / "sub" / "opt.bin")
    _lock_out(run / h.PREVIOUS / "model.bin")
    os.chmod(run / OLDEST / "sub", stat.S_IWUSR)  # a directory that cannot be listed
    with unprivileged():
        problems = {name: verify_checkpoint(LocalStorage(), str(run), name) for name in (OLDEST, h.PREVIOUS,
                                                                                        h.NEWEST)}
        code, rows, _ = h.verify_cli(str(run))
    assert {name: sorted(p.path for p in found) for name, found in problems.items()} == {
        OLDEST: [".", "sub/opt.bin"], h.PREVIOUS: ["model.bin", "sub/opt.bin"], h.NEWEST: ["model.bin"]}
    assert all(p.kind == UNREADABLE for found in problems.values() for p in found)
    assert code == 1 and [row["checkpoint"] for row in rows] == [OLDEST, h.PREVIOUS, h.NEWEST]
    assert [len(row["problems"]) for row in rows] == [2, 2, 1]
    assert all(p["kind"] == UNREADABLE and "Permission denied" in p["reason"] for row in rows
               for p in row["problems"])
    assert not any(row["marked_corrupt"] for row in rows)
