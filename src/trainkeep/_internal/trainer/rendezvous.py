"""The driver's side of ``trainkeep.collective``: pairing the ranks' barrier and broadcast calls.

Pure bookkeeping, like ``rounds``: the c-th collective call of every rank forms collective c. It completes when
every rank arrived; the ranks that arrived wait until then (the controller's report timeout bounds that wait).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from trainkeep.errors import CollectiveMismatchError

CALLS = {"barrier": "barrier()", "broadcast": "broadcast_from_rank_zero()"}


@dataclass
class Gathering:
    """Collective ``index``: which ranks arrived, and rank 0's payload of a broadcast."""

    index: int
    kind: str
    started: float
    arrived: dict[int, bytes | None] = field(default_factory=dict)

    @property
    def call(self) -> str:
        return CALLS.get(self.kind, self.kind)

    def missing(self, world_size: int) -> list[int]:
        return [r for r in range(world_size) if r not in self.arrived]


class Rendezvous:
    """The open collectives of one attempt."""

    def __init__(self, world_size: int) -> None:
        self.world_size = world_size
        self._counts = [0] * world_size
        self._open: dict[int, Gathering] = {}

    def arrive(self, rank: int, kind: str, payload: bytes | None, now: float) -> Gathering | None:
        """Record that ``rank`` called collective ``kind``; return the gathering when it is complete.

        Raises:
            CollectiveMismatchError when an earlier rank called a different collective at this point.
        """
        index = self._counts[rank]
        self._counts[rank] += 1
        gathering = self._open.setdefault(index, Gathering(index, kind, now))
        if gathering.kind != kind:
            raise CollectiveMismatchError(
                f"rank {rank} called {CALLS.get(kind, kind)} as its collective call #{index}, but rank(s) "
                f"{sorted(gathering.arrived)} called {gathering.call}: every rank must call the same collectives "
                "in the same order")
        gathering.arrived[rank] = payload
        if len(gathering.arrived) < self.world_size:
            return None
        del self._open[index]
        return gathering

    def started(self) -> list[float]:
        """Return when each open collective's first rank arrived."""
        return [g.started for g in self._open.values()]

    def overdue(self, now: float, timeout_s: float) -> Gathering | None:
        """Return an open collective whose first rank has waited ``timeout_s`` or longer, if any."""
        return next((g for g in self._open.values() if now - g.started >= timeout_s), None)

    def stranded(self, finished: Iterable[int]) -> tuple[int, Gathering] | None:
        """Return (a rank that returned, a collective it never called that others wait in), if any."""
        for rank in finished:
            for gathering in self._open.values():
                if rank not in gathering.arrived:
                    return rank, gathering
        return None
