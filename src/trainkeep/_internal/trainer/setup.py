"""Framework set-up around the training function in every worker (``torch.distributed`` for TorchTrainer)."""

from __future__ import annotations

from typing import Any


class WorkerSetup:
    """The hooks a framework trainer overrides; this base class sets up nothing.

    The object is pickled into every worker, so it must stay small and picklable.
    """

    def worker_envs(self, world_size: int) -> list[dict[str, str]]:
        """Return the extra environment of each rank, for a new attempt (called in the driver)."""
        return [{} for _ in range(world_size)]

    def placed_envs(self, layout: Any) -> list[dict[str, str]]:
        """Return the extra environment of each rank placed as ``layout`` (a ``protocol.Layout``) says.

        A setup that needs to know the nodes (an address on rank 0's node) overrides this; by default it is
        ``worker_envs``.
        """
        return self.worker_envs(len(layout.placements))

    def start(self, context: Any, spec: Any) -> None:
        """Set up the framework in a worker, before the training function runs."""

    def stop(self) -> None:
        """Tear the framework down in a worker, after the training function returned."""
