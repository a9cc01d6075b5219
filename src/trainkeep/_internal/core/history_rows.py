"""The rows of ``history.jsonl``: encoding a round or a config change as a line, and parsing the lines back.

A line that is not whole or does not parse ends the valid lines (a crash while appending), so a torn tail never
turns into a row. Nothing here is ever unpickled.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from trainkeep._internal.core.manifest import _is_int, _is_time
from trainkeep._internal.core.validation_state import VALIDATED, VALIDATION_KIND

CONFIG_CHANGE_KIND = "config_change"  # the "kind" of a history row that records a change of CheckpointConfig


def history_line(round_index: int, time_: float, metrics: dict[str, Any], checkpoint: str | None) -> bytes:
    """Encode one completed round as a line of ``history.jsonl``."""
    return (json.dumps({"round": round_index, "time": time_, "checkpoint": checkpoint, "metrics": metrics},
                       separators=(",", ":"), allow_nan=True) + "\n").encode()


def config_change_line(round_index: int, time_: float, old: dict[str, Any], new: dict[str, Any]) -> bytes:
    """Encode a change of the run's CheckpointConfig, made before round ``round_index``, as a history line.

    The row has a ``kind`` (``"config_change"``) that this trainkeep's history readers leave out of the rounds.
    It also has ``round``/``metrics`` fields, so that an older trainkeep reads it as an empty report of the next
    round (which that round's real row replaces) instead of stopping at it as at a torn line.
    """
    return (json.dumps({"round": round_index, "time": time_, "checkpoint": None, "metrics": {},
                        "kind": CONFIG_CHANGE_KIND, "old_checkpoint_config": old, "new_checkpoint_config": new},
                       separators=(",", ":"), allow_nan=True) + "\n").encode()


def parse_history(raw: bytes, parts: Sequence[bytes] = ()) -> tuple[list[dict[str, Any]], int]:
    """Parse ``history.jsonl`` and the parts of a history kept in parts; return the rows and the byte length of
    the valid prefix of ``raw``.

    A torn last line (a crash while appending) ends the valid prefix; rows are sorted by round, and a round
    that appears twice keeps its last occurrence (``raw`` first, then ``parts`` in log order). Each part is a
    whole object written at once (object stores); a line that does not parse ends that part. Rows of another
    kind (config changes, see :func:`parse_history_events`) are valid lines but not rounds: they are left out,
    except that a successful validation's metrics replace those of its round's row (same round and checkpoint).
    """
    rows: dict[int, dict[str, Any]] = {}
    events: list[dict[str, Any]] = []
    valid = _parse_history_lines(raw, rows, events)
    for part in parts:
        _parse_history_lines(part, rows, events)
    for event in events:
        row = rows.get(event["round"])
        if (event.get("kind") == VALIDATION_KIND and event.get("status") == VALIDATED and row is not None
                and row.get("checkpoint") == event.get("checkpoint")):
            rows[event["round"]] = {**row, "metrics": event["metrics"]}
    return sorted(rows.values(), key=lambda r: r["round"]), valid


def parse_history_events(raw: bytes, parts: Sequence[bytes] = ()) -> list[dict[str, Any]]:
    """Return the history rows that are not rounds (each with a ``kind``, e.g. config changes), in time order."""
    events: list[dict[str, Any]] = []
    for chunk in (raw, *parts):
        _parse_history_lines(chunk, {}, events)
    return sorted(events, key=lambda e: e["time"] if _is_time(e.get("time")) else 0.0)


def parse_history_chunk(raw: bytes) -> tuple[dict[int, dict[str, Any]], list[dict[str, Any]], int]:
    """Parse whole history lines from the start of ``raw``; return the rows by round (the last occurrence of a
    round wins), the rows of another kind, and the byte length of the valid lines (the first line that is not
    whole or does not parse ends them)."""
    rows: dict[int, dict[str, Any]] = {}
    events: list[dict[str, Any]] = []
    valid = _parse_history_lines(raw, rows, events)
    return rows, events, valid


def _parse_history_lines(raw: bytes, rows: dict[int, dict[str, Any]], events: list[dict[str, Any]]) -> int:
    valid = 0
    for line in raw.splitlines(keepends=True):
        if not line.endswith(b"\n"):
            break
        try:
            row = json.loads(line)
        except (ValueError, RecursionError):
            break
        if not (isinstance(row, dict) and _is_int(row.get("round")) and isinstance(row.get("metrics"), dict)):
            break
        if row.get("kind") is None:
            rows[row["round"]] = row
        else:
            events.append(row)
        valid += len(line)
    return valid
