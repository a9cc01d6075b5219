"""Reopening a run with a different CheckpointConfig (issue 14, item 10): a warning that names the old and the new
settings comes before any deletion, and the change is recorded in the run's history as a row of its own kind,
which the round readers (``metrics_dataframe``, ``trainkeep ls --all``) leave out.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest

import trainkeep as tk
from trainkeep._internal.engine.run import read_config_changes, read_history
from trainkeep._internal.storage import LocalStorage

KEEP_ALL = tk.CheckpointConfig()
KEEP_ONE = tk.CheckpointConfig(num_to_keep=1)


def _checkpoints(run: Path) -> list[str]:
    return sorted(p.name for p in run.iterdir() if p.name.startswith("checkpoint_"))


def _write_run(run: Path, source: Path) -> None:
    source.mkdir()
    (source / "model.bin").write_bytes(b"weights")
    with tk.CheckpointManager(run, KEEP_ALL) as manager:
        for epoch in range(4):
            manager.report({"epoch": epoch}, tk.Checkpoint.from_directory(source))
        manager.report({"epoch": 4})  # a metrics-only round


class _SeesTheDisk(logging.Handler):
    """Record, for each warning, which checkpoints were on disk at the moment it was logged."""

    def __init__(self, run: Path) -> None:
        super().__init__(logging.WARNING)
        self.run, self.seen = run, []

    def emit(self, record: logging.LogRecord) -> None:
        self.seen.append((record.getMessage(), _checkpoints(self.run)))


def test_a_changed_config_is_warned_about_before_any_deletion_and_recorded(tmp_path: Path) -> None:
    run = tmp_path / "run"
    _write_run(run, tmp_path / "src")
    every = _checkpoints(run)
    handler = _SeesTheDisk(run)
    logging.getLogger("trainkeep").addHandler(handler)
    try:
        with tk.CheckpointManager(run, KEEP_ONE):
            pass  # retention under the new policy runs at close()
    finally:
        logging.getLogger("trainkeep").removeHandler(handler)
    assert _checkpoints(run) == ["checkpoint_000003"]
    changes = [(message, seen) for message, seen in handler.seen if "reopened with" in message]
    assert len(changes) == 1
    message, seen = changes[0]
    assert seen == every, "the warning came after a deletion"
    assert "num_to_keep=None" in message and "num_to_keep=1" in message
    assert "checkpoint_000000, checkpoint_000001, checkpoint_000002" in message

    recorded = read_config_changes(LocalStorage(), str(run))
    assert [(c["old_checkpoint_config"]["num_to_keep"], c["new_checkpoint_config"]["num_to_keep"], c["round"])
            for c in recorded] == [(None, 1, 5)]
    assert [row["round"] for row in read_history(LocalStorage(), str(run))] == [0, 1, 2, 3, 4]
    frame = tk.Result.from_path(run).metrics_dataframe
    assert list(frame["round"]) == [0, 1, 2, 3, 4] and list(frame["epoch"]) == [0, 1, 2, 3, 4]


def test_reopening_with_the_same_config_records_nothing(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    run = tmp_path / "run"
    _write_run(run, tmp_path / "src")
    caplog.clear()  # the commits' INFO lines of writing the run
    with caplog.at_level(logging.WARNING, logger="trainkeep"), tk.CheckpointManager(run, KEEP_ALL):
        pass
    assert not caplog.records and read_config_changes(LocalStorage(), str(run)) == []


def test_a_history_without_config_rows_and_an_older_reader_of_one_with_them(tmp_path: Path) -> None:
    """Old runs (no config rows) read as before; a config row carries round and metrics, so a reader that knows
    no kinds takes it for an empty report of the next round, which that round's real row replaces."""
    run = tmp_path / "run"
    _write_run(run, tmp_path / "src")
    assert read_config_changes(LocalStorage(), str(run)) == []
    with tk.CheckpointManager(run, KEEP_ONE) as manager:
        manager.report({"epoch": 5})
    rows = [json.loads(line) for line in (run / "history.jsonl").read_bytes().splitlines()]
    naive = {row["round"]: row for row in rows if isinstance(row.get("round"), int) and "metrics" in row}
    assert [naive[r]["metrics"].get("epoch") for r in sorted(naive)] == [0, 1, 2, 3, 4, 5]
    assert os.path.exists(run / "checkpoint_000003")
