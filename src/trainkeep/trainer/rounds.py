"""Pairing the workers' reports into rounds: who arrived, the checkpoint's name, whose file is whose.

Pure bookkeeping over plain data; the controller does the I/O.

Naming rule of a round (deterministic whatever order the ranks arrive in): every rank that passes a checkpoint
must pass the same ``checkpoint_dir_name`` (None means the default ``checkpoint_NNNNNN``), and a rank that passes
only a name must pass that same name. A round without any checkpoint ignores names, as Ray Train does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from trainkeep.errors import TrainkeepError
from trainkeep.layout import default_checkpoint_name
from trainkeep.manifest import FileEntry

if TYPE_CHECKING:
    from trainkeep.commit import StagedCheckpoint


class InconsistentReportError(TrainkeepError, ValueError):
    """The ranks' reports of one round disagree (checkpoint names) or collide (the same file from two ranks)."""


@dataclass(frozen=True)
class Arrival:
    """One rank's report in a round."""

    rank: int
    has_checkpoint: bool
    mode: str
    dir_name: str | None
    files: list[str] | None


@dataclass
class Round:
    """The k-th report of every rank, collected until it can be committed (or recorded, without files)."""

    k: int
    index: int
    started: float
    arrivals: dict[int, Arrival] = field(default_factory=dict)
    metrics: dict[str, Any] | None = None
    name: str | None = None
    name_rank: int = -1
    staged: StagedCheckpoint | None = None  # set once the round's directory is staged
    uploads: set[int] = field(default_factory=set)
    entries: list[FileEntry] = field(default_factory=list)
    deferred: list[int] = field(default_factory=list)
    _files: dict[str, int] = field(default_factory=dict)
    _dirs: dict[str, int] = field(default_factory=dict)

    def missing(self, world_size: int) -> list[int]:
        """Return the ranks that have not reached this round yet."""
        return [r for r in range(world_size) if r not in self.arrivals]

    def is_complete(self, world_size: int) -> bool:
        return len(self.arrivals) == world_size

    def is_ready(self, world_size: int) -> bool:
        """Return True when every rank arrived and every upload of the round is in."""
        return self.is_complete(world_size) and not self.uploads and not self.deferred

    @property
    def no_upload(self) -> bool:
        return any(a.has_checkpoint and a.files is None for a in self.arrivals.values())

    def add(self, arrival: Arrival) -> bool:
        """Record ``arrival``; return True when it is the first checkpoint of the round (time to stage).

        Raises:
            InconsistentReportError when its checkpoint name disagrees with an earlier rank's, or one of its
            files is also another rank's (or a file of one is a directory of the other).
        """
        self.arrivals[arrival.rank] = arrival
        if not arrival.has_checkpoint:
            return False
        name = arrival.dir_name or default_checkpoint_name(self.index)
        first = self.name is None
        if first:
            self.name, self.name_rank = name, arrival.rank
        elif name != self.name:
            raise InconsistentReportError(
                f"ranks passed different checkpoint_dir_name values in report round {self.index}: rank "
                f"{self.name_rank} -> {self.name!r}, rank {arrival.rank} -> {name!r}. Every rank that reports a "
                "checkpoint in a round must pass the same checkpoint_dir_name (or none, for the default name)."
            )
        self._claim(arrival.rank, arrival.files or [])
        return first

    def check_names(self) -> None:
        """Check, once every rank arrived, that ranks passing only a name agree with the checkpoint's name.

        Raises:
            InconsistentReportError naming the ranks and names.
        """
        if self.name is None:
            return
        for arrival in self.arrivals.values():
            if arrival.dir_name is not None and arrival.dir_name != self.name:
                raise InconsistentReportError(
                    f"rank {arrival.rank} passed checkpoint_dir_name={arrival.dir_name!r} in report round "
                    f"{self.index}, but the round's checkpoint is named {self.name!r} (from rank {self.name_rank}). "
                    "Pass the same checkpoint_dir_name on every rank."
                )

    def _claim(self, rank: int, files: list[str]) -> None:
        for path in files:
            parents = _parents(path)
            clash = self._files.get(path, self._dirs.get(path))
            if clash is None:
                clash = next((self._files[p] for p in parents if p in self._files), None)
            if clash is not None and clash != rank:
                raise InconsistentReportError(
                    f"file {path!r} of checkpoint {self.name!r} (report round {self.index}) is written by both "
                    f"rank {clash} and rank {rank}; every rank's files go into the same directory, so give each "
                    "rank its own file names (for example model_rank{rank}.pt), or report files from one rank."
                )
        for path in files:
            self._files[path] = rank
            for parent in _parents(path):
                self._dirs.setdefault(parent, rank)


def _parents(path: str) -> list[str]:
    parts = path.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]
