"""The driver's side of one attempt: pair the workers' reports into rounds, stage and commit, notice failures.

The controller is the only writer of the run (through the CheckpointManager it is given). It is event driven:
it blocks on the workers' connections and process handles together, so a report, an upload, a return or a
death is handled the moment it happens, and the only timer is the report timeout of a round that some ranks
reached and others did not.

Rounds are finished strictly in order (round k+1 waits for round k's uploads), so report indices, the history
and the manifests agree whatever order the workers' messages arrive in.
"""

from __future__ import annotations

import logging
import pickle
import time
from typing import Any

from trainkeep.config import CheckpointUploadMode
from trainkeep.errors import CheckpointExistsError, InvalidCheckpointNameError, ReportTimeoutError
from trainkeep.layout import MANIFEST_NAME, is_reserved_file
from trainkeep.manager import CheckpointManager
from trainkeep.manifest import FileEntry
from trainkeep.storage import iter_files
from trainkeep.trainer import protocol as p
from trainkeep.trainer.failures import AttemptFailed, describe_exit, unpack_exception
from trainkeep.trainer.group import Event, Exited, WorkerGroup
from trainkeep.trainer.interrupt import deferred_sigint
from trainkeep.trainer.rounds import Arrival, InconsistentReportError, Round

logger = logging.getLogger(__name__)

_WAITS_FOR_COMMIT = (CheckpointUploadMode.SYNC.value, CheckpointUploadMode.NO_UPLOAD.value)


