"""Hugging Face Transformers on trainkeep, as in ``ray.train.huggingface.transformers``: run the Trainer inside
``trainkeep.torch.TorchTrainer`` workers with :class:`RayTrainReportCallback` and :func:`prepare_trainer`."""

from __future__ import annotations

from trainkeep._internal.integrations.transformers import (
    RayTrainReportCallback,
    TrainkeepReportCallback,
    prepare_trainer,
)
from trainkeep.torch import TorchTrainer


class TransformersTrainer(TorchTrainer):
    """A TorchTrainer for Transformers training functions: it accepts ``checkpoint_frequency`` (in steps, or in
    epochs with ``RayTrainReportCallback(unit="epoch")``) and ``checkpoint_at_end``, which the callback honours."""

    _owns_loop = True


__all__ = ["TransformersTrainer", "RayTrainReportCallback", "TrainkeepReportCallback", "prepare_trainer"]
