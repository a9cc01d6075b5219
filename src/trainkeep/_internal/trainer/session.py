"""The worker side of a run: ``report()``, ``get_checkpoint()`` and ``get_context()``, as in Ray Train.

These functions work inside a training function started by a trainer (``DataParallelTrainer.fit()``); anywhere
else they raise SessionError. ``report()`` is a collective: every worker calls it the same number of times,
and the k-th calls of all workers form round k (see ``trainkeep._internal.trainer.controller``).
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import cloudpickle

from trainkeep._internal.core.config import CheckpointConfig, CheckpointUploadMode, ValidationTaskConfig
from trainkeep._internal.core.layout import MANIFEST_NAME, validate_checkpoint_name
from trainkeep._internal.core.manifest import FileEntry
from trainkeep._internal.core.metrics import check_score, normalize_metrics
from trainkeep._internal.engine.checkpoint import Checkpoint
from trainkeep._internal.storage import list_source_files, storage_for
from trainkeep._internal.storage.fastcopy import hash_file
from trainkeep._internal.trainer import protocol as p
from trainkeep._internal.trainer import reported
from trainkeep._internal.trainer.failures import pack_exception
from trainkeep._internal.trainer.uploader import AsyncUploader, Inbox
from trainkeep._internal.trainer.validation import check_requested
from trainkeep.errors import CheckpointNotFoundError, ConfigError, ConfigTypeError, SessionError

logger = logging.getLogger(__name__)

_session: Session | None = None


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


@dataclass
class _Plan:
    """A validated report: what to announce and which local files to copy."""

    metrics: dict[str, Any]
    mode: CheckpointUploadMode
    has_checkpoint: bool
    dir_name: str | None
    src: str | None = None
    files: list[str] | None = None
    delete_src: bool = False
    validation: Any = False
    checkpoint: Checkpoint | None = None
    upload_fn: Callable[[Checkpoint, str], Checkpoint] | None = None


class Session:
    """The state of one worker inside a run: its connection to the driver, rank, and latest checkpoint."""

    # An ASYNC report hands its files over without waiting for the driver: a receiver thread (trainer/uploader.py
    # Inbox) then reads the connection. A subclass that reads the connection itself sets this False, and its
    # ASYNC reports wait for their destination in report(), as before.
    background_receive: bool = True

    def __init__(self, conn: Connection, spec: p.WorkerSpec, rank: int, start_checkpoint: str | None,
                 placement: p.Placement | None = None) -> None:
        self.spec, self.rank, self.context = spec, rank, TrainContext(spec, rank, placement)
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

    def _plan(self, metrics: Mapping[str, Any], checkpoint: Checkpoint | None, dir_name: str | None, mode: Any,
              delete_local: bool | None) -> _Plan:
        mode = _upload_mode(mode)
        clean = normalize_metrics(metrics)
        check_score(clean, self.spec.checkpoint_config.checkpoint_score_attribute)
        if checkpoint is not None and not isinstance(checkpoint, Checkpoint):
            raise ConfigTypeError(f"checkpoint must be a trainkeep.Checkpoint or None, got {type(checkpoint).__name__}")
        if dir_name is not None:
            validate_checkpoint_name(dir_name)
        if delete_local is not None and not isinstance(delete_local, bool):
            raise ConfigTypeError(f"delete_local_checkpoint_after_upload must be None, True or False, got "
                                  f"{delete_local!r}")
        if checkpoint is None:
            return _Plan(clean, mode, False, dir_name)
        if mode is CheckpointUploadMode.NO_UPLOAD:
            return _Plan(clean, mode, True, self._in_place_name(checkpoint, dir_name))
        delete = delete_local if delete_local is not None else mode is CheckpointUploadMode.ASYNC
        if not checkpoint.is_local:  # a remote source is downloaded to a temp dir of ours, removed after the upload
            src = checkpoint.to_directory()
            return _Plan(clean, mode, True, dir_name, src, list_source_files(src), True)
        files = list_source_files(checkpoint.path)
        return _Plan(clean, mode, True, dir_name, checkpoint.path, files, delete and self._deletable(checkpoint.path))

    def _plan_extras(self, plan: _Plan, checkpoint: Checkpoint | None, upload_fn: Any, validation: Any,
                     delete_local: bool | None) -> _Plan:
        """Add ``report()``'s validation request and custom uploader to ``plan`` (checked first)."""
        plan.validation = check_requested(validation, checkpoint is not None, self.spec.validation)
        if isinstance(plan.validation, ValidationTaskConfig):  # its fn_kwargs may hold closures: cloudpickle
            try:
                plan.validation = cloudpickle.dumps(plan.validation)
            except Exception as exc:
                raise ConfigTypeError(f"the fn_kwargs of report(validation=...) must be picklable with cloudpickle "
                                      f"to reach the validation: {type(exc).__name__}: {exc}") from exc
        if upload_fn is None:
            return plan
        if not callable(upload_fn):
            raise ConfigTypeError(f"checkpoint_upload_fn must be None or a function (checkpoint, checkpoint_dir_name)"
                                  f" -> Checkpoint, got {upload_fn!r}")
        if plan.mode is CheckpointUploadMode.NO_UPLOAD:
            raise ConfigError("checkpoint_upload_fn uploads a checkpoint, but checkpoint_upload_mode=NO_UPLOAD "
                              "uploads nothing; pass SYNC or ASYNC with it")
        if checkpoint is None:
            return plan
        # the function uploads; this rank announces no file of its own (it claims no path from another rank)
        delete = delete_local if delete_local is not None else plan.mode is CheckpointUploadMode.ASYNC
        delete = delete and checkpoint.is_local and self._deletable(checkpoint.path)
        if plan.src is not None and plan.src != checkpoint.path:  # a remote source was downloaded: not needed
            shutil.rmtree(plan.src, ignore_errors=True)
        return _Plan(plan.metrics, plan.mode, True, plan.dir_name, checkpoint.path, [], delete, plan.validation,
                     checkpoint, upload_fn)

    def _custom_upload(self, plan: _Plan, dest: p.Dest) -> None:
        """Upload with the user's ``checkpoint_upload_fn`` into the staged directory (the driver reads it back).

        Raises:
            ConfigError (a ValueError, as in Ray) when the function returns something other than a Checkpoint of
            the directory it was given.
        """
        assert plan.upload_fn is not None and plan.checkpoint is not None
        name = dest.path.rstrip("/").rpartition("/")[2]
        uploaded = plan.upload_fn(plan.checkpoint, name)
        if not isinstance(uploaded, Checkpoint):
            self.bad_input = ConfigError(f"checkpoint_upload_fn must return a trainkeep.Checkpoint, got "
                                         f"{type(uploaded).__name__}: {uploaded!r}")
            raise self.bad_input
        if not self._is_path(uploaded, dest.path):
            self.bad_input = ConfigError(
                f"checkpoint_upload_fn must upload into the checkpoint directory of the run it is given, "
                f"{dest.path} (get_context().get_storage().build_checkpoint_path_from_name({name!r})), and return "
                f"a Checkpoint of it; it returned {uploaded!r}")
            raise self.bad_input
        if plan.delete_src and plan.src is not None:
            try:
                shutil.rmtree(plan.src)
            except OSError as exc:
                logger.warning("could not delete the local checkpoint %s after its upload: %s", plan.src, exc)

    def _is_path(self, checkpoint: Checkpoint, path: str) -> bool:
        if checkpoint.is_local != self._storage.is_local:
            return False
        if checkpoint.is_local:
            return os.path.realpath(checkpoint.path) == os.path.realpath(path)
        return Checkpoint(checkpoint.path.rstrip("/"), checkpoint.filesystem) == Checkpoint(path.rstrip("/"),
                                                                                             self.spec.filesystem)

    def _in_place_name(self, checkpoint: Checkpoint, dir_name: str | None) -> str:
        """Return the name of a NO_UPLOAD checkpoint, which must be a directory directly inside the run."""
        parent, _, name = checkpoint.path.rstrip("/").rpartition("/")
        run = self.spec.run_path.rstrip("/")
        same = checkpoint.is_local == self._storage.is_local
        if same and checkpoint.is_local:
            same = os.path.realpath(parent) == os.path.realpath(run)
        elif same:
            same = Checkpoint(parent, checkpoint.filesystem) == Checkpoint(run, self.spec.filesystem)
        if not same:
            raise ConfigError(
                f"checkpoint_upload_mode=NO_UPLOAD needs a checkpoint directly inside the run directory {run}, got "
                f"{checkpoint.path}. Write it to get_context().get_storage().build_checkpoint_path_from_name(name), "
                "or report it with SYNC or ASYNC to have it copied."
            )
        validate_checkpoint_name(name)
        if dir_name is not None and dir_name != name:
            raise ConfigError(f"checkpoint_dir_name {dir_name!r} does not match the NO_UPLOAD checkpoint's "
                              f"directory {name!r}; pass the directory's own name, or none")
        if not checkpoint.filesystem.isdir(checkpoint.path):
            raise CheckpointNotFoundError(f"NO_UPLOAD checkpoint directory {checkpoint.path} does not exist")
        return name

    def _deletable(self, src: str) -> bool:
        """Return False for a source that must survive: a committed checkpoint. Raise for the run dir's parents."""
        if not self._storage.is_local:
            return True
        if self._run_real is None:
            self._run_real = os.path.realpath(self.spec.run_path)
        src, run = os.path.realpath(src), self._run_real
        if run == src or run.startswith(src.rstrip(os.sep) + os.sep):
            raise ConfigError(f"delete_local_checkpoint_after_upload would delete {src}, which holds the run "
                              f"directory {run}; write checkpoints to a directory of their own")
        if src.startswith(run + os.sep) and os.path.exists(os.path.join(src, MANIFEST_NAME)):
            logger.debug("not deleting %s after the upload: it is a committed checkpoint of this run", src)
            return False
        return True

    def _upload(self, job: tuple[int, _Plan, p.Dest | None]) -> None:
        """Learn where round k's files go; copy this rank's share there, drop the local source if asked, tell the driver.

        The files outside the share (a lower rank uploads the same path) are only checksummed, so that the driver
        can warn when the copies differ.

        If the worker dies inside, the staged directory holds part of the files and no manifest: the driver
        sweeps it when it discards the round (or the next open of the run does).
        """
        k, plan, known = job
        dest = known if known is not None else self._dest(k)
        if plan.upload_fn is not None:
            self._custom_upload(plan, dest)
            self._send(p.Uploaded(k, [], []))
            return
        assert plan.src is not None and plan.files is not None
        share = plan.files if dest.files is None else dest.files
        # handing the files over (a rename on the same filesystem) is how a source that goes away is uploaded
        entries = self._storage.put_tree(plan.src, dest.path, share, move=plan.delete_src).entries if share else []
        uploaded = set(share)
        skipped = [FileEntry(rel, *hash_file(os.path.join(plan.src, rel))) for rel in plan.files if rel not in uploaded]
        if plan.delete_src:
            try:
                shutil.rmtree(plan.src)
            except OSError as exc:  # the upload is durable; a leftover local copy is not worth failing the run
                logger.warning("could not delete the local checkpoint %s after its upload: %s", plan.src, exc)
        self._send(p.Uploaded(k, entries, skipped))

    def _async_uploader(self) -> AsyncUploader:
        if self._uploader is None:
            if self.background_receive:
                self._inbox = Inbox(self._conn)  # from now on one thread receives, for both waiting threads
            self._uploader = AsyncUploader(self._upload, self._report_upload_failure)
        return self._uploader

    def _dest(self, k: int) -> p.Dest:
        """Wait for the driver to say where the files of round ``k`` go (the training or the uploader thread)."""
        if self._inbox is None:
            return self._recv(p.Dest)
        return self._inbox.dest(k)  # raises SessionError once the driver is gone

    def _report_upload_failure(self, exc: BaseException) -> None:
        data, text = pack_exception(exc)
        try:
            self._send(p.Failed(data, text, False))
        except OSError:  # the driver is gone (the error may be just that): the training thread learns it too
            logger.debug("could not tell the driver of the upload failure %r", exc)

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


def _upload_mode(mode: Any) -> CheckpointUploadMode:
    try:
        return CheckpointUploadMode(mode)
    except ValueError:
        allowed = ", ".join(m.name for m in CheckpointUploadMode)
        raise ConfigError(f"checkpoint_upload_mode must be a CheckpointUploadMode ({allowed}), got {mode!r}") from None


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
    trainkeep: it must copy the files into the run's directory of that name
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

