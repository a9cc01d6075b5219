"""The worker side of a run: ``report()``, ``get_checkpoint()`` and ``get_context()``, as in Ray Train.

These functions work inside a training function started by a trainer (``DataParallelTrainer.fit()``); anywhere
else they raise SessionError. ``report()`` is a collective: every worker calls it the same number of times,
and the k-th calls of all workers form round k (see ``trainkeep._internal.trainer.controller``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from multiprocessing.connection import Connection
from typing import Any

import cloudpickle

from trainkeep._internal.core.config import CheckpointUploadMode, ValidationTaskConfig
from trainkeep._internal.engine.checkpoint import Checkpoint
from trainkeep._internal.storage import storage_for
from trainkeep._internal.trainer import protocol as p
from trainkeep._internal.trainer import reported
from trainkeep._internal.trainer.context import TrainContext
from trainkeep._internal.trainer.uploader import AsyncUploader, Inbox
from trainkeep._internal.trainer.uploads import Uploads
from trainkeep.errors import ConfigTypeError, DatasetNotFoundError, SessionError

logger = logging.getLogger(__name__)

_session: Session | None = None


class Session(Uploads):
    """The state of one worker inside a run: its connection to the driver, rank, and latest checkpoint."""

    # An ASYNC report hands its files over without waiting for the driver: a receiver thread (trainer/uploader.py
    # Inbox) then reads the connection. A subclass that reads the connection itself sets this False, and its
    # ASYNC reports wait for their destination in report(), as before.
    background_receive: bool = True

    def __init__(self, conn: Connection, spec: p.WorkerSpec, rank: int, start_checkpoint: str | None,
                 placement: p.Placement | None = None, shards: dict[str, Any] | None = None) -> None:
        self.spec, self.rank, self.context = spec, rank, TrainContext(spec, rank, placement)
        self._shards = shards  # this rank's shard of each dataset; None: not a trainer's run (trainkeep.init())
        self._conn = conn
        self._storage = storage_for(spec.filesystem)
        if spec.storage_wrapper is not None:  # tests only: trainkeep.testing.injection
            self._storage = spec.storage_wrapper(self._storage, "worker")
        self._start = Checkpoint(start_checkpoint, spec.filesystem) if start_checkpoint else None
        self._reports = 0
        self._send_lock = threading.Lock()
        self._uploader: AsyncUploader | None = None
        self._inbox: Inbox | None = None
        self._run_real: str | None = None  # the run directory's real path, once needed
        self.bad_input: BaseException | None = None

    # ------------------------------------------------------------------------------------------ report

    def report(self, metrics: Mapping[str, Any], checkpoint: Checkpoint | None, checkpoint_dir_name: str | None,
               mode: Any, delete_local: bool | None, upload_fn: Any = None, validation: Any = False) -> None:
        """Report this rank's part of the next round (see :func:`trainkeep.report`)."""
        # 1. A failed background upload fails this report.
        if self._uploader is not None:
            self._uploader.raise_failure()
        # 2. Validate everything before anything is sent or written.
        try:
            plan = self._plan(metrics, checkpoint, checkpoint_dir_name, mode, delete_local)
            plan = self._plan_extras(plan, checkpoint, upload_fn, validation, delete_local)
        except Exception as exc:
            self.bad_input = exc
            raise
        # 3. Announce the round; a rank with files learns where they go, and copies them (or hands them over).
        k = self._reports
        self._reports += 1
        self._send(p.Announce(plan.metrics, plan.has_checkpoint, plan.files, plan.dir_name, plan.mode.value,
                              plan.validation, plan.upload_fn is not None))
        if plan.files is not None:
            if plan.mode is CheckpointUploadMode.ASYNC:  # the uploader thread waits for the Dest, not this one
                uploader = self._async_uploader()
                uploader.submit((k, plan, None if self._inbox is not None else self._recv(p.Dest)))
                return
            self._upload((k, plan, None))
        # 4. Wait for every rank (ASYNC) or for the commit and retention (SYNC, NO_UPLOAD).
        self._recv(p.Released if plan.mode is CheckpointUploadMode.ASYNC else p.Done)

    # ------------------------------------------------------------------------------------------ the rest

    def get_checkpoint(self) -> Checkpoint | None:
        """Return the newest committed checkpoint (the start checkpoint before this worker's first report)."""
        if self._reports == 0:
            return self._start
        self._send(p.Query())
        latest = self._recv(p.Latest).latest
        return Checkpoint(latest, self.spec.filesystem) if latest else None

    def collective(self, kind: str, obj: Any = None) -> Any:
        """Wait until every rank made this collective call; return rank 0's object of a broadcast.

        Raises:
            ConfigTypeError (a TypeError) on rank 0 when its object cannot be pickled, before anything is sent.
        """
        payload = None
        if kind == "broadcast" and self.rank == 0:
            try:
                payload = cloudpickle.dumps(obj)
            except Exception as exc:
                self.bad_input = ConfigTypeError(
                    f"broadcast_from_rank_zero() needs an object that can be pickled (with cloudpickle), but rank 0 "
                    f"passed a {type(obj).__name__} that cannot be: {type(exc).__name__}: {exc}")
                raise self.bad_input from exc
        self._send(p.Collective(kind, payload))
        reply = self._recv(p.CollectiveDone)
        return cloudpickle.loads(reply.payload) if reply.payload is not None else None

    def list_reported(self, consistency_mode: Any, timeout_s: Any) -> list[Any]:
        """Return the run's reported checkpoints once this rank's reports are committed (see ``reported``)."""
        try:
            mode, timeout = reported.consistency_mode(consistency_mode), reported.check_timeout(timeout_s)
        except Exception as exc:  # bad input: the run fails with it, without a retry
            self.bad_input = exc
            raise
        self._send(p.ListReported(mode.value, timeout))
        return reported.to_reported(self._recv(p.Reported).checkpoints, self.spec.filesystem)

    def get_dataset_shard(self, dataset_name: str | None) -> Any:
        """Return this rank's shard of the trainer's dataset ``dataset_name`` (see :func:`get_dataset_shard`)."""
        try:
            if self._shards is None:
                raise SessionError(
                    "trainkeep.get_dataset_shard() returns a shard of a trainer's datasets=, and a script that joined "
                    "its run with trainkeep.init() (torchrun, srun, mpirun) has none: load this rank's part of the "
                    "data in the script (e.g. with torch's DistributedSampler, or "
                    "trainkeep.torch.prepare_data_loader), or run the function with a trainer and datasets=")
            try:
                return self._shards[dataset_name]  # type: ignore[index]
            except (KeyError, TypeError):
                raise DatasetNotFoundError(
                    f"Dataset shard for {dataset_name!r} not found: the trainer's datasets are "
                    f"{sorted(self._shards)}. Pass it in the trainer's datasets argument, e.g. "
                    f"DataParallelTrainer(..., datasets={{{dataset_name!r}: ...}})") from None
        except Exception as exc:  # the same call would fail again: the run fails without a retry
            self.bad_input = exc
            raise

    def finish(self) -> None:
        """Wait for this worker's background uploads; raise the first upload error, if any."""
        if self._uploader is not None:
            self._uploader.close()

    def drain(self) -> None:
        """Let the queued background uploads finish after a failure; their own errors are already reported."""
        if self._uploader is not None:
            try:
                self._uploader.close()
            except BaseException as exc:
                logger.debug("a background upload failed too: %r", exc)

    def _send(self, message: Any) -> None:
        with self._send_lock:  # the uploader thread sends too
            self._conn.send(message)

    def _recv(self, kind: type) -> Any:
        try:
            message = self._conn.recv() if self._inbox is None else self._inbox.reply()
        except EOFError:
            raise SessionError("the driver of this run is gone; stopping this worker") from None
        if not isinstance(message, kind):
            raise SessionError(f"protocol error: expected {kind.__name__} from the driver, got {message!r}")
        return message




