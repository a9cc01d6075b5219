"""What a worker knows about itself and its run: ``TrainContext`` (``trainkeep.get_context()``) and its
``StorageContext``, with Ray Train's names.
"""

from __future__ import annotations

from typing import Any

from trainkeep._internal.core.config import CheckpointConfig
from trainkeep._internal.core.layout import validate_checkpoint_name
from trainkeep._internal.trainer import protocol as p


class StorageContext:
    """Where the run lives (Ray Train's ``StorageContext`` names): ``get_context().get_storage()``."""

    def __init__(self, spec: p.WorkerSpec) -> None:
        self.storage_path: str = spec.storage_path
        self.storage_filesystem: Any = spec.filesystem
        self.experiment_dir_name: str = spec.experiment_name
        self.experiment_fs_path: str = spec.run_path

    def build_checkpoint_path_from_name(self, name: str) -> str:
        """Return the path of checkpoint directory ``name`` inside the run (for ``NO_UPLOAD`` reports)."""
        return f"{self.experiment_fs_path.rstrip('/')}/{validate_checkpoint_name(name)}"


class TrainContext:
    """Facts about this worker and its run, from ``trainkeep.get_context()``."""

    def __init__(self, spec: p.WorkerSpec, rank: int, placement: p.Placement | None = None) -> None:
        self._spec, self._rank = spec, rank
        # without a placement every worker runs on one machine (the local executor)
        self._placement = placement or p.Placement(0, rank, spec.world_size)

    def get_world_rank(self) -> int:
        """Return this worker's rank among all workers, ``0 .. world_size - 1``."""
        return self._rank

    def get_local_rank(self) -> int:
        """Return this worker's rank among the group's workers on its node (the world rank on one machine)."""
        return self._placement.local_rank

    def get_world_size(self) -> int:
        """Return the number of workers."""
        return self._spec.world_size

    def get_local_world_size(self) -> int:
        """Return the number of the group's workers on this worker's node (all of them on one machine)."""
        return self._placement.local_world_size

    def get_node_rank(self) -> int:
        """Return the index of this worker's node among the group's nodes (0 on one machine)."""
        return self._placement.node_rank

    def get_experiment_name(self) -> str:
        return self._spec.experiment_name

    def get_storage(self) -> StorageContext:
        return StorageContext(self._spec)

    def get_checkpoint_config(self) -> CheckpointConfig:
        return self._spec.checkpoint_config