class Controller:
    """Drive one attempt of ``group`` against ``manager`` until every worker returned, or raise AttemptFailed.

    Args:
        manager: the run's open CheckpointManager.
        group: the started worker group (any :class:`~trainkeep.trainer.group.WorkerGroup`).
        timeout_s: how long the ranks that reached a round wait for the others before the attempt fails.
        start: the path of the checkpoint the workers started from, or None.
    """

    def __init__(self, manager: CheckpointManager, group: WorkerGroup, world_size: int, timeout_s: float,
                 start: str | None) -> None:
        self.manager, self.group, self.world_size, self.timeout_s = manager, group, world_size, timeout_s
        self._base = manager.next_round
        self._rounds: dict[int, Round] = {}
        self._next_k = 0
        self._counts = [0] * world_size
        self._finished: dict[int, int] = {}
        self._return_value: bytes | None = None
        self._latest = start
        self._failures: list[AttemptFailed] = []
        self._committed = {record.name for record in manager.records()}

    # ------------------------------------------------------------------------------------------ the loop

    def run(self) -> Any:
        """Handle the workers' messages until all of them returned; return rank 0's return value.

        Raises:
            AttemptFailed when a worker raised or died, reports were uneven or timed out, a round was
            inconsistent, or a commit failed. Staged directories of unfinished rounds are left for ``discard``.
        """
        while len(self._finished) < self.world_size:
            events = self.group.wait(self._wait_timeout())
            with deferred_sigint():  # a Ctrl-C stops the attempt between two events, never inside a commit
                for event in events:
                    self._handle(event)
            if self._failures:
                raise _combine(self._failures)
            self._check_timeouts()
        if self._rounds:  # every rank returned, yet a round is unfinished: a bug, not a hang
            raise AttemptFailed(RuntimeError(f"report rounds {sorted(self._rounds)} never completed"), False)
        return self._load_return_value()

    def discard(self) -> None:
        """Sweep the staged directories of unfinished rounds (call only once every worker is dead).

        If the driver dies inside, the directories left have an intent record and no manifest: the next open
        of the run sweeps them.
        """
        for rnd in self._rounds.values():
            if rnd.staged and rnd.name is not None:
                logger.info("discarding report round %d: its checkpoint %s was not committed", rnd.index, rnd.name)
                self.manager.abort(rnd.name)
        self._rounds.clear()

    def _handle(self, event: Event) -> None:
        try:
            if isinstance(event, Exited):
                self._on_exit(event.rank, event.returncode)
                return
            rank, body = event
            if isinstance(body, p.Announce):
                self._on_announce(rank, body)
            elif isinstance(body, p.Uploaded):
                self._on_uploaded(rank, body)
            elif isinstance(body, p.Query):
                self.group.send(rank, p.Latest(self._latest))
            elif isinstance(body, p.Finished):
                self._on_finished(rank, body)
            elif isinstance(body, p.Failed):
                error = unpack_exception(body.error)
                self._fail(error, not body.bad_input, rank, body.traceback)
        except AttemptFailed as failed:
            self._failures.append(failed)

    # ------------------------------------------------------------------------------------------ reports

    def _on_announce(self, rank: int, msg: p.Announce) -> None:
        k = self._counts[rank]
        self._counts[rank] += 1
        self._check_not_ahead(rank, k)
        rnd = self._rounds.get(k)
        if rnd is None:
            rnd = self._rounds[k] = Round(k, self._base + k, time.monotonic())
        if rank == 0:
            rnd.metrics = msg.metrics
        arrival = Arrival(rank, msg.has_checkpoint, msg.mode, msg.dir_name, msg.files)
        try:
            rnd.add(arrival)
        except InconsistentReportError as exc:
            self._fail(exc, False, rank)
        if msg.has_checkpoint and msg.files is not None:
            rnd.uploads.add(rank)
            rnd.deferred.append(rank)
        self._try_stage(rnd)  # any arrival may complete the lower ranks that a waiting uploader's share needs
        if rnd.is_complete(self.world_size):
            self._on_complete(rnd)

    def _on_complete(self, rnd: Round) -> None:
        """Every rank reached ``rnd``: check the names, stage if still pending, release the barrier."""
        try:
            rnd.check_names()
        except InconsistentReportError as exc:
            self._fail(exc, False, rnd.name_rank)
        self._try_stage(rnd)
        for arrival in rnd.arrivals.values():
            if arrival.mode == CheckpointUploadMode.ASYNC.value and not arrival.has_checkpoint:
                self.group.send(arrival.rank, p.Released(self._latest))
        self._finish_ready_rounds()

    def _try_stage(self, rnd: Round) -> None:
        """Stage the round's checkpoint directory (intent + mkdir) and tell the waiting uploaders where it is.

        The manager decides whether the name may be staged. A directory that already exists is ours to use only
        when a NO_UPLOAD rank of this round wrote it; until the round is complete that cannot be ruled out, so
        staging waits (a committed name fails at once). If the driver dies after staging, the directory is
        debris with an intent record, swept by the next open.
        """
        if rnd.staged is None and rnd.name is not None:
            try:
                rnd.staged = self.manager.stage(rnd.name, existing_ok=rnd.no_upload)
            except InvalidCheckpointNameError as exc:
                self._fail(exc, False, rnd.name_rank)
            except CheckpointExistsError as exc:
                committed = any(record.name == rnd.name for record in self.manager.records())
                if committed or rnd.is_complete(self.world_size):
                    self._fail(exc, False, rnd.name_rank)
                return
        if rnd.staged is not None:
            self._send_destinations(rnd)

    def _send_destinations(self, rnd: Round) -> None:
        assert rnd.staged is not None
        for rank, files in rnd.take_destinations():  # each path to one rank only (rounds.assign_paths)
            self.group.send(rank, p.Dest(rnd.staged.path, files, rnd.k))

    def _on_uploaded(self, rank: int, msg: p.Uploaded) -> None:
        rnd = self._rounds[msg.round]
        rnd.record_upload(rank, msg.entries, msg.skipped or [])
        self._finish_ready_rounds()

    def _finish_ready_rounds(self) -> None:
        while (rnd := self._rounds.get(self._next_k)) is not None and rnd.is_ready(self.world_size):
            self._finish(rnd)
            del self._rounds[self._next_k]
            self._next_k += 1

    def _finish(self, rnd: Round) -> None:
        """Commit the round's staged checkpoint (or record its metrics), then release the ranks that wait for it.

        The staged checkpoint's commit is the commit point (the manifest): if the driver dies before it, the
        round is debris swept by the next open; after it, the checkpoint exists and the index and history are
        repaired from its manifest if needed.
        """
        metrics = rnd.metrics if rnd.metrics is not None else {}
        try:
            if rnd.name is None:
                self.manager.record(metrics)
            else:
                assert rnd.staged is not None  # a complete round with a name was staged, or the attempt failed
                entries = rnd.entries + (self._scan_in_place(rnd) if rnd.no_upload else [])
                self._latest = rnd.staged.commit(metrics, entries).path
        except Exception as exc:  # a storage error: the round fails whole, and the attempt with it
            self._fail(exc, True)
        for arrival in rnd.arrivals.values():
            if arrival.mode in _WAITS_FOR_COMMIT:
                self.group.send(arrival.rank, p.Done(self._latest))

    def _scan_in_place(self, rnd: Round) -> list[FileEntry]:
        """Checksum the files a NO_UPLOAD rank left in the staged directory (those nobody uploaded)."""
        assert rnd.staged is not None
        storage, root = self.manager.storage, rnd.staged.path
        uploaded = {e.path for e in rnd.entries}
        entries = []
        for rel in iter_files(storage, root):
            if rel in uploaded or is_reserved_file(rel) or rel == MANIFEST_NAME:
                continue
            size, digest = storage.checksum(f"{root}/{rel}")
            entries.append(FileEntry(rel, size, digest))
        return entries

    # ------------------------------------------------------------------------------------------ ends

    def _on_finished(self, rank: int, msg: p.Finished) -> None:
        self._finished[rank] = self._counts[rank]
        if rank == 0:
            self._return_value = msg.return_value
            if msg.warning:
                logger.warning("%s", msg.warning)
        ahead = [r for r in range(self.world_size) if self._counts[r] > self._counts[rank]]
        if ahead:
            self._uneven(rank, ahead)

    def _check_not_ahead(self, rank: int, k: int) -> None:
        done = [r for r, count in self._finished.items() if count <= k]
        if done:
            self._uneven(done[0], [rank])

    def _uneven(self, finished: int, ahead: list[int]) -> None:
        count = self._finished[finished]
        raise AttemptFailed(ReportTimeoutError(
            f"rank {finished} returned after {count} report() call(s) in this attempt, but rank(s) {ahead} "
            f"reported more (report round {self._base + count} can never complete). Every worker must call "
            "report() the same number of times."), False)

    def _on_exit(self, rank: int, returncode: int | None) -> None:
        if rank in self._finished:
            if returncode:
                logger.warning("worker rank %d %s after its training function returned", rank,
                               describe_exit(returncode))
            return
        where = self.group.describe(rank)
        self._fail(RuntimeError(f"worker rank {rank} ({where}) {describe_exit(returncode)} while training"),
                   True, rank)

    def _wait_timeout(self) -> float | None:
        started = [r.started for r in self._rounds.values() if not r.is_complete(self.world_size)]
        if not started:
            return None
        return max(0.0, min(started) + self.timeout_s - time.monotonic())

    def _check_timeouts(self) -> None:
        now = time.monotonic()
        for rnd in self._rounds.values():
            if not rnd.is_complete(self.world_size) and now - rnd.started >= self.timeout_s:
                raise AttemptFailed(ReportTimeoutError(
                    f"rank(s) {rnd.missing(self.world_size)} did not reach report round {rnd.index} within "
                    f"{self.timeout_s:g} s of rank(s) {sorted(rnd.arrivals)}: every worker must call report() the "
                    "same number of times (a worker may also be hung). RunConfig(report_timeout_s=...) sets "
                    "this limit."), True)

    def _fail(self, error: BaseException, retryable: bool, rank: int | None = None, tb: str = "") -> None:
        failures = {rank: error} if rank is not None else {}
        raise AttemptFailed(error, retryable, failures, {rank: tb} if rank is not None and tb else {})

    def _load_return_value(self) -> Any:
        """Return rank 0's return value, or None (with a warning) when it cannot be unpickled here."""
        if self._return_value is None:
            return None
        try:
            return pickle.loads(self._return_value)
        except Exception as exc:  # the training finished: its checkpoints count, the value is dropped (as Ray does)
            logger.warning("rank 0's return value could not be unpickled in the driver, so Result.return_value "
                           "is None: %s: %s", type(exc).__name__, exc)
            return None


def _combine(failures: list[AttemptFailed]) -> AttemptFailed:
    """Merge the failures seen in one batch of events: the first one's error, every rank's exception."""
    combined = AttemptFailed(failures[0].error, all(f.retryable for f in failures))
    for failed in failures:
        for rank, exc in failed.failures.items():
            combined.failures.setdefault(rank, exc)
        for rank, text in failed.tracebacks.items():
            combined.tracebacks.setdefault(rank, text)
    return combined
