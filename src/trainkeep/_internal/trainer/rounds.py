"""Pairing the workers' reports into rounds: who arrived, the checkpoint's name, whose file is whose.

Pure bookkeeping over plain data; the controller does the I/O.

Naming rule of a round (deterministic whatever order the ranks arrive in): every rank that passes a checkpoint
must pass the same ``checkpoint_dir_name`` (None means the default ``checkpoint_NNNNNN``), and a rank that passes
only a name must pass that same name. A round without any checkpoint ignores names, as Ray Train does.

Same-file rule (DESIGN §3): a relative path that several ranks pass is uploaded by the lowest of them only
(:func:`assign_paths`), decided before any bytes move. Identical copies are so stored once; when the others'
copies differ (their checksums come back with their uploads), one warning names the file and the ranks, and the
lowest rank's copy is the one kept. A path that is a file for one rank and a directory for another cannot be
stored at all: that is an error.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from trainkeep._internal.core.layout import default_checkpoint_name
from trainkeep._internal.core.manifest import FileEntry
from trainkeep.errors import InconsistentReportError

if TYPE_CHECKING:
    from trainkeep._internal.engine.commit import StagedCheckpoint

logger = logging.getLogger(__name__)


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
    _files: dict[str, list[int]] = field(default_factory=dict)  # path -> the ranks that pass it, in arrival order
    _dirs: dict[str, int] = field(default_factory=dict)
    _copies: dict[str, dict[int, tuple[int, str]]] = field(default_factory=dict)  # path -> rank -> (size, checksum)
    _all_arrived: bool = False

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

    def add(self, arrival: Arrival) -> None:
        """Record ``arrival``; the first rank with a checkpoint names the round's checkpoint.

        Raises:
            InconsistentReportError when its checkpoint name disagrees with an earlier rank's, or one of its
            files is a directory of another rank's (or the other way round).
        """
        self.arrivals[arrival.rank] = arrival
        if not arrival.has_checkpoint:
            return
        name = arrival.dir_name or default_checkpoint_name(self.index)
        if self.name is None:
            self.name, self.name_rank = name, arrival.rank
        elif name != self.name:
            raise InconsistentReportError(
                f"ranks passed different checkpoint_dir_name values in report round {self.index}: rank "
                f"{self.name_rank} -> {self.name!r}, rank {arrival.rank} -> {name!r}. Every rank that reports a "
                "checkpoint in a round must pass the same checkpoint_dir_name (or none, for the default name)."
            )
        self._claim(arrival.rank, arrival.files or [])

    def check_names(self) -> None:
        """Check, once every rank arrived, that ranks passing only a name agree with the checkpoint's name.

        From then on the ranks that pass each file are known, so copies that differ are warned about as soon as
        all of them are in (see :meth:`record_upload`).

        Raises:
            InconsistentReportError naming the ranks and names.
        """
        self._all_arrived = True
        for path, copies in self._copies.items():
            self._compare(path, copies)
        if self.name is None:
            return
        for arrival in self.arrivals.values():
            if arrival.dir_name is not None and arrival.dir_name != self.name:
                raise InconsistentReportError(
                    f"rank {arrival.rank} passed checkpoint_dir_name={arrival.dir_name!r} in report round "
                    f"{self.index}, but the round's checkpoint is named {self.name!r} (from rank {self.name_rank}). "
                    "Pass the same checkpoint_dir_name on every rank."
                )

    def take_destinations(self) -> list[tuple[int, list[str]]]:
        """Return (rank, the files it uploads) for each waiting rank whose share is decided, and stop waiting.

        A rank's share is decided once every lower rank has arrived, since only a lower rank can take a path
        from it; rank 0's share is its whole file list at once.
        """
        ready = [r for r in self.deferred if all(lower in self.arrivals for lower in range(r))]
        if not ready:
            return []
        shares = assign_paths({r: a.files for r, a in self.arrivals.items() if a.has_checkpoint})
        self.deferred = [r for r in self.deferred if r not in ready]
        return [(r, shares[r]) for r in ready]

    def record_upload(self, rank: int, entries: list[FileEntry], skipped: Iterable[FileEntry] = ()) -> None:
        """Record that ``rank`` uploaded ``entries``; ``skipped`` are its copies of files a lower rank uploaded.

        Once every rank arrived and every copy of a path is in, copies that differ from the stored one are
        logged in one warning that names the file and the ranks.
        """
        self.uploads.discard(rank)
        self.entries.extend(entries)
        for entry in [*entries, *skipped]:
            copies = self._copies.setdefault(entry.path, {})
            copies[rank] = (entry.size, entry.checksum)
            if self._all_arrived:
                self._compare(entry.path, copies)

    def _compare(self, path: str, copies: dict[int, tuple[int, str]]) -> None:
        """Warn once, when every copy of ``path`` is in, if they differ from the lowest rank's."""
        if len(copies) < 2 or len(copies) != len(self._files.get(path, ())):
            return
        kept = min(copies)
        differing = sorted(r for r, copy in copies.items() if copy != copies[kept])
        if differing:
            who = f"rank {differing[0]} differs" if len(differing) == 1 else f"ranks {_ranks(differing)} differ"
            logger.warning(
                "file %r of checkpoint %r (report round %d) was passed by ranks %s with different content "
                "(%s from rank %d); kept rank %d's copy, the lowest rank's",
                path, self.name, self.index, _ranks(sorted(copies)), who, kept, kept)

    def _claim(self, rank: int, files: list[str]) -> None:
        for path in files:
            clash = self._dirs.get(path)  # this rank's file is another rank's directory ...
            if clash is None:  # ... or this rank's directory is another rank's file
                clash = next((self._files[p][0] for p in _parents(path) if p in self._files), None)
            if clash is not None and clash != rank:
                raise InconsistentReportError(
                    f"{path!r} of checkpoint {self.name!r} (report round {self.index}) is a file for one of ranks "
                    f"{min(clash, rank)} and {max(clash, rank)} and a directory for the other; every rank's files "
                    "go into the same directory, so a path cannot be both. Rename one of them."
                )
        for path in files:
            self._files.setdefault(path, []).append(rank)
            for parent in _parents(path):
                self._dirs.setdefault(parent, rank)


def assign_paths(announcements: Mapping[int, list[str] | None]) -> dict[int, list[str]]:
    """Return which files each rank uploads: every path goes to the lowest rank that announced it.

    ``announcements`` maps a rank to its file list (None for a rank that uploads nothing, as NO_UPLOAD). The
    result has an entry for every rank, each list in that rank's own order; every announced path is in exactly
    one list.
    """
    owner: dict[str, int] = {}
    for rank in sorted(announcements):
        for path in announcements[rank] or []:
            owner.setdefault(path, rank)
    return {rank: [path for path in files or [] if owner[path] == rank] for rank, files in announcements.items()}


def _ranks(ranks: list[int]) -> str:
    return ", ".join(str(r) for r in ranks)


def _parents(path: str) -> list[str]:
    parts = path.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]
