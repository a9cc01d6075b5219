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

from trainkeep._internal.core.config import CheckpointUploadMode
from trainkeep._internal.core.layout import MANIFEST_NAME, is_reserved_file
from trainkeep._internal.core.manifest import FileEntry
from trainkeep._internal.engine.checkpoint import Checkpoint
from trainkeep._internal.engine.manager import CheckpointManager
from trainkeep._internal.storage import iter_files
from trainkeep._internal.storage.local import run_all
from trainkeep._internal.trainer import protocol as p
from trainkeep._internal.trainer import reported
from trainkeep._internal.trainer.callbacks import CallbackRunner
from trainkeep._internal.trainer.failures import AttemptFailed, describe_exit, unpack_exception
from trainkeep._internal.trainer.group import Event, Exited, WorkerGroup
from trainkeep._internal.trainer.interrupt import deferred_sigint
from trainkeep._internal.trainer.rendezvous import Rendezvous
from trainkeep._internal.trainer.rounds import Arrival, Round
from trainkeep._internal.trainer.validation import ValidationRunner
from trainkeep.errors import (
    CheckpointExistsError,
    CollectiveMismatchError,
    InconsistentReportError,
    InvalidCheckpointNameError,
    ReportTimeoutError,
)

logger = logging.getLogger(__name__)

VALIDATION_POLL_S = 0.05
"""How often the driver looks whether a validation ended while a get_all_reported_checkpoints(VALIDATED) waits."""

_WAITS_FOR_COMMIT = (CheckpointUploadMode.SYNC.value, CheckpointUploadMode.NO_UPLOAD.value)


