"""The validation state of a committed checkpoint, as stored: merging its metrics, its JSON, its history rows.

Pure functions over plain data (the run index entry keeps the state, see ``manifest.IndexEntry``); the trainer's
side, which runs the validations, is :mod:`trainkeep._internal.trainer.validation`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from trainkeep._internal.core.metrics import flatten, normalize_metrics
from trainkeep.errors import CorruptRunError

VALIDATION_KIND = "validation"  # the "kind" of a history row that records a change of a validation's state
# A checkpoint's validation states, Ray Train's names (trainkeep._internal.trainer.validation.ValidationStatus).
PENDING_VALIDATION, VALIDATED = "PENDING_VALIDATION", "VALIDATED"
VALIDATION_STATUSES = (PENDING_VALIDATION, VALIDATED, "VALIDATION_TIMEOUT", "VALIDATION_FAILED")
_VALIDATION_FIELDS = frozenset({"status", "metrics", "task", "error"})


def merge_validated(reported: dict[str, Any], validated: dict[str, Any]) -> dict[str, Any]:
    """Return ``reported`` with the metrics of a validation merged in; the validation wins on a clash.

    A top-level key the validation returns replaces the reported one whole (as ``dict.update`` does in Ray).
    Beyond that the comparison is by flattened name, so one metric never ends up with two spellings: a reported
    group (``{"val": {"acc": 1, "n": 5}}``) that holds one of the validation's flattened names
    (``{"val/acc": 2}``) is kept flattened, without that name (``{"val/n": 5, "val/acc": 2}``). The result is
    normalised like a report.

    Raises:
        InvalidMetricsError when ``validated`` is not made of plain JSON values (see ``normalize_metrics``).
    """
    clean = normalize_metrics(validated)
    names = set(flatten(clean))
    kept: dict[str, Any] = {}
    for key, value in reported.items():
        if key in clean:
            continue
        flat = flatten({key: value})
        if names.isdisjoint(flat):
            kept[key] = value
        else:
            kept.update((name, item) for name, item in flat.items() if name not in names)
    return normalize_metrics({**kept, **clean})


def merged_metrics(reported: dict[str, Any], validation: dict[str, Any] | None) -> dict[str, Any]:
    """Return a checkpoint's metrics in the validation state ``validation`` (reported ones unless VALIDATED)."""
    if validation is None or validation.get("status") != VALIDATED:
        return reported
    try:
        return merge_validated(reported, validation.get("metrics") or {})
    except (ValueError, TypeError):
        return reported


def parse_validation(entry: str, value: Any, path: str) -> dict[str, Any] | None:
    """Check the optional ``validation`` object of run index entry ``entry`` (see ``manifest.IndexEntry``).

    Raises:
        CorruptRunError naming the entry and what is wrong.
    """
    if value is None:
        return None
    where = f"{entry}: field 'validation'"
    if not isinstance(value, dict):
        raise CorruptRunError(path, f"{where} must be an object, got {value!r}")
    unknown = sorted(str(k) for k in value if k not in _VALIDATION_FIELDS)
    if unknown:
        raise CorruptRunError(path, f"{where}: unknown field {unknown[0]!r} (known: "
                                    f"{', '.join(sorted(_VALIDATION_FIELDS))})")
    if value.get("status") not in VALIDATION_STATUSES:
        raise CorruptRunError(path, f"{where}: 'status' must be one of {VALIDATION_STATUSES}, got "
                                    f"{value.get('status')!r}")
    if not isinstance(value.get("metrics", {}), dict) or not isinstance(value.get("task"), (dict, type(None))):
        raise CorruptRunError(path, f"{where}: 'metrics' must be an object and 'task' an object or null")
    if not isinstance(value.get("error", ""), str):
        raise CorruptRunError(path, f"{where}: 'error' must be a string")
    return value


def validation_line(round_index: int, time_: float, name: str, metrics: dict[str, Any],
                    validation: dict[str, Any]) -> bytes:
    """Encode a change of checkpoint ``name``'s validation state as a history line (kind ``"validation"``).

    ``metrics`` are the round's metrics in that state (merged when VALIDATED, as reported otherwise): this
    trainkeep's readers put them in place of the round's row's metrics when the status is VALIDATED; a trainkeep
    older than row kinds takes the row for a repeat of the round, which has the same effect. The rows also
    restore the validation states of an index rebuilt from the manifests (:func:`restore_validations`).
    """
    row: dict[str, Any] = {"round": round_index, "time": time_, "checkpoint": name, "metrics": metrics,
                           "kind": VALIDATION_KIND, "status": validation["status"]}
    for key in ("task", "error"):
        if validation.get(key) is not None:
            row[key] = validation[key]
    return (json.dumps(row, separators=(",", ":"), allow_nan=True) + "\n").encode()


def restore_validations(index: Any, events: Sequence[dict[str, Any]]) -> bool:
    """Give the entries of ``index`` that have no validation state the last one the history recorded for them.

    ``index`` is a ``manifest.RunIndex`` (typed loosely: manifest.py imports this module, not the reverse).

    ``events`` are the history's non-round rows in time order (:func:`parse_history_events`). Used when the index
    was rebuilt from the manifests, which know nothing of validations: without it a validated checkpoint would
    rank by its reported metrics again, and a pending one would lose its protection. Returns True on a change.
    """
    last: dict[tuple[int, str], dict[str, Any]] = {}
    for event in events:
        if event.get("kind") == VALIDATION_KIND and event.get("status") in VALIDATION_STATUSES:
            last[(event["round"], str(event.get("checkpoint")))] = event
    changed = False
    for i, entry in enumerate(index.checkpoints):
        found = last.get((entry.round, entry.name))
        if entry.validation is not None or found is None:
            continue
        event = found
        state: dict[str, Any] = {"status": event["status"], "task": event.get("task"),
                                 "metrics": event["metrics"] if event["status"] == VALIDATED else {}}
        if isinstance(event.get("error"), str):
            state["error"] = event["error"]
        if not isinstance(state["task"], dict):
            state["task"] = None
        try:
            index.checkpoints[i] = entry.with_validation(state)
        except (TypeError, ValueError):  # metrics that cannot be merged: the entry stays as its manifest says
            continue
        changed = True
    return changed
