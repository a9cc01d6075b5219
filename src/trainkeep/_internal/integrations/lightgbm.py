"""LightGBM: a callback that reports each boosting round and checkpoints the booster on the run's schedule.

Boosting round ``e`` (0-based over the whole model, so a resumed model continues the count) gets a checkpoint
when ``(e + 1) % checkpoint_frequency == 0``; the last round of ``lightgbm.train`` gets one when
``checkpoint_at_end`` is true (None means true). Both land in the same report, so nothing is saved twice. Rank 0
writes the model; the other ranks report None.
"""

from __future__ import annotations

import os
from typing import Any

from trainkeep._internal.engine.checkpoint import Checkpoint
from trainkeep._internal.integrations._common import ModelReporter, require, select_metrics

lgb = require("lightgbm", "lightgbm")

MODEL_FILENAME = "model.txt"


class RayTrainReportCallback(ModelReporter):
    """Report the evaluation metrics after every boosting round, with a checkpoint when one is due.

    Pass an instance in ``lightgbm.train(..., callbacks=[RayTrainReportCallback()])``.

    Args:
        metrics: which metrics to report: None for all, a list of ``"<data>-<metric>"`` names, or a dict of
            report name to such a name.
        filename: the model's file name inside the checkpoint.
        frequency: checkpoint every this many rounds; None takes the run's ``checkpoint_frequency``.
        checkpoint_at_end: checkpoint after the last round; None takes the run's ``checkpoint_at_end`` (None: True).
    """

    CHECKPOINT_NAME = MODEL_FILENAME  # Ray's name: the model file's name inside the checkpoint (the default one)

    order = 40  # after LightGBM's own evaluation callbacks

    def __init__(
        self,
        metrics: list[str] | dict[str, str] | str | None = None,
        filename: str = MODEL_FILENAME,
        frequency: int | None = None,
        checkpoint_at_end: bool | None = None,
    ) -> None:
        super().__init__(metrics, filename, frequency, checkpoint_at_end)

    @classmethod
    def get_model(cls, checkpoint: Checkpoint, filename: str = MODEL_FILENAME) -> Any:
        """Load the Booster stored in ``checkpoint``."""
        with checkpoint.as_directory() as d:
            return lgb.Booster(model_file=os.path.join(d, filename))

    def _select(self, results: list[tuple]) -> dict[str, Any]:
        flat = {f"{item[0]}-{item[1]}": float(item[2]) for item in results}
        return select_metrics(flat, self._metrics)

    def __call__(self, env: Any) -> None:
        completed = env.iteration + 1
        is_last = env.iteration == env.end_iteration - 1
        metrics = {"training_iteration": completed, **self._select(env.evaluation_result_list or [])}
        self._report(env.model, metrics, self._timing.is_due(completed) or (is_last and self._timing.at_end))


TrainkeepReportCallback = RayTrainReportCallback
