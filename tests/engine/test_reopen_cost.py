"""Reopening a run reads only the history after the run index's mark (issue 15, target 1), and stays safe.

A run's history grows with every round; opening it, taking its resume checkpoint, ``Result.from_path(...)
.checkpoint`` and ``trainkeep ls`` must not read it. These tests count the bytes read from ``history.jsonl``
through a LocalStorage subclass (the real disk underneath), damage a history line before the mark to show it is
never parsed, and check that a torn tail, rows past the mark, a mark that does not match and an index written
before marks existed are all still handled. No timings: the cost is in benchmarks/bench_scale.py.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import trainkeep as tk
from trainkeep._internal.core.history_rows import history_line
from trainkeep._internal.core.layout import HISTORY_NAME, RUN_INDEX_NAME
from trainkeep._internal.core.manifest import HistoryMark, parse_run_index
from trainkeep._internal.engine.run import read_run
from trainkeep._internal.storage import LocalStorage
from trainkeep.cli import cli
from trainkeep.errors import CorruptRunError

ROUNDS = 3000  # about 200 KiB of history: far more than the window read before the mark
MakeSource = Callable[..., tk.Checkpoint]


class CountingStorage(LocalStorage):
    """The real local disk, counting the bytes read from the run's history file."""

    def __init__(self) -> None:
        super().__init__()
        self.history_bytes_read = 0

    def _is_history(self, path: str) -> bool:
        return os.path.basename(path) == HISTORY_NAME

    def read_bytes(self, path: str) -> bytes:
        data = super().read_bytes(path)
        if self._is_history(path):
            self.history_bytes_read += len(data)
        return data

    def read_range(self, path: str, start: int, end: int) -> bytes:
        data = super().read_range(path, start, end)
        if self._is_history(path):
            self.history_bytes_read += len(data)
        return data


def _index(run_dir: str) -> dict[str, Any]:
    return json.loads(Path(run_dir, RUN_INDEX_NAME).read_bytes())


def _history(run_dir: str) -> bytes:
    return Path(run_dir, HISTORY_NAME).read_bytes()


def _long_run(run_dir: str, make_source: MakeSource, rounds: int = ROUNDS) -> None:
    """Write ``rounds`` metrics-only rounds with a checkpoint in round 10 and in the last round."""
    with tk.CheckpointManager(run_dir, tk.CheckpointConfig(num_to_keep=1)) as manager:
        for i in range(rounds):
            checkpoint = make_source({"step.txt": str(i).encode()}) if i in (10, rounds - 1) else None
            manager.report({"loss": 1.0 / (i + 1), "step": i}, checkpoint)


def _damage_middle_line(run_dir: str) -> None:
    """Overwrite a line in the middle of the history with garbage of the same length (its newline kept)."""
    path = Path(run_dir, HISTORY_NAME)
    lines = path.read_bytes().splitlines(keepends=True)
    middle = len(lines) // 2
    lines[middle] = b"#" * (len(lines[middle]) - 1) + b"\n"
    path.write_bytes(b"".join(lines))


# ------------------------------------------------------------------------------------------------ the cost


def test_reopen_and_resume_read_only_a_window_of_the_history(run_dir: str, make_source: MakeSource) -> None:
    _long_run(run_dir, make_source)
    size = len(_history(run_dir))
    assert _index(run_dir)["history_mark"] == {"bytes": size, "round": ROUNDS}
    storage = CountingStorage()
    with tk.CheckpointManager(run_dir, tk.CheckpointConfig(num_to_keep=1), storage=storage) as manager:
        assert manager.next_round == ROUNDS
        resume = manager.resume_checkpoint()
        assert resume is not None and resume.path.endswith(f"checkpoint_{ROUNDS - 1:06d}")
        read_to_open = storage.history_bytes_read
        assert len(manager.history) == ROUNDS  # the history itself still reads every row
    assert 0 < read_to_open <= 20 * 1024 < size // 8, (read_to_open, size)


