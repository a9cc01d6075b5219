"""XGBoost: a callback that reports each boosting round and checkpoints the booster on the run's schedule.

Boosting round ``e`` (0-based, counted over the whole model, so a resumed model continues the count) gets a
checkpoint when ``(e + 1) % checkpoint_frequency == 0``, and the last round gets one when ``checkpoint_at_end`` is
true (None means true) unless it was just checkpointed. Rank 0 writes the model; the other ranks report None.
"""

from __future__ import annotations

import os
from typing import Any

from trainkeep._internal.engine.checkpoint import Checkpoint
from trainkeep._internal.integrations._common import ModelReporter, require, select_metrics

xgb = require("xgboost", "xgboost", "xgboost-cpu")

MODEL_FILENAME = "model.ubj"


class RayTrainReportCallback(ModelReporter, xgb.callback.TrainingCallback):  # type: ignore[name-defined, misc]
    """Report the evaluation metrics after every boosting round, with a checkpoint when one is due.

    Args:
        metrics: which metrics to report: None for all, a list of ``"<eval>-<metric>"`` names, or a dict of
            report name to such a name.
        filename: the model's file name inside the checkpoint.
        frequency: checkpoint every this many rounds; None takes the run's ``checkpoint_frequency``.
        checkpoint_at_end: checkpoint after the last round; None takes the run's ``checkpoint_at_end`` (None: True).
    """

    CHECKPOINT_NAME = MODEL_FILENAME  # Ray's name: the model file's name inside the checkpoint (the default one)

    def __init__(
        self,
        metrics: list[str] | dict[str, str] | str | None = None,
        filename: str = MODEL_FILENAME,
        frequency: int | None = None,
        checkpoint_at_end: bool | None = None,
    ) -> None:
        super().__init__(metrics, filename, frequency, checkpoint_at_end)
        self._last_checkpointed: int | None = None
        self._last_metrics: dict[str, Any] = {}

    @classmethod
    def get_model(cls, checkpoint: Checkpoint, filename: str = MODEL_FILENAME) -> Any:
        """Load the Booster stored in ``checkpoint``."""
        booster = xgb.Booster()
        with checkpoint.as_directory() as d:
            booster.load_model(os.path.join(d, filename))
        return booster

    def _select(self, evals_log: dict[str, dict[str, list]]) -> dict[str, Any]:
        flat: dict[str, Any] = {}
        for data_name, per_metric in evals_log.items():
            for metric_name, values in per_metric.items():
                value = values[-1]
                flat[f"{data_name}-{metric_name}"] = float(value[0] if isinstance(value, tuple) else value)
        return select_metrics(flat, self._metrics)

    def after_iteration(self, model: Any, epoch: int, evals_log: dict) -> bool:
        completed = model.num_boosted_rounds()  # absolute, also when training continues a loaded model
        metrics = {"training_iteration": completed, **self._select(evals_log)}
        self._last_metrics = metrics
        due = self._timing.is_due(completed)
        self._report(model, metrics, with_checkpoint=due)
        if due:
            self._last_checkpointed = completed
        return False

    def after_training(self, model: Any) -> Any:
        completed = model.num_boosted_rounds()
        if self._timing.at_end and completed > 0 and self._last_checkpointed != completed:
            self._report(model, dict(self._last_metrics or {"training_iteration": completed}), with_checkpoint=True)
            self._last_checkpointed = completed
        return model


TrainkeepReportCallback = RayTrainReportCallback
