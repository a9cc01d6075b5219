"""The base class of the callbacks that ``RunConfig(callbacks=[...])`` runs in the driver (Ray Train's names).

It lives in the pure core so that ``RunConfig`` can check its callbacks without importing the trainer; the
trainer calls the hooks (``trainer/callbacks.py``).
"""

from __future__ import annotations

from typing import Any


class UserCallback:
    """The base class of callbacks that ``RunConfig(callbacks=[...])`` runs in the driver; override either hook."""

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        """Handle a completed report round.

        ``run_context`` is the run's ``TrainRunContext``; ``metrics[i]`` is what rank i reported; ``checkpoint``
        the round's committed :class:`trainkeep.Checkpoint` (None for a round without one).
        """

    def after_exception(self, run_context: Any, worker_exceptions: dict[int, BaseException]) -> None:
        """Handle a failed attempt: ``worker_exceptions`` maps each failed rank to its exception (the run may
        still restart, as ``FailureConfig.max_failures`` allows)."""