def test_readers_read_only_a_window_of_the_history(run_dir: str, make_source: MakeSource) -> None:
    _long_run(run_dir, make_source)
    storage = CountingStorage()
    state = read_run(storage, run_dir)
    assert [c.name for c in state.index.checkpoints] == [f"checkpoint_{ROUNDS - 1:06d}"]
    assert state.last_report is not None and state.last_report["round"] == ROUNDS - 1
    assert storage.history_bytes_read <= 20 * 1024
    assert len(state.history) == ROUNDS  # read on first use


def test_a_damaged_line_before_the_mark_is_never_parsed(run_dir: str, make_source: MakeSource) -> None:
    """Were the whole history parsed, the damaged line would end it: the last report would be an old one."""
    _long_run(run_dir, make_source)
    _damage_middle_line(run_dir)
    result = tk.Result.from_path(run_dir)
    assert result.checkpoint is not None and result.checkpoint.path.endswith(f"checkpoint_{ROUNDS - 1:06d}")
    assert result.metrics == {"loss": 1.0 / ROUNDS, "step": ROUNDS - 1}
    listed = CliRunner().invoke(cli, ["ls", run_dir, "--json"])
    assert listed.exit_code == 0, listed.output
    assert [row["round"] for row in json.loads(listed.output)] == [ROUNDS - 1]
    before = _history(run_dir)
    with tk.CheckpointManager(run_dir, tk.CheckpointConfig(num_to_keep=1)) as manager:
        assert manager.next_round == ROUNDS
        manager.report({"loss": 0.0, "step": ROUNDS})
    assert _history(run_dir).startswith(before)  # opening truncated nothing


# ------------------------------------------------------------------------------------------------ still safe


def test_a_torn_tail_and_rows_past_the_mark_are_repaired(run_dir: str, make_source: MakeSource) -> None:
    """As a writer that died would leave it: rows appended after the last index write, then a torn line."""
    _long_run(run_dir, make_source, 50)
    marked = len(_history(run_dir))
    with open(os.path.join(run_dir, HISTORY_NAME), "ab") as f:
        f.write(history_line(50, 1.0, {"loss": 0.5}, None) + history_line(51, 2.0, {"loss": 0.25}, None))
        f.write(b'{"round":52,"time":3.0,"metr')
    grown = len(_history(run_dir))
    with tk.CheckpointManager(run_dir, tk.CheckpointConfig(num_to_keep=1)) as manager:
        assert manager.next_round == 52
        assert len(_history(run_dir)) == grown - len(b'{"round":52,"time":3.0,"metr')
        assert [row["round"] for row in manager.history] == list(range(52))
    assert _index(run_dir)["history_mark"]["bytes"] > marked


def test_a_checkpoint_committed_after_the_mark_gets_its_row(run_dir: str, make_source: MakeSource) -> None:
    """A crash between the manifest and the history row: the checkpoint is past the mark, its row is added."""
    with tk.CheckpointManager(run_dir) as manager:
        for i in range(20):
            manager.report({"i": i})
        old_index, old_history = _index(run_dir), _history(run_dir)
        manager.report({"i": 20}, make_source())
    Path(run_dir, RUN_INDEX_NAME).write_text(json.dumps(old_index))
    Path(run_dir, HISTORY_NAME).write_bytes(old_history)
    with tk.CheckpointManager(run_dir) as manager:
        assert [c.path.rsplit("/", 1)[-1] for c, _ in manager.checkpoints] == ["checkpoint_000020"]
        assert [(row["round"], row["checkpoint"]) for row in manager.history][-2:] == [
            (19, None), (20, "checkpoint_000020")]
        assert manager.next_round == 21


