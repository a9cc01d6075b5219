"""The lines of ``history.jsonl``: a torn or bad line ends the valid prefix; rows of another kind are not rounds."""

from __future__ import annotations

import math

import pytest

import trainkeep as tk
from trainkeep._internal.core.history_rows import (
    CONFIG_CHANGE_KIND,
    config_change_line,
    history_line,
    parse_history,
    parse_history_events,
)


def test_history_keeps_the_valid_prefix_and_the_last_copy_of_a_round() -> None:
    lines = [history_line(0, 1.0, {"loss": 3.0}, None), history_line(1, 2.0, {"loss": math.inf}, "checkpoint_000001"),
             history_line(0, 3.0, {"loss": 2.0}, None)]
    raw = b"".join(lines)
    rows, valid = parse_history(raw + b'{"round": 2, "time"')
    assert valid == len(raw)
    assert [r["round"] for r in rows] == [0, 1]
    assert rows[0]["metrics"] == {"loss": 2.0}
    assert rows[1]["checkpoint"] == "checkpoint_000001" and rows[1]["metrics"]["loss"] == math.inf


@pytest.mark.parametrize("tail", [b"garbage\n", b'{"round": "x", "metrics": {}}\n', b'{"round": 2}\n', b"[]\n",
                                  b'{"round": 2, "metrics": {}}'])
def test_history_stops_at_the_first_bad_line(tail: bytes) -> None:
    good = history_line(0, 1.0, {}, None)
    rows, valid = parse_history(good + tail + history_line(3, 1.0, {}, None))
    assert valid == len(good) and [r["round"] for r in rows] == [0]


def test_config_change_rows_are_valid_lines_but_not_rounds() -> None:
    old, new = tk.CheckpointConfig().to_dict(), tk.CheckpointConfig(num_to_keep=1).to_dict()
    raw = (history_line(0, 1.0, {"loss": 3.0}, None) + config_change_line(1, 2.0, old, new)
           + history_line(1, 3.0, {"loss": 2.0}, "checkpoint_000001"))
    rows, valid = parse_history(raw)
    assert valid == len(raw) and [(r["round"], r["metrics"]) for r in rows] == [(0, {"loss": 3.0}),
                                                                                (1, {"loss": 2.0})]
    events = parse_history_events(raw)
    assert [(e["kind"], e["round"], e["old_checkpoint_config"], e["new_checkpoint_config"]) for e in events] == [
        (CONFIG_CHANGE_KIND, 1, old, new)]
