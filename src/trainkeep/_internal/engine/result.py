"""Result: what a run produced, from ``fit()`` or read back from storage with ``Result.from_path``."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, overload

import fsspec

from trainkeep._internal.core.config import CheckpointConfig
from trainkeep._internal.core.metrics import as_float, flatten, lookup
from trainkeep._internal.core.retention import best_checkpoints
from trainkeep._internal.engine.checkpoint import Checkpoint
from trainkeep._internal.engine.corruption import records_of
from trainkeep._internal.engine.history import read_history_frame
from trainkeep._internal.engine.run import RunState, read_run
from trainkeep._internal.storage import resolve
from trainkeep.errors import ConfigError, InvalidMetricsError, MissingDependencyError, NoCheckpointError


@dataclass
class Result:
    """The outcome of a run.

    Attributes:
        metrics: the metrics of the last completed round (rank 0's), or None when nothing was reported.
        checkpoint: the latest committed checkpoint, or None.
        best_checkpoints: the top ``num_to_keep`` checkpoints by the run's score, as (Checkpoint, metrics),
            best last.
        path: the run directory (without the URL scheme; see ``filesystem``).
        filesystem: the fsspec filesystem of ``path``.
        error: the error that ended the run, if any.
        return_value: what rank 0's training function returned.
    """

    metrics: dict[str, Any] | None
    checkpoint: Checkpoint | None
    path: str
    filesystem: fsspec.AbstractFileSystem | None = None
    best_checkpoints: list[tuple[Checkpoint, dict[str, Any]]] = field(default_factory=list)
    error: BaseException | None = None
    return_value: Any = None
    history: Sequence[dict[str, Any]] = field(default_factory=list, repr=False)

    @classmethod
    def from_path(cls, path: str | os.PathLike, storage_filesystem: Any = None) -> Result:
        """Read a run's Result from storage (local path or URL) without a trainer; nothing is written.

        Raises:
            RunNotFoundError (a FileNotFoundError) when the path holds no trainkeep run.
        """
        storage, run_path = resolve(path, storage_filesystem)
        state = read_run(storage, run_path)
        config = CheckpointConfig.from_dict(state.index.checkpoint_config)
        records = records_of(state.index)  # a checkpoint marked corrupt is neither ranked nor the latest
        best = [(Checkpoint(storage.join(run_path, r.name), storage.fs), dict(r.metrics))
                for r in best_checkpoints(records, config)]
        latest = next((r for r in reversed(records) if not r.corrupt), None)
        last = state.last_report
        return cls(
            metrics=dict(last["metrics"]) if last else None,
            checkpoint=Checkpoint(storage.join(run_path, latest.name), storage.fs) if latest else None,
            path=run_path,
            filesystem=storage.fs,
            best_checkpoints=best,
            history=_LazyHistory(state),  # read on first use: the checkpoints above need none of it
        )

    @property
    def metrics_dataframe(self) -> Any:
        """A pandas DataFrame with one row per completed round, nested metrics flattened with "/".

        Every metric keeps its flattened name. Besides them it has trainkeep's columns ``round``, ``time`` and
        ``checkpoint_dir_name``; when a metric of the run has one of these names, trainkeep's column is
        ``trainkeep/round`` (and so on) instead, so no reported value is ever replaced by another.

        Raises:
            ImportError with an install hint when pandas is missing; InvalidMetricsError when a round of a run
            written by an older trainkeep reports one metric under two spellings (``a/b`` and ``{"a": {"b"}}``).
        """
        try:
            import pandas as pd
        except ImportError:
            raise MissingDependencyError(
                "Result.metrics_dataframe needs pandas: pip install 'trainkeep[pandas]'"
            ) from None
        if isinstance(self.history, _LazyHistory) and (frame := self.history.frame()) is not None:
            return frame  # read by the columnar reader, laid out as below
        metrics = [self._flat_row(row) for row in self.history]
        names = {key for flat in metrics for key in flat}
        own = {field: _free_name(field, names) for field in _BOOKKEEPING}
        rows = []
        for row, flat in zip(self.history, metrics, strict=True):
            values = {"round": row["round"], "time": row["time"], "checkpoint_dir_name": row.get("checkpoint")}
            rows.append({**{own[field]: values[field] for field in _BOOKKEEPING}, **flat})
        return pd.DataFrame(rows)

    def _flat_row(self, row: dict[str, Any]) -> dict[str, Any]:
        try:
            return flatten(row["metrics"], strict=True)
        except InvalidMetricsError as exc:
            raise InvalidMetricsError(f"round {row['round']} of run {self.path}: {exc}") from None

    def get_best_checkpoint(self, metric: str, mode: str) -> Checkpoint:
        """Return the best of ``best_checkpoints`` by ``metric`` under ``mode``.

        ``metric`` is looked up in the metrics flattened with "/" (``"a/b/c"`` finds ``{"a": {"b/c": 1}}``).
        Reports where the metric is missing, None, NaN or not a number that converts to a float are ignored; on
        a tie the newer checkpoint wins.

        Raises:
            ValueError for a mode other than "min"/"max"; RuntimeError when there are no checkpoints or no
            checkpoint has the metric.
        """
        if mode not in ("min", "max"):
            raise ConfigError(f"mode must be 'min' or 'max', got {mode!r}")
        if not self.best_checkpoints:
            raise NoCheckpointError(f"run {self.path} has no checkpoints")
        best: tuple[float, Checkpoint] | None = None
        for ckpt, metrics in self._in_round_order(self.best_checkpoints):
            value = as_float(lookup(metrics, metric))
            if value is None or math.isnan(value):
                continue
            score = value if mode == "max" else -value
            if best is None or score >= best[0]:
                best = (score, ckpt)
        if best is None:
            names = sorted({k for _, m in self.best_checkpoints for k in flatten(m)})
            raise NoCheckpointError(f"Invalid metric name {metric!r}: no checkpoint of run {self.path} has a "
                                    f"numeric metric {metric!r}; metrics present: {names}")
        return best[1]

    def _in_round_order(
        self, pairs: list[tuple[Checkpoint, dict[str, Any]]]
    ) -> list[tuple[Checkpoint, dict[str, Any]]]:
        """Return ``pairs`` oldest first by the history's rounds (those it does not name keep their order)."""
        rounds = {row.get("checkpoint"): row["round"] for row in self.history}
        return sorted(pairs, key=lambda pair: rounds.get(pair[0].path.rsplit("/", 1)[-1], -1))

    def __repr__(self) -> str:
        parts = [f"metrics={self.metrics!r}", f"checkpoint={self.checkpoint!r}", f"path={self.path!r}"]
        if self.error is not None:
            parts.append(f"error={self.error!r}")
        return f"Result({', '.join(parts)})"


_BOOKKEEPING = ("round", "time", "checkpoint_dir_name")


def _free_name(field: str, taken: set[str]) -> str:
    """Return ``field``, or ``trainkeep/field`` (prefixed again as needed) when a metric already has that name."""
    name = field
    while name in taken:
        name = f"trainkeep/{name}"
    return name


class _LazyHistory(Sequence[dict[str, Any]]):
    """The rows of a run's history, read from storage on first use (see ``RunState.history``)."""

    def __init__(self, state: RunState) -> None:
        self._state = state

    @overload
    def __getitem__(self, index: int) -> dict[str, Any]: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[dict[str, Any]]: ...

    def __getitem__(self, index: int | slice) -> dict[str, Any] | Sequence[dict[str, Any]]:
        return self._state.history[index]

    def __len__(self) -> int:
        return len(self._state.history)

    def frame(self) -> Any:
        """Return the history as ``metrics_dataframe``, by pyarrow's reader (None where it does not apply)."""
        if self._state.storage is None:
            return None
        return read_history_frame(self._state.storage, self._state.path)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sequence) and list(self) == list(other)

    def __repr__(self) -> str:
        return repr(self._state.history)
