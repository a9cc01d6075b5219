"""The run history on every backend: every completed round exactly once, in order, across reopens; and on
object stores a per-round cost that does not grow with the run (history kept in parts, merged)."""

from __future__ import annotations

import json
import math
import random

import pytest

import trainkeep as tk
from trainkeep._internal.core.history_rows import parse_history
from trainkeep._internal.storage import FsspecStorage
from trainkeep._internal.storage.parts import PartLog, parse_span


def test_every_round_once_in_order_across_reopens(backend, make_files, seed):
    rng = random.Random(seed)
    source = tk.Checkpoint.from_directory(make_files({"m.bin": b"m"}))
    expected = []
    for _session in range(3):
        with backend.manager() as manager:
            for _ in range(rng.randint(2, 5)):
                step = len(expected)
                with_checkpoint = rng.random() < 0.4
                name = f"ck_{step}" if with_checkpoint else None
                manager.report({"step": step}, checkpoint=source if with_checkpoint else None,
                               checkpoint_dir_name=name)
                expected.append((step, name))
    history = backend.result().history
    assert [(row["round"], row["checkpoint"]) for row in history] == expected
    assert [row["metrics"]["step"] for row in history] == list(range(len(expected)))


def test_metrics_only_rounds_are_durable_at_close(backend):
    with backend.manager() as manager:
        for step in range(5):
            manager.report({"step": step})
    assert [row["round"] for row in backend.result().history] == [0, 1, 2, 3, 4]


@pytest.fixture
def small_fanout(monkeypatch):
    monkeypatch.setattr(PartLog, "fanout", 4)


def test_log_in_parts_writes_each_row_a_bounded_number_of_times(backend, small_fanout):
    """n flushes of one row each: every row is rewritten at most log4(n) + 1 times, and at most
    (fanout - 1) parts per level remain, so neither writing nor reading grows linearly with the run."""
    if backend.name == "local":
        pytest.skip("the local disk appends to history.jsonl in place")
    n = 100 if backend.name == "memory" else 37  # moto answers a request in ~10 ms: keep it short there
    storage, root = backend.storage()
    written: list[int] = []
    put_object = storage.put_object
    storage.put_object = lambda path, data: (written.append(len(data)), put_object(path, data))[1]
    log = f"{root}/run/history.jsonl"
    rows = [json.dumps({"round": i, "metrics": {}}).encode() + b"\n" for i in range(n)]
    for row in rows:
        storage.append(log, row, durable=True)
    levels = math.ceil(math.log(n, 4))
    assert sum(written) <= (levels + 1) * sum(len(r) for r in rows)
    parts = [parse_span(name) for name in storage.listdir(log + ".parts")]
    digits = [(n // 4**k) % 4 for k in range(levels + 1)]  # one part per unit of each base-4 digit of n
    assert all(parts) and len(parts) == sum(digits) <= 3 * levels
    base, chunks = FsspecStorage(backend.fs).read_log(log)
    assert base + b"".join(chunks) == b"".join(rows)


def test_an_interrupted_merge_loses_nothing_and_is_cleaned_up(backend, small_fanout):
    if backend.name == "local":
        pytest.skip("the local disk appends to history.jsonl in place")
    storage, root = backend.storage()
    log = f"{root}/run/history.jsonl"
    rows = [json.dumps({"round": i, "time": 0, "checkpoint": None, "metrics": {"i": i}}).encode() + b"\n"
            for i in range(5)]
    for i, row in enumerate(rows[:4]):  # the four sources of a merge...
        storage.write_atomic(f"{log}.parts/{i:010d}-{i:010d}.jsonl", row)
    storage.write_atomic(f"{log}.parts/{0:010d}-{3:010d}.jsonl", b"".join(rows[:4]))  # ...and its result
    base, parts = storage.read_log(log)
    history, _ = parse_history(base, parts)
    assert [row["round"] for row in history] == [0, 1, 2, 3]
    storage.append(log, rows[4], durable=True)  # the next writer deletes the covered sources
    assert sorted(storage.listdir(f"{log}.parts")) == ["0000000000-0000000003.jsonl", "0000000004-0000000004.jsonl"]
    base, parts = storage.read_log(log)
    assert [row["round"] for row in parse_history(base, parts)[0]] == [0, 1, 2, 3, 4]