class Controller:
    """Drive one attempt of ``group`` against ``manager`` until every worker returned, or raise AttemptFailed.

    Args:
        manager: the run's open CheckpointManager.
        group: the started worker group (any :class:`~trainkeep._internal.trainer.group.WorkerGroup`).
        timeout_s: how long the ranks that reached a round wait for the others before the attempt fails.
        start: the path of the checkpoint the workers started from, or None.
        callbacks: the run's user callbacks (``RunConfig.callbacks``), told of completed rounds and failures.
    """

    def __init__(self, manager: CheckpointManager, group: WorkerGroup, world_size: int, timeout_s: float,
                 start: str | None, callbacks: CallbackRunner | None = None,
                 validations: ValidationRunner | None = None) -> None:
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
        self._callbacks = callbacks or CallbackRunner([], None)
        self._rendezvous = Rendezvous(world_size)  # trainkeep.collective calls
        self._listings: list[reported.Waiter] = []  # get_all_reported_checkpoints() calls waiting for rounds
        self._validations = validations
        self._requested: dict[int, Any] = {}  # round k -> report(validation=...) of its first checkpointing rank
        self._custom_uploads: set[int] = set()  # rounds whose files a checkpoint_upload_fn uploaded

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
                failed = _combine(self._failures)
                self._callbacks.after_exception(failed.failures)  # the ranks that raised or died, if any
                raise failed
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
            elif isinstance(body, p.Collective):
                self._on_collective(rank, body)
            elif isinstance(body, p.ListReported):
                self._on_list_reported(rank, body)
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
            rnd = self._rounds[k] = Round(self._base + k, time.monotonic())
        if rank == 0:
            rnd.metrics = msg.metrics
        self._callbacks.add_metrics(rnd.index, rank, msg.metrics)
        arrival = Arrival(rank, msg.has_checkpoint, msg.mode, msg.dir_name, msg.files)
        try:
            rnd.add(arrival)
        except InconsistentReportError as exc:
            self._fail(exc, False, rank)
        if msg.has_checkpoint and msg.validation is not False and k not in self._requested:
            try:  # a ValidationTaskConfig travels cloudpickled (its fn_kwargs may hold closures)
                self._requested[k] = pickle.loads(msg.validation) if isinstance(msg.validation, bytes) else True
            except Exception as exc:
                self._fail(exc, False, rank)
        if msg.has_checkpoint and msg.custom_upload:
            self._custom_uploads.add(k)
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
            self.group.send(rank, p.Dest(rnd.staged.path, files, rnd.index - self._base))

    def _on_uploaded(self, rank: int, msg: p.Uploaded) -> None:
        rnd = self._rounds[msg.round]
        rnd.record_upload(rank, msg.entries, msg.skipped or [])
        self._finish_ready_rounds()

    def _finish_ready_rounds(self) -> None:
        while (rnd := self._rounds.get(self._next_k)) is not None and rnd.is_ready(self.world_size):
            self._finish(rnd)
            del self._rounds[self._next_k]
            self._next_k += 1
        self.answer_listings()

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
                entries = self._entries(rnd)
                self._latest = rnd.staged.commit(metrics, entries).path
                requested = self._requested.pop((rnd.index - self._base), False)
                if requested is not False and self._validations is not None:
                    self._validations.request(rnd.name, requested)
        except Exception as exc:  # a storage error: the round fails whole, and the attempt with it
            self._fail(exc, True)
        for arrival in rnd.arrivals.values():
            if arrival.mode in _WAITS_FOR_COMMIT:
                self.group.send(arrival.rank, p.Done(self._latest))
        checkpoint = Checkpoint(self._latest, self.manager.storage.fs) if rnd.name and self._latest else None
        self._callbacks.after_report(rnd.index, self.world_size, checkpoint)  # after the ranks are released

    def _entries(self, rnd: Round) -> list[FileEntry]:
        """Return the manifest's files: the uploads' entries, plus what lies in place (read back from storage).

        A checkpoint_upload_fn may write any files (and over another rank's): its round is read back whole.
        """
        if (rnd.index - self._base) in self._custom_uploads:
            self._custom_uploads.discard(rnd.index - self._base)
            return self._scan_in_place(rnd, [])
        return rnd.entries + (self._scan_in_place(rnd, rnd.entries) if rnd.no_upload else [])

    def _scan_in_place(self, rnd: Round, known: list[FileEntry]) -> list[FileEntry]:
        """Checksum the files in the staged directory that ``known`` does not list (those nobody uploaded), and
        make them durable: a NO_UPLOAD rank wrote them without fsync, and the manifest must follow durable files
        (DESIGN §5, invariant 1). The directory itself is fsynced by the commit; its subdirectories here."""
        assert rnd.staged is not None
        storage, root = self.manager.storage, rnd.staged.path
        uploaded = {e.path for e in known}
        found = [rel for rel in iter_files(storage, root)
                 if rel not in uploaded and not is_reserved_file(rel) and rel != MANIFEST_NAME]
        entries = run_all(lambda rel: FileEntry(rel, *storage.seal(f"{root}/{rel}")), found)  # fsyncs overlap
        subdirs: set[str] = set()
        for rel in found:
            parts = rel.split("/")[:-1]
            subdirs.update("/".join(parts[:i]) for i in range(1, len(parts) + 1))
        for sub in sorted(subdirs, key=len, reverse=True):  # each entry, then the one of the directory above it
            storage.sync_dir(f"{root}/{sub}")
        return entries

    # ------------------------------------------------------------------------------------------ collectives

    def _on_collective(self, rank: int, msg: p.Collective) -> None:
        """Pair a barrier / broadcast call with the other ranks'; release everyone once all arrived."""
        try:
            done = self._rendezvous.arrive(rank, msg.kind, msg.payload, time.monotonic())
        except CollectiveMismatchError as exc:
            self._fail(exc, False, rank)
        self._check_stranded()
        if done is not None:
            for r in range(self.world_size):
                self.group.send(r, p.CollectiveDone(done.arrived.get(0)))

    def _check_stranded(self) -> None:
        stranded = self._rendezvous.stranded(self._finished)
        if stranded is not None:
            rank, gathering = stranded
            raise AttemptFailed(ReportTimeoutError(
                f"rank {rank} returned without calling {gathering.call} (collective call #{gathering.index} of "
                f"this attempt), which rank(s) {sorted(gathering.arrived)} wait in: every worker must call the "
                "same collectives."), False)

    def _on_list_reported(self, rank: int, msg: p.ListReported) -> None:
        deadline = None if msg.timeout_s is None else time.monotonic() + msg.timeout_s
        mode = reported.CheckpointConsistencyMode(msg.consistency_mode)
        self._listings.append(reported.Waiter(rank, self._counts[rank], mode, deadline))
        self.answer_listings()

    def answer_listings(self) -> None:
        """Answer the get_all_reported_checkpoints() calls that may be answered now (see ``reported``)."""
        now = time.monotonic()
        for waiter in list(self._listings):
            with self.manager._mutex:  # a validation's outcome and its retention are one step, not two
                if not reported.is_answerable(waiter, self._next_k, self.manager, now):
                    continue
                answer = reported.listing(self.manager)
            self._listings.remove(waiter)
            self.group.send(waiter.rank, p.Reported(answer))

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
        self._check_stranded()

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
        ends = [t + self.timeout_s for t in started + self._rendezvous.started()]
        ends += [w.deadline for w in self._listings if w.deadline is not None]
        if any(w.mode is reported.CheckpointConsistencyMode.VALIDATED for w in self._listings):
            ends.append(time.monotonic() + VALIDATION_POLL_S)  # a validation ends in another thread: look again
        if not ends:
            return None
        return max(0.0, min(ends) - time.monotonic())

    def _check_timeouts(self) -> None:
        now = time.monotonic()
        for rnd in self._rounds.values():
            if not rnd.is_complete(self.world_size) and now - rnd.started >= self.timeout_s:
                raise AttemptFailed(ReportTimeoutError(
                    f"rank(s) {rnd.missing(self.world_size)} did not reach report round {rnd.index} within "
                    f"{self.timeout_s:g} s of rank(s) {sorted(rnd.arrivals)}: every worker must call report() the "
                    "same number of times (a worker may also be hung). RunConfig(report_timeout_s=...) sets "
                    "this limit."), True)
        late = self._rendezvous.overdue(now, self.timeout_s)
        if late is not None:
            raise AttemptFailed(ReportTimeoutError(
                f"rank(s) {late.missing(self.world_size)} did not reach {late.call} (collective call #{late.index} "
                f"of this attempt) within {self.timeout_s:g} s of rank(s) {sorted(late.arrived)}: every worker "
                "must call the same collectives (a worker may also be hung). RunConfig(report_timeout_s=...) sets "
                "this limit."), True)
        self.answer_listings()

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