# ---------------------------------------------------------------------------------------------- public API


def _current(function: str) -> Session:
    if _session is None:
        raise SessionError(
            f"trainkeep.{function}() works only inside a training function run by a trainer; start one with "
            "trainkeep.DataParallelTrainer(train_loop_per_worker, scaling_config=..., run_config=...).fit() "
            "(or trainkeep.torch.TorchTrainer), or call trainkeep.init() first in a script started by torchrun, srun or "
            "mpirun"
        )
    return _session


def install(session: Session | None) -> None:
    """Make ``session`` the current one in this process (the worker does this before the training function)."""
    global _session
    _session = session


def report(
    metrics: Mapping[str, Any],
    checkpoint: Checkpoint | None = None,
    checkpoint_dir_name: str | None = None,
    checkpoint_upload_mode: CheckpointUploadMode = CheckpointUploadMode.SYNC,
    delete_local_checkpoint_after_upload: bool | None = None,
    checkpoint_upload_fn: Callable[[Checkpoint, str], Checkpoint] | None = None,
    validation: bool | ValidationTaskConfig = False,
) -> None:
    """Report this worker's metrics, and optionally checkpoint files, for the next round of the run.

    Every worker must call it the same number of times; the round's metrics are rank 0's, and every worker's
    files go into one checkpoint directory (``checkpoint_dir_name``, default ``checkpoint_NNNNNN``).

    Modes: ``SYNC`` returns once the round is committed and retention ran (then ``get_checkpoint()`` is that
    checkpoint, on every rank); ``ASYNC`` returns once the files are handed to a background uploader (two at most
    in flight; an upload error fails the run at the next report or at the end); ``NO_UPLOAD`` registers a
    directory that already lies inside the run directory, as it is. ``delete_local_checkpoint_after_upload``
    (default: True for ASYNC, else False) removes the local source directory once its files are uploaded.

    ``checkpoint_upload_fn(checkpoint, checkpoint_dir_name) -> Checkpoint`` uploads the checkpoint instead of
    trainkeep: it must copy the files into the run's directory of that name, which does not exist yet, as in Ray
    (``get_context().get_storage().build_checkpoint_path_from_name(checkpoint_dir_name)``) and return a
    Checkpoint of it; trainkeep then reads back what was uploaded for the manifest and commits. ``validation``
    (True, or a ValidationTaskConfig for this checkpoint) queues the checkpoint for the trainer's
    ValidationConfig once it is committed.

    Raises:
        SessionError outside a run; InvalidMetricsError / ScoreTypeError (TypeError) for bad metrics or a
        non-numeric score; ValueError for a bad name, mode, or NO_UPLOAD location, and for a validation
        requested without a checkpoint or without a trainer's ``validation_config``; all before anything is
        written, and they fail the run without a retry.
    """
    _current("report").report(metrics, checkpoint, checkpoint_dir_name, checkpoint_upload_mode,
                              delete_local_checkpoint_after_upload, checkpoint_upload_fn, validation)


