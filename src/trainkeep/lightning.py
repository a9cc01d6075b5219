"""PyTorch Lightning on trainkeep, as in ``ray.train.lightning``: run the Lightning Trainer inside
``trainkeep.torch.TorchTrainer`` workers with :class:`RayDDPStrategy`, :class:`RayLightningEnvironment`,
:func:`prepare_trainer` and the report callback."""

from __future__ import annotations

from trainkeep._internal.integrations.lightning import (
    CHECKPOINT_NAME,
    RayDDPStrategy,
    RayLightningEnvironment,
    RayTrainReportCallback,
    TrainkeepReportCallback,
    prepare_trainer,
)
from trainkeep.torch import TorchTrainer


class LightningTrainer(TorchTrainer):
    """A TorchTrainer for Lightning training functions: it accepts ``checkpoint_frequency`` (in epochs, or in
    steps with ``RayTrainReportCallback(unit="step")``) and ``checkpoint_at_end``, which the callback honours."""

    _owns_loop = True


__all__ = ["CHECKPOINT_NAME", "LightningTrainer", "RayDDPStrategy", "RayLightningEnvironment", "RayTrainReportCallback",
           "TrainkeepReportCallback", "prepare_trainer"]