@pytest.mark.parametrize("damage", ["shorter", "mid-line", "garbage before the mark"])
def test_a_mark_that_does_not_match_reads_the_whole_history(run_dir: str, make_source: MakeSource,
                                                            damage: str) -> None:
    """A mark the history does not bear out is ignored: nothing valid is truncated, the rounds continue."""
    _long_run(run_dir, make_source, 100)
    index, history = _index(run_dir), _history(run_dir)
    if damage == "shorter":  # the history lost its end (e.g. restored from an older copy)
        keep = history.rindex(b"\n", 0, len(history) - 1) + 1
        Path(run_dir, HISTORY_NAME).write_bytes(history[:keep])
        expected_next = 100  # the index still knows round 99
    elif damage == "mid-line":
        index["history_mark"]["bytes"] -= 7
        expected_next = 100
    else:  # a line ends at the mark, but the window before it holds garbage: the mark is not trusted
        lines = history.splitlines(keepends=True)
        lines[-2] = b"{" + b"x" * (len(lines[-2]) - 2) + b"\n"
        Path(run_dir, HISTORY_NAME).write_bytes(b"".join(lines))
        expected_next = 100
    Path(run_dir, RUN_INDEX_NAME).write_text(json.dumps(index))
    before = _history(run_dir)
    with tk.CheckpointManager(run_dir, tk.CheckpointConfig(num_to_keep=1)) as manager:
        assert manager.next_round == expected_next
        assert manager.resume_checkpoint() is not None
    after = _history(run_dir)
    if damage == "mid-line":
        assert after == before  # every line was whole: nothing truncated
    assert _index(run_dir)["history_mark"]["bytes"] == len(after)


def test_an_index_without_a_mark_opens_and_gets_one(run_dir: str, make_source: MakeSource) -> None:
    """An index written before trainkeep kept marks: the whole history is read once, the next write marks it."""
    _long_run(run_dir, make_source, 200)
    index = _index(run_dir)
    del index["history_mark"]
    Path(run_dir, RUN_INDEX_NAME).write_text(json.dumps(index, indent=1))
    storage = CountingStorage()
    state = read_run(storage, run_dir)
    assert not state.problems and state.next_round == 200
    assert storage.history_bytes_read == len(_history(run_dir))
    with tk.CheckpointManager(run_dir, tk.CheckpointConfig(num_to_keep=1)) as manager:
        assert manager.next_round == 200
    assert _index(run_dir)["history_mark"] == {"bytes": len(_history(run_dir)), "round": 200}


def test_a_crash_after_many_unmarked_rounds_reopens(run_dir: str) -> None:
    """Metrics-only rounds with no checkpoint and no close: the writer's own marks bound what a reopen reads."""
    manager = tk.CheckpointManager(run_dir)
    for i in range(40_000):
        manager.report({"i": i})
    manager._lock.release()  # as if the process died: no close, no final flush
    storage = CountingStorage()
    state = read_run(storage, run_dir)
    assert state.next_round == 40_000
    assert storage.history_bytes_read <= 2 * 1024 * 1024, storage.history_bytes_read


# ------------------------------------------------------------------------------------------------ the index field


def _index_bytes(mark: Any) -> bytes:
    document = {
        "schema": "trainkeep.run", "version": 1, "trainkeep_version": "x", "status": "running", "created": 1.0,
        "updated": 1.0, "next_round": 3, "checkpoint_config": {}, "checkpoints": [], "retiring": [],
        "history_mark": mark}
    return json.dumps(document).encode()


def test_the_index_parser_reads_and_checks_the_mark() -> None:
    assert parse_run_index(_index_bytes({"bytes": 10, "round": 3}), "i").history_mark == HistoryMark(10, 3)
    for bad, field in [([1], "history_mark"), ({"bytes": -1, "round": 0}, "bytes"), ({"bytes": 1}, "round"),
                       ({"bytes": 1, "round": 0, "rows": 2}, "rows"), ({"bytes": True, "round": 0}, "bytes")]:
        with pytest.raises(CorruptRunError, match=field):
            parse_run_index(_index_bytes(bad), "i")


