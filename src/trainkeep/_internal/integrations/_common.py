"""What the framework callbacks share: the run's checkpoint timing and the import guard."""

from __future__ import annotations

import importlib
import os
import tempfile
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from trainkeep._internal.core.config import CheckpointConfig
from trainkeep.errors import ConfigError, MissingDependencyError


def require(module: str, extra: str, pip_name: str | None = None) -> ModuleType:
    """Import ``module`` or raise an ImportError that says which extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(
            f"this trainkeep integration needs {pip_name or module}, which is not installed: "
            f"pip install 'trainkeep[{extra}]'"
        ) from exc


@dataclass(frozen=True)
class Timing:
    """When a callback checkpoints: every ``frequency`` units (0: never) and/or at the end."""

    frequency: int
    at_end: bool

    def is_due(self, completed: int) -> bool:
        """Return True when a checkpoint is due after ``completed`` units (1-based count)."""
        return self.frequency > 0 and completed % self.frequency == 0


def resolve_timing(frequency: int | None, checkpoint_at_end: bool | None) -> Timing:
    """Return the timing from explicit arguments, else from the run's CheckpointConfig.

    ``checkpoint_at_end=None`` means True, as for every trainer that owns its loop.
    """
    config = run_checkpoint_config()
    if frequency is None:
        frequency = config.checkpoint_frequency
    if checkpoint_at_end is None:
        checkpoint_at_end = config.checkpoint_at_end
    if not isinstance(frequency, int) or isinstance(frequency, bool) or frequency < 0:
        raise ConfigError(f"frequency must be an integer >= 0, got {frequency!r}")
    return Timing(frequency, True if checkpoint_at_end is None else bool(checkpoint_at_end))


def select_metrics(flat: dict[str, Any], wanted: list[str] | dict[str, str] | None) -> dict[str, Any]:
    """Return the metrics to report: all of ``flat`` (None), the named ones (a list), or renamed ones (a dict
    of report name to metric name). Names that are absent are left out."""
    if wanted is None:
        return flat
    if isinstance(wanted, dict):
        return {key: flat[name] for key, name in wanted.items() if name in flat}
    return {name: flat[name] for name in wanted if name in flat}


def run_checkpoint_config() -> CheckpointConfig:
    """Return the CheckpointConfig of the run this worker belongs to (defaults outside a run)."""
    from trainkeep._internal.trainer import session

    try:
        return session.get_context().get_checkpoint_config()
    except Exception:  # outside a run the callbacks still work, with the defaults
        return CheckpointConfig()


class ModelReporter:
    """What the boosting callbacks share: which metrics to report, the model's file name, the schedule, and a
    report that carries rank 0's saved model when a checkpoint is due.

    ``model`` is anything with ``save_model(path)`` (an XGBoost or LightGBM Booster).
    """

    def __init__(self, metrics: list[str] | dict[str, str] | str | None, filename: str,
                 frequency: int | None, checkpoint_at_end: bool | None) -> None:
        self._metrics = [metrics] if isinstance(metrics, str) else metrics
        self._filename = filename
        self._timing = resolve_timing(frequency, checkpoint_at_end)

    def _report(self, model: Any, metrics: dict[str, Any], with_checkpoint: bool) -> None:
        from trainkeep._internal.engine.checkpoint import Checkpoint
        from trainkeep._internal.trainer import session

        if not with_checkpoint:
            session.report(metrics)
            return
        with tempfile.TemporaryDirectory() as d:
            checkpoint = None
            if session.get_context().get_world_rank() == 0:
                model.save_model(os.path.join(d, self._filename))
                checkpoint = Checkpoint.from_directory(d)
            session.report(metrics, checkpoint=checkpoint)
