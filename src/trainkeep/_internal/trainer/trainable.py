"""The class API for training that trainkeep drives: ``Trainable`` and ``TrainableTrainer``.

Here the trainer owns the loop, so it honours ``CheckpointConfig.checkpoint_frequency`` and
``checkpoint_at_end`` (DESIGN §4): iterations count from 1; iteration ``i`` is checkpointed when
``checkpoint_frequency > 0 and i % checkpoint_frequency == 0``, and the last iteration when
``checkpoint_at_end`` (None means True here) unless it was just checkpointed.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Mapping
from typing import Any

from trainkeep._internal.core.config import CheckpointConfig, RunConfig, ScalingConfig
from trainkeep._internal.engine.checkpoint import Checkpoint
from trainkeep._internal.trainer.data_parallel import DataParallelTrainer
from trainkeep.errors import ConfigError, ConfigTypeError, NotOverriddenError

ITERATION_KEY = "training_iteration"
StopCondition = Mapping[str, float] | Callable[[int, Mapping[str, Any]], bool] | None


class Trainable:
    """Subclass this and implement ``setup``, ``step``, ``save_checkpoint`` and ``load_checkpoint``.

    ``step()`` runs one iteration and returns its metrics; ``save_checkpoint(checkpoint_dir)`` writes the state
    into an empty local directory; ``load_checkpoint(checkpoint_dir)`` restores it. ``cleanup()`` is optional.
    The current iteration count is ``self.iteration`` (0 before the first step).
    """

    iteration: int = 0

    def setup(self, config: dict[str, Any]) -> None:
        """Build the model and data from ``config``."""

    def step(self) -> dict[str, Any]:
        """Run one training iteration and return its metrics."""
        raise NotOverriddenError(f"{type(self).__name__} must implement step()")

    def save_checkpoint(self, checkpoint_dir: str) -> None:
        """Write the training state into ``checkpoint_dir``."""
        raise NotOverriddenError(f"{type(self).__name__} must implement save_checkpoint(checkpoint_dir)")

    def load_checkpoint(self, checkpoint_dir: str) -> None:
        """Restore the training state from ``checkpoint_dir``."""
        raise NotOverriddenError(f"{type(self).__name__} must implement load_checkpoint(checkpoint_dir)")

    def cleanup(self) -> None:
        """Release resources at the end of the run."""


def checkpoint_iterations(num_iterations: int, frequency: int, at_end: bool | None) -> list[int]:
    """Return the iterations (1-based) of a run of ``num_iterations`` that get a checkpoint."""
    due = [i for i in range(1, num_iterations + 1) if frequency > 0 and i % frequency == 0]
    if (at_end is None or at_end) and num_iterations > 0 and (not due or due[-1] != num_iterations):
        due.append(num_iterations)
    return due


def should_stop(stop: StopCondition, iteration: int, metrics: Mapping[str, Any]) -> bool:
    """Return True when ``stop`` says the run is done after ``iteration`` with ``metrics``.

    A dict stops when any named metric reaches its threshold (``metrics[key] >= value``, as in Ray Tune);
    a callable is called as ``stop(iteration, metrics)``; ``metrics["done"]`` true always stops.
    """
    if metrics.get("done"):
        return True
    if stop is None:
        return False
    if callable(stop):
        return bool(stop(iteration, metrics))
    return any(key in metrics and metrics[key] >= limit for key, limit in stop.items())


def _validate_stop(stop: StopCondition) -> None:
    if stop is None or callable(stop):
        return
    if not isinstance(stop, Mapping) or not stop:
        raise ConfigTypeError(f"stop must be a non-empty dict of metric to threshold or a callable, got {stop!r}")
    for key, limit in stop.items():
        if not isinstance(key, str) or isinstance(limit, bool) or not isinstance(limit, (int, float)):
            raise ConfigError(f"stop must map metric names to numbers, got {key!r}: {limit!r}")


def run_trainable(config: dict[str, Any]) -> Any:
    """Drive a Trainable inside a worker: resume, step, report, checkpoint on schedule. (The worker loop.)"""
    from trainkeep._internal.trainer import session

    cls: type[Trainable] = config["trainable_cls"]
    stop: StopCondition = config["stop"]
    frequency: int = config["checkpoint_frequency"]
    at_end: bool = config["checkpoint_at_end"]
    trainable = cls()
    trainable.setup(dict(config["config"]))
    resume = session.get_checkpoint()
    if resume is not None:
        trainable.iteration = int(resume.get_metadata().get(ITERATION_KEY, 0))
        with resume.as_directory() as d:
            trainable.load_checkpoint(d)
    rank0 = session.get_context().get_world_rank() == 0
    try:
        while True:
            trainable.iteration += 1
            metrics = {**trainable.step(), ITERATION_KEY: trainable.iteration}
            done = should_stop(stop, trainable.iteration, metrics)
            periodic = frequency > 0 and trainable.iteration % frequency == 0
            if periodic or (done and at_end):
                _report_with_checkpoint(trainable, metrics, rank0)
            else:
                session.report(metrics)
            if done:
                return metrics
    finally:
        trainable.cleanup()


def _report_with_checkpoint(trainable: Trainable, metrics: dict[str, Any], rank0: bool) -> None:
    from trainkeep._internal.trainer import session

    with tempfile.TemporaryDirectory(prefix="trainkeep_trainable_") as d:
        checkpoint = None
        if rank0:
            trainable.save_checkpoint(d)
            checkpoint = Checkpoint.from_directory(d)
            checkpoint.update_metadata({ITERATION_KEY: trainable.iteration})
        session.report(metrics, checkpoint=checkpoint)


class TrainableTrainer(DataParallelTrainer):
    """Run a ``Trainable`` class on ``num_workers`` workers, checkpointing on the run's schedule.

    Args:
        trainable_cls: the Trainable subclass (shipped to the workers with cloudpickle).
        config: passed to ``setup``.
        stop: ``{"training_iteration": N}`` (stop when any named metric reaches its threshold), a callable
            ``(iteration, metrics) -> bool``, or None (then ``step()`` must return ``done=True`` at some point).
        scaling_config, run_config: as for DataParallelTrainer.

    Raises:
        ConfigTypeError / ConfigError for a bad ``trainable_cls`` or ``stop``, and the DataParallelTrainer's.
    """

    _owns_loop = True

    def __init__(self, trainable_cls: type[Trainable], *, config: dict[str, Any] | None = None,
                 stop: StopCondition = None, scaling_config: ScalingConfig | None = None,
                 run_config: RunConfig | None = None, executor: str | None = None) -> None:
        if not (isinstance(trainable_cls, type) and issubclass(trainable_cls, Trainable)):
            raise ConfigTypeError(f"trainable_cls must be a subclass of trainkeep.Trainable, got {trainable_cls!r}")
        _validate_stop(stop)
        ckpt_config = (run_config.checkpoint_config if run_config else None) or CheckpointConfig()
        at_end = True if ckpt_config.checkpoint_at_end is None else ckpt_config.checkpoint_at_end
        loop_config = {"trainable_cls": trainable_cls, "config": dict(config or {}), "stop": stop,
                       "checkpoint_frequency": ckpt_config.checkpoint_frequency, "checkpoint_at_end": at_end}
        super().__init__(run_trainable, train_loop_config=loop_config, scaling_config=scaling_config,
                         run_config=run_config, executor=executor)
