"""Collectives across the workers of a run, as ``ray.train.collective``: ``barrier()`` and
``broadcast_from_rank_zero(data)``.

They travel the same connection to the driver as ``report()`` (no second channel and no ``torch.distributed``
needed): the c-th collective call of every rank forms collective c, and every rank must make the same calls in
the same order. A rank that never arrives fails the attempt after ``RunConfig.report_timeout_s``, with an error
naming it; a rank that returns from its training function while others wait in a collective fails it at once.
"""

from __future__ import annotations

from typing import Any, TypeVar

from trainkeep._internal.trainer import session

T = TypeVar("T")


def barrier() -> None:
    """Wait until every worker of the run has called ``barrier()``.

    Raises:
        SessionError outside a run (the attempt fails with ReportTimeoutError when a rank never arrives).
    """
    session._current("collective.barrier").collective("barrier")


def broadcast_from_rank_zero(data: T) -> T:
    """Return rank 0's ``data`` on every worker (each rank passes its own; only rank 0's is sent).

    Raises:
        SessionError outside a run; a TypeError (ConfigTypeError) on rank 0 when ``data`` cannot be pickled
        with cloudpickle.
    """
    result: Any = session._current("collective.broadcast_from_rank_zero").collective("broadcast", data)
    return result


__all__ = ["barrier", "broadcast_from_rank_zero"]
