"""XGBoost on trainkeep: ``XGBoostTrainer`` and the report callback, as in ``ray.train.xgboost``.

``XGBoostTrainer`` is a DataParallelTrainer whose workers form one XGBoost collective (a Rabit tracker in the
driver, bound to 127.0.0.1), so ``xgboost.train`` inside the loop trains one model across the workers' data
shards. It honours ``CheckpointConfig.checkpoint_frequency`` / ``checkpoint_at_end`` through
:class:`RayTrainReportCallback`, which the training function passes to ``xgboost.train``.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable
from typing import Any

from trainkeep._internal.core.config import RunConfig, ScalingConfig
from trainkeep._internal.integrations._common import require
from trainkeep._internal.integrations.xgboost import RayTrainReportCallback, TrainkeepReportCallback
from trainkeep._internal.trainer.data_parallel import DataParallelTrainer
from trainkeep._internal.trainer.datasets import DataConfig
from trainkeep._internal.trainer.setup import WorkerSetup

_ENV = "TRAINKEEP_XGBOOST_COLLECTIVE"
_TRACKERS: dict[int, Any] = {}  # driver side: the live tracker of each setup object, never pickled


class _XGBoostSetup(WorkerSetup):
    """Start a Rabit tracker per attempt in the driver; join each worker to it before the loop runs."""

    def __init__(self) -> None:
        self._context: Any = None

    def worker_envs(self, world_size: int, host: str = "127.0.0.1") -> list[dict[str, str]]:
        if world_size == 1:
            return [{}]
        xgb_tracker = require("xgboost.tracker", "xgboost", "xgboost-cpu")
        old = _TRACKERS.pop(id(self), None)
        if old is not None:  # the tracker of a failed attempt reports that attempt's broken connections
            with contextlib.suppress(Exception):
                old.free()
        tracker = xgb_tracker.RabitTracker(n_workers=world_size, host_ip=host)
        tracker.start()
        _TRACKERS[id(self)] = tracker
        args = json.dumps(tracker.worker_args())
        return [{_ENV: args} for _ in range(world_size)]

    def placed_envs(self, layout: Any) -> list[dict[str, str]]:
        """The tracker runs in the driver: on a cluster it listens where the workers reach the driver."""
        return self.worker_envs(len(layout.placements), layout.driver_ip)

    def start(self, context: Any, spec: Any) -> None:
        raw = os.environ.get(_ENV)
        if raw:
            collective = require("xgboost.collective", "xgboost", "xgboost-cpu")
            self._context = collective.CommunicatorContext(**json.loads(raw))
            self._context.__enter__()

    def stop(self) -> None:
        if self._context is not None:
            self._context.__exit__(None, None, None)
            self._context = None

    def __getstate__(self) -> dict[str, Any]:
        return {"_context": None}


class XGBoostTrainer(DataParallelTrainer):
    """Run an XGBoost training function on ``num_workers`` workers joined into one XGBoost collective.

    Unlike a plain DataParallelTrainer it accepts ``checkpoint_frequency`` and ``checkpoint_at_end``: the
    training function passes ``RayTrainReportCallback()`` to ``xgboost.train``, which reads them.
    """

    _owns_loop = True

    def __init__(self, train_loop_per_worker: Callable[..., Any], *, train_loop_config: dict[str, Any] | None = None,
                 scaling_config: ScalingConfig | None = None, run_config: RunConfig | None = None,
                 executor: str | None = None, datasets: dict[str, Any] | None = None,
                 dataset_config: DataConfig | None = None) -> None:
        require("xgboost", "xgboost", "xgboost-cpu")
        super().__init__(train_loop_per_worker, train_loop_config=train_loop_config,
                         scaling_config=scaling_config, run_config=run_config, executor=executor,
                         datasets=datasets, dataset_config=dataset_config)
        self._setup = _XGBoostSetup()


__all__ = ["RayTrainReportCallback", "TrainkeepReportCallback", "XGBoostTrainer"]
