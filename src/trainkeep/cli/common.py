"""What every ``trainkeep`` command shares: exit codes, opening a run read-only, and output formatting.

Nothing here writes to storage except :func:`probe_status`, which takes a free run lock and releases it at once.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import re
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from trainkeep._internal.core.config import CheckpointConfig
from trainkeep._internal.core.layout import INTERNAL_DIR, LOCK_NAME, RUN_INDEX_NAME
from trainkeep._internal.core.manifest import parse_run_index
from trainkeep._internal.core.metrics import MISSING, flatten, lookup, score_value
from trainkeep._internal.core.retention import Record
from trainkeep._internal.engine.corruption import records_of
from trainkeep._internal.engine.run import RunState, read_run
from trainkeep._internal.storage import LocalStorage, Storage, resolve
from trainkeep.errors import ConfigError, ConfigTypeError, CorruptRunError, RunLockedError

# Exit codes (documented in docs/cli.md).
EXIT_OK = 0
EXIT_FAILED = 1  # verify found problems; nothing matched (no runs, no checkpoint, no such metric)
EXIT_USAGE = 2  # a bad option or value (click's own usage errors use 2 as well)
EXIT_LOCKED = 3  # a live trainer or CheckpointManager holds the run
EXIT_NOT_FOUND = 4  # no run, no checkpoint of that name
EXIT_STORAGE = 5  # storage failed, or a file of ours is corrupt or from a newer trainkeep
EXIT_MISSING_EXTRA = 6  # an optional dependency (matplotlib for plot) is not installed
EXIT_INTERNAL = 70  # a bug in trainkeep; --debug shows the traceback

MAX_METRICS_SHOWN = 4


@dataclass
class RunView:
    """A run opened read-only: where it is, what is on storage, and the config it was written with."""

    storage: Storage
    path: str
    state: RunState
    config: CheckpointConfig

    @property
    def name(self) -> str:
        return self.path.rstrip("/").rsplit("/", 1)[-1]

    @property
    def url(self) -> str:
        return display_path(self.storage, self.path)

    def records(self) -> list[Record]:
        """Return the committed checkpoints as retention records (with their corrupt marks), in round order."""
        return records_of(self.state.index)

    def checkpoint_url(self, name: str) -> str:
        return display_path(self.storage, self.storage.join(self.path, name))


def open_run(url: str) -> RunView:
    """Read the run at ``url`` (a local path or an fsspec URL) without writing anything.

    Raises:
        RunNotFoundError when there is no run; IncompatibleRunError for a newer format; CorruptRunError when
        the stored checkpoint config is invalid; StorageError when storage fails.
    """
    storage, path = resolve(url)
    state = read_run(storage, path)
    return RunView(storage, path, state, stored_config(state, path))


def stored_config(state: RunState, path: str) -> CheckpointConfig:
    """Return the CheckpointConfig recorded in the run index (raises CorruptRunError when it is invalid)."""
    try:
        return CheckpointConfig.from_dict(state.index.checkpoint_config)
    except (ConfigError, ConfigTypeError) as exc:
        raise CorruptRunError(f"{path}/{RUN_INDEX_NAME}", f"invalid checkpoint_config: {exc}") from None


def display_path(storage: Storage, path: str) -> str:
    """Return ``path`` as a user types it: a plain path on the local disk, a URL elsewhere."""
    if isinstance(storage, LocalStorage):
        return path
    return str(storage.fs.unstrip_protocol(path))


def probe_status(storage: Storage, run_path: str, status: str) -> str:
    """Return the run's status, with "running" turned into "interrupted" when no live process holds its lock.

    The lock is taken the way the manager takes it and released at once when it is free; if this process dies
    in between, the kernel (flock) or the lease's staleness check frees it again.
    """
    if status != "running":
        return status
    lock_path = storage.join(run_path, INTERNAL_DIR, LOCK_NAME)
    if not storage.exists(lock_path):
        return "interrupted"
    try:
        lock = storage.lock(lock_path)
    except RunLockedError:
        return "running"
    lock.release()
    return "interrupted"


def indexed_names(storage: Storage, run_path: str) -> dict[str, int]:
    """Return the checkpoints the stored run index lists (name -> round), before any reconciliation."""
    path = storage.join(run_path, RUN_INDEX_NAME)
    try:
        index = parse_run_index(storage.read_bytes(path), path)
    except (OSError, ValueError, RuntimeError):
        return {}
    return {c.name: c.round for c in index.checkpoints}


# --------------------------------------------------------------------------------------------- values


def score_of(metrics: Mapping[str, Any], attribute: str | None) -> Any:
    """Return the raw value of the score attribute in ``metrics`` (None when there is none)."""
    if attribute is None:
        return None
    value = lookup(metrics, attribute)
    return None if value is MISSING else value


def has_score(records: Iterable[Record], attribute: str) -> bool:
    """Return True when at least one record has a finite numeric ``attribute``."""
    return any(score_value(r.metrics, attribute) is not None for r in records)


def metric_names(rows: Iterable[Mapping[str, Any]]) -> list[str]:
    """Return every flattened metric name that occurs in ``rows`` (dicts of metrics), sorted."""
    return sorted({key for metrics in rows for key in flatten(metrics)})


def format_value(value: Any) -> str:
    """Return a short text form of a metric value for tables."""
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (int, str)):
        return str(value)
    return json.dumps(jsonable(value), separators=(",", ":"))


def fold_metrics(metrics: Mapping[str, Any], skip: str | None = None, limit: int = MAX_METRICS_SHOWN) -> str:
    """Return ``k=v`` pairs of the flattened metrics, the first ``limit`` of them and a count of the rest."""
    flat = [(k, v) for k, v in flatten(metrics).items() if k != skip]
    shown = " ".join(f"{k}={format_value(v)}" for k, v in flat[:limit])
    hidden = len(flat) - limit
    return f"{shown} … +{hidden} more" if hidden > 0 else shown


def plural(count: int, noun: str) -> str:
    """Return ``"1 checkpoint"``, ``"2 checkpoints"``."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def human_size(size: int | None) -> str:
    """Return a byte count in binary units (``512 B``, ``1.5 KiB``, ``3.2 GiB``)."""
    if size is None:
        return ""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{size} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def local_time(timestamp: float | None) -> str:
    """Return a timestamp in the local short form used in tables."""
    if timestamp is None:
        return ""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp))