def test_a_bad_mark_rebuilds_the_index_and_the_run_opens(run_dir: str, make_source: MakeSource) -> None:
    _long_run(run_dir, make_source, 30)
    index = _index(run_dir)
    index["history_mark"] = {"bytes": "many", "round": 30}
    Path(run_dir, RUN_INDEX_NAME).write_text(json.dumps(index))
    with tk.CheckpointManager(run_dir, tk.CheckpointConfig(num_to_keep=1)) as manager:
        assert manager.next_round == 30
        assert [c.path.rsplit("/", 1)[-1] for c, _ in manager.checkpoints] == ["checkpoint_000029"]
    assert _index(run_dir)["history_mark"]["round"] == 30


# ------------------------------------------------------------------------------------------------ the DataFrame

FRAME_CASES: dict[str, list[dict[str, Any]]] = {
    "plain": [{"loss": 1.0 / (i + 1), "step": i} for i in range(50)],
    "nested": [{"a": {"b": i, "c": float(i)}, "x": i} for i in range(20)],
    "a key from round 5": [{"loss": 1.0} if i < 5 else {"loss": 2.0, "val": 3.0} for i in range(10)],
    "a nested key from round 5": [{"a": {"b": 1}, "z": 1} if i < 5 else {"a": {"b": 1, "c": 2}, "z": 1}
                                  for i in range(10)],
    "nan and inf": [{"loss": float("nan") if i % 2 else float("inf"), "n": -float("inf")} for i in range(6)],
    "strings and booleans": [{"phase": "train", "flag": i % 2 == 0, "loss": 1.0} for i in range(5)],
    "ints then floats": [{"v": i if i % 2 else i + 0.5} for i in range(6)],
    "every third round": [{"loss": 1.0, **({"val": 2.0} if i % 3 == 0 else {})} for i in range(9)],
    # the row-by-row reader handles these (the columnar one declines them)
    "a string sometimes": [{"note": "x"} if i == 2 else {"loss": 1.0} for i in range(4)],
    "a list": [{"hist": [1, 2, i]} for i in range(3)],
    "an empty dict": [{"empty": {}, "loss": 1.0} for i in range(3)],
    "a nested dict sometimes": [{"a": {"b": 1}} if i % 2 else {"c": 1} for i in range(4)],
    "a name clash across rounds": [{"a/b": 1}, {"a": {"b": 2}}],
    "a metric named round": [{"round": 7, "loss": 1.0} for _ in range(3)],
}


@pytest.mark.parametrize("case", sorted(FRAME_CASES))
def test_metrics_dataframe_is_the_same_by_either_reader(case: str, run_dir: str, make_source: MakeSource) -> None:
    pd = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    from trainkeep._internal.engine.history import read_history_frame

    with tk.CheckpointManager(run_dir, tk.CheckpointConfig(num_to_keep=1)) as manager:
        for i, metrics in enumerate(FRAME_CASES[case]):
            manager.report(metrics, make_source() if i == 2 else None)
        manager.report({"torn": 1})
    with open(os.path.join(run_dir, HISTORY_NAME), "ab") as f:
        f.write(b'{"round":99,"time":1.0,"checkpoint":null,"metr')  # a torn last line: not a row for either
    result = tk.Result.from_path(run_dir)
    fast = read_history_frame(LocalStorage(), run_dir)
    rows = tk.Result(None, None, run_dir, history=list(result.history)).metrics_dataframe  # row by row
    if fast is not None:
        pd.testing.assert_frame_equal(fast, rows)
    pd.testing.assert_frame_equal(result.metrics_dataframe, rows)
    assert len(rows) == len(FRAME_CASES[case]) + 1


def test_metrics_dataframe_reads_a_history_with_config_changes(run_dir: str) -> None:
    pytest.importorskip("pyarrow")
    from trainkeep._internal.engine.history import read_history_frame

    for keep in (None, 3, 2):
        with tk.CheckpointManager(run_dir, tk.CheckpointConfig(num_to_keep=keep)) as manager:
            for _ in range(3):
                manager.report({"loss": 1.0})
    frame = read_history_frame(LocalStorage(), run_dir)
    assert frame is not None and frame["round"].tolist() == list(range(9))
    assert "kind" not in frame.columns
