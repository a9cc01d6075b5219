"""PyTorch Lightning: a report callback on the run's checkpoint schedule, and DDP inside trainkeep's workers.

``RayTrainReportCallback`` reports ``trainer.callback_metrics`` at the end of every training epoch, and writes a
Lightning checkpoint (``checkpoint.ckpt``) with ``trainer.save_checkpoint`` when one is due: every
``checkpoint_frequency`` epochs (or optimizer steps, with ``unit="step"``), and after the last epoch when
``checkpoint_at_end`` is true (None means true) unless it was just saved. Rank 0's file is the checkpoint.

To resume: ``ckpt = trainkeep.get_checkpoint()`` and ``trainer.fit(model, ckpt_path=os.path.join(d,
CHECKPOINT_NAME))`` inside ``with ckpt.as_directory() as d``.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

from trainkeep._internal.engine.checkpoint import Checkpoint
from trainkeep._internal.integrations._common import require, resolve_timing
from trainkeep.errors import ConfigError

pl = require("lightning.pytorch", "lightning", "lightning")
_envs = require("lightning.fabric.plugins.environments", "lightning", "lightning")

CHECKPOINT_NAME = "checkpoint.ckpt"


def _plain(metrics: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in metrics.items():
        out[key] = value.item() if hasattr(value, "item") else value
    return out


class RayTrainReportCallback(pl.Callback):  # type: ignore[name-defined, misc]
    """Report Lightning's logged metrics each epoch, with a checkpoint when one is due.

    Args:
        frequency: checkpoint every this many units; None takes the run's ``checkpoint_frequency``
            (0: only at the end).
        checkpoint_at_end: None takes the run's ``checkpoint_at_end`` (None: True).
        unit: "epoch" or "step" (optimizer steps, ``trainer.global_step``).
    """

    CHECKPOINT_NAME = CHECKPOINT_NAME  # Ray's name: the model file's name inside the checkpoint (the default one)

    def __init__(self, frequency: int | None = None, checkpoint_at_end: bool | None = None,
                 unit: str = "epoch") -> None:
        super().__init__()
        if unit not in ("epoch", "step"):
            raise ConfigError(f"unit must be 'epoch' or 'step', got {unit!r}")
        self._timing = resolve_timing(frequency, checkpoint_at_end)
        self._unit = unit
        self._saved_at: tuple[int, int] | None = None  # (epoch, step) of the last checkpoint

    def _report(self, trainer: Any, with_checkpoint: bool) -> None:
        from trainkeep._internal.trainer import session

        metrics = {**_plain(dict(trainer.callback_metrics)), "epoch": trainer.current_epoch,
                   "step": trainer.global_step}
        if not with_checkpoint:
            session.report(metrics)
            return
        with tempfile.TemporaryDirectory() as d:
            trainer.save_checkpoint(os.path.join(d, CHECKPOINT_NAME))  # collective: every rank calls it
            checkpoint = Checkpoint.from_directory(d) if trainer.global_rank == 0 else None
            session.report(metrics, checkpoint=checkpoint)
        self._saved_at = (trainer.current_epoch, trainer.global_step)

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self._unit == "step" and self._timing.is_due(trainer.global_step) and \
                self._saved_at != (trainer.current_epoch, trainer.global_step):
            self._report(trainer, with_checkpoint=True)

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        due = self._unit == "epoch" and self._timing.is_due(trainer.current_epoch + 1)
        last = self._timing.at_end and _is_last_epoch(trainer)
        self._report(trainer, with_checkpoint=(due or last) and
                     self._saved_at != (trainer.current_epoch, trainer.global_step))


def _is_last_epoch(trainer: Any) -> bool:
    max_epochs = trainer.max_epochs if trainer.max_epochs is not None else -1
    max_steps = trainer.max_steps if trainer.max_steps is not None else -1
    return (max_epochs >= 0 and trainer.current_epoch + 1 >= max_epochs) or \
        (max_steps >= 0 and trainer.global_step >= max_steps) or bool(trainer.should_stop)


class RayLightningEnvironment(_envs.LightningEnvironment):  # type: ignore[name-defined, misc]
    """A cluster environment whose ranks come from trainkeep's worker context (processes made by trainkeep)."""

    @property
    def creates_processes_externally(self) -> bool:
        return True

    def world_size(self) -> int:
        from trainkeep._internal.trainer import session

        return session.get_context().get_world_size()

    def global_rank(self) -> int:
        from trainkeep._internal.trainer import session

        return session.get_context().get_world_rank()

    def local_rank(self) -> int:
        from trainkeep._internal.trainer import session

        return session.get_context().get_local_rank()

    def node_rank(self) -> int:
        from trainkeep._internal.trainer import session

        return session.get_context().get_node_rank()

    def set_world_size(self, size: int) -> None:  # fixed by trainkeep
        pass

    def set_global_rank(self, rank: int) -> None:  # fixed by trainkeep
        pass


class RayDDPStrategy(pl.strategies.DDPStrategy):  # type: ignore[name-defined, misc]
    """Lightning's DDP strategy over the process group that ``TorchTrainer`` already set up."""

    @property
    def root_device(self) -> Any:
        from trainkeep._internal.integrations.torch_device import get_device

        return get_device()

    @property
    def distributed_sampler_kwargs(self) -> dict[str, Any]:
        return {"num_replicas": self.world_size, "rank": self.global_rank}


def prepare_trainer(trainer: Any) -> Any:
    """Check that a Lightning Trainer runs under trainkeep's workers (RayDDPStrategy + RayLightningEnvironment).

    Raises:
        ValueError when the trainer uses a strategy or cluster environment that would spawn its own processes.
    """
    strategy = trainer.strategy
    env = getattr(strategy, "cluster_environment", None)
    if isinstance(strategy, pl.strategies.DDPStrategy) and not isinstance(strategy, RayDDPStrategy):
        raise ConfigError("use strategy=trainkeep.lightning.RayDDPStrategy() inside trainkeep workers, got "
                         f"{type(strategy).__name__}")
    if env is not None and not isinstance(env, RayLightningEnvironment) and \
            not isinstance(strategy, pl.strategies.SingleDeviceStrategy):
        raise ConfigError("use plugins=[trainkeep.lightning.RayLightningEnvironment()] inside trainkeep workers, "
                         f"got {type(env).__name__}")
    return trainer


TrainkeepReportCallback = RayTrainReportCallback
