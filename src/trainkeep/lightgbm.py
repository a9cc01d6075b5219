"""LightGBM on trainkeep: ``LightGBMTrainer`` and the report callback, as in ``ray.train.lightgbm``.

``LightGBMTrainer`` is a DataParallelTrainer that honours ``CheckpointConfig.checkpoint_frequency`` /
``checkpoint_at_end`` through :class:`RayTrainReportCallback`. With several workers, call
:func:`get_network_params` in the training function and merge it into LightGBM's params, so the workers train
one model over their shards (``tree_learner="data"``, ports on 127.0.0.1).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from trainkeep._internal.core.config import RunConfig, ScalingConfig
from trainkeep._internal.integrations._common import require
from trainkeep._internal.integrations.lightgbm import RayTrainReportCallback, TrainkeepReportCallback
from trainkeep._internal.trainer.data_parallel import DataParallelTrainer
from trainkeep._internal.trainer.datasets import DataConfig
from trainkeep._internal.trainer.setup import WorkerSetup

_ENV = "TRAINKEEP_LIGHTGBM_MACHINES"


class _LightGBMSetup(WorkerSetup):
    """Pick one free loopback port per worker for each attempt."""

    def worker_envs(self, world_size: int) -> list[dict[str, str]]:
        from trainkeep.torch import _free_port

        if world_size == 1:
            return [{}]
        machines = ",".join(f"127.0.0.1:{_free_port()}" for _ in range(world_size))
        return [{_ENV: machines} for _ in range(world_size)]

    def placed_envs(self, layout: Any) -> list[dict[str, str]]:
        """On a cluster: each rank listens on a port free on its own node (``layout.ports``)."""
        if layout.ports is None or len(layout.ports) == 1:
            return self.worker_envs(len(layout.placements))
        machines = ",".join(f"{ip}:{port}" for ip, port in zip(layout.node_ips, layout.ports, strict=True))
        return [{_ENV: machines} for _ in layout.ports]


def get_network_params() -> dict[str, Any]:
    """Return the LightGBM params that join this worker to the others ({} with one worker)."""
    from trainkeep._internal.trainer import session

    machines = os.environ.get(_ENV)
    if not machines:
        return {}
    context = session.get_context()
    port = int(machines.split(",")[context.get_world_rank()].rsplit(":", 1)[1])
    return {"machines": machines, "local_listen_port": port, "num_machines": context.get_world_size(),
            "tree_learner": "data", "pre_partition": True}


class LightGBMTrainer(DataParallelTrainer):
    """Run a LightGBM training function on ``num_workers`` workers.

    Accepts ``checkpoint_frequency`` and ``checkpoint_at_end``: the training function passes
    ``RayTrainReportCallback()`` to ``lightgbm.train``, which reads them.
    """

    _owns_loop = True

    def __init__(self, train_loop_per_worker: Callable[..., Any], *, train_loop_config: dict[str, Any] | None = None,
                 scaling_config: ScalingConfig | None = None, run_config: RunConfig | None = None,
                 executor: str | None = None, datasets: dict[str, Any] | None = None,
                 dataset_config: DataConfig | None = None) -> None:
        require("lightgbm", "lightgbm")
        super().__init__(train_loop_per_worker, train_loop_config=train_loop_config,
                         scaling_config=scaling_config, run_config=run_config, executor=executor,
                         datasets=datasets, dataset_config=dataset_config)
        self._setup = _LightGBMSetup()


__all__ = ["LightGBMTrainer", "RayTrainReportCallback", "TrainkeepReportCallback", "get_network_params"]