def get_checkpoint() -> Checkpoint | None:
    """Return the run's newest committed checkpoint: the one this worker started from, until it reports.

    Raises:
        SessionError outside a run.
    """
    return _current("get_checkpoint").get_checkpoint()


def get_context() -> TrainContext:
    """Return this worker's context (ranks, world size, experiment name, storage).

    Raises:
        SessionError outside a run.
    """
    return _current("get_context").context


def get_all_reported_checkpoints(
    consistency_mode: reported.CheckpointConsistencyMode = reported.CheckpointConsistencyMode.VALIDATED,
    timeout_s: float | None = None,
) -> list[reported.ReportedCheckpoint]:
    """Return the run's committed checkpoints as ReportedCheckpoint(checkpoint, metrics, status), worst first.

    Waits until every report this worker made is committed and, with ``VALIDATED`` (the default), until no
    validation is pending; after ``timeout_s`` seconds it returns what there is (pending checkpoints then show
    ``PENDING_VALIDATION``). The order is the run's ranking, best last (report order without a score attribute).

    Raises:
        SessionError outside a run; ValueError for a bad mode or timeout.
    """
    return _current("get_all_reported_checkpoints").list_reported(consistency_mode, timeout_s)


def get_dataset_shard(dataset_name: str | None = None) -> Any:
    """Return this worker's shard of the trainer's dataset ``dataset_name`` (``datasets={name: ...}``).

    For a sized indexable (a numpy array, a list, a torch Dataset, ...) it is this rank's contiguous block of
    rows, of a natural type (see ``trainkeep._internal.trainer.datasets``); for a ``ray.data.Dataset`` with the
    Ray executor, this rank's ``DataIterator`` of Ray Data's ``streaming_split``, as in Ray Train. The shards of
    all ranks together hold every row once. Call it as often as needed: it returns the same object each time.

    Raises:
        SessionError (a RuntimeError) outside a trainer's training function, and in a script joined to its
        run with ``trainkeep.init()``, which has no datasets; DatasetNotFoundError (a KeyError, as in Ray) for a
        name that is not one of the trainer's datasets: the run then fails without a retry.
    """
    return _current("get_dataset_shard").get_dataset_shard(dataset_name)