def iso_time(timestamp: float | None) -> str | None:
    """Return a timestamp as ISO 8601 in UTC, to the microsecond, for JSON."""
    if timestamp is None:
        return None
    return _dt.datetime.fromtimestamp(timestamp, _dt.timezone.utc).isoformat()


def jsonable(value: Any) -> Any:
    """Return ``value`` with non-finite floats as the strings "NaN", "Infinity", "-Infinity" (strict JSON)."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


def emit_json(document: Any) -> None:
    """Print ``document`` as strict JSON on stdout."""
    click.echo(json.dumps(jsonable(document), indent=2, allow_nan=False))


# C0 and C1 controls, DEL, the Unicode line separators and lone surrogates (undecodable bytes of a file name)
_UNPRINTABLE_RE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
_SHORT_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_char(match: re.Match[str]) -> str:
    char = match.group()
    code = ord(char)
    if char in _SHORT_ESCAPES:
        return _SHORT_ESCAPES[char]
    if 0xDC80 <= code <= 0xDCFF:  # os.fsdecode's stand-in for the undecodable byte code - 0xDC00
        return f"\\x{code - 0xDC00:02x}"
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def escape_text(text: str) -> str:
    """Return ``text`` with every character that would break a line of output written as an escape.

    A newline becomes ``\\n``, a tab ``\\t``, other controls ``\\xNN`` / ``\\uNNNN``, and an undecodable
    byte of a file name ``\\xNN``; everything else, backslashes included, is left as it is.
    """
    return _UNPRINTABLE_RE.sub(_escape_char, text)


class _EscapingTable(Table):
    """A rich Table whose text cells and headers are escaped, so that one row is always one line per cell."""

    def add_column(self, header: Any = "", *args: Any, **kwargs: Any) -> None:
        super().add_column(escape_text(header) if isinstance(header, str) else header, *args, **kwargs)

    def add_row(self, *renderables: Any, **kwargs: Any) -> None:
        super().add_row(*(escape_text(r) if isinstance(r, str) else r for r in renderables), **kwargs)


def table(*headers: str) -> Table:
    """Return a borderless table with the house look: no edge padding, headers as given, cells escaped."""
    return _EscapingTable(*headers, box=None, pad_edge=False, header_style="bold")


def render(*items: Any) -> None:
    """Print tables (rich renderables) and plain lines on stdout, without trailing spaces.

    The width is the terminal's, or 120 columns (or $COLUMNS) when stdout is not a terminal. No markup or
    emoji codes are interpreted: names and metric values are shown exactly as they are ("[x]", ":smile:"),
    except control characters, which are escaped (:func:`escape_text`) so that no name can break a row.
    """
    out = sys.stdout
    width = None
    if not out.isatty():
        columns = os.environ.get("COLUMNS", "")
        width = int(columns) if columns.isdigit() and int(columns) > 0 else 120
    console = Console(file=out, width=width, highlight=False, markup=False, emoji=False)
    for item in items:
        if isinstance(item, str):
            click.echo(escape_text(item))
            continue
        with console.capture() as captured:
            console.print(item)
        for line in captured.get().splitlines():
            click.echo(line.rstrip())
