"""Hugging Face Transformers: report each checkpoint the Trainer saves, on the run's checkpoint schedule.

The callback reports on the Trainer's save events: each ``checkpoint-<step>`` folder the Trainer writes becomes a
trainkeep checkpoint holding it as ``checkpoint/`` (``RayTrainReportCallback.CHECKPOINT_NAME``, Ray's layout), with
the metrics logged since the previous save. When the run's ``checkpoint_frequency`` (or
the callback's ``frequency``) is > 0, the callback also asks the Trainer to save every that many steps (or epochs,
with ``unit="epoch"``), and after the last step when ``checkpoint_at_end`` is true (None means true).

To resume: ``trainer.train(resume_from_checkpoint=os.path.join(d, RayTrainReportCallback.CHECKPOINT_NAME))`` inside
``with trainkeep.get_checkpoint().as_directory() as d``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any

from trainkeep._internal.engine.checkpoint import Checkpoint
from trainkeep._internal.integrations._common import require, resolve_timing
from trainkeep.errors import ConfigError

transformers = require("transformers", "transformers")


class RayTrainReportCallback(transformers.TrainerCallback):  # type: ignore[name-defined, misc]
    """Turn every checkpoint the Trainer saves into a reported trainkeep checkpoint.

    Args:
        frequency: ask the Trainer to save every this many units; None takes the run's ``checkpoint_frequency``
            (0: keep the Trainer's own ``save_strategy``).
        checkpoint_at_end: None takes the run's ``checkpoint_at_end`` (None: True).
        unit: "step" (optimizer steps) or "epoch".
    """

    CHECKPOINT_NAME = "checkpoint"  # Ray's name: the Trainer's folder inside the reported checkpoint

    def __init__(self, frequency: int | None = None, checkpoint_at_end: bool | None = None,
                 unit: str = "step") -> None:
        if unit not in ("epoch", "step"):
            raise ConfigError(f"unit must be 'epoch' or 'step', got {unit!r}")
        self._timing = resolve_timing(frequency, checkpoint_at_end)
        self._unit = unit
        self._logged: dict[str, Any] = {}

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        for key, value in (logs or {}).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self._logged[key] = value

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self._unit == "step" and self._timing.is_due(state.global_step):
            control.should_save = True
        if self._timing.at_end and state.max_steps > 0 and state.global_step >= state.max_steps:
            control.should_save = True

    def on_epoch_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self._unit == "epoch" and state.epoch is not None and self._timing.is_due(round(state.epoch)):
            control.should_save = True

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        from trainkeep._internal.trainer import session

        folder = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        metrics = {**self._logged, "step": state.global_step, "epoch": float(state.epoch or 0.0)}
        with tempfile.TemporaryDirectory(prefix="trainkeep-hf-") as staged:
            checkpoint = None
            if state.is_world_process_zero and os.path.isdir(folder):
                # Ray's layout: the folder goes in as CHECKPOINT_NAME; hard links, so no byte is copied here
                shutil.copytree(folder, os.path.join(staged, self.CHECKPOINT_NAME), copy_function=_link_or_copy)
                checkpoint = Checkpoint.from_directory(staged)
            session.report(metrics, checkpoint=checkpoint)  # SYNC: the files are stored when it returns
        self._logged = {}


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another filesystem, or no hard links there
        shutil.copy2(src, dst)


def prepare_trainer(trainer: Any) -> Any:
    """Return ``trainer`` unchanged after checking it can run inside trainkeep's workers.

    The Trainer picks up ``torch.distributed`` from the environment that ``TorchTrainer`` sets up.
    """
    if not any(isinstance(cb, RayTrainReportCallback) for cb in trainer.callback_handler.callbacks):
        trainer.add_callback(RayTrainReportCallback())
    return trainer


TrainkeepReportCallback = RayTrainReportCallback
