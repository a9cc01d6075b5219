"""The worker side of a run: ``report()``, ``get_checkpoint()`` and ``get_context()``, as in Ray Train.

These functions work inside a training function started by a trainer (``DataParallelTrainer.fit()``); anywhere
else they raise SessionError. ``report()`` is a collective: every worker calls it the same number of times,
and the k-th calls of all workers form round k (see ``trainkeep.trainer.controller``).
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from trainkeep.checkpoint import Checkpoint
from trainkeep.config import CheckpointConfig, CheckpointUploadMode
from trainkeep.errors import ConfigError, ConfigTypeError, SessionError
from trainkeep.layout import MANIFEST_NAME, validate_checkpoint_name
from trainkeep.manifest import FileEntry
from trainkeep.metrics import check_score, normalize_metrics
from trainkeep.storage import list_source_files, storage_for
from trainkeep.storage.fastcopy import hash_file
from trainkeep.trainer import protocol as p
from trainkeep.trainer.failures import pack_exception
from trainkeep.trainer.uploader import AsyncUploader, Inbox

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

    def __init__(self, spec: p.WorkerSpec, rank: int) -> None:
        self._spec, self._rank = spec, rank

    def get_world_rank(self) -> int:
        """Return this worker's rank among all workers, ``0 .. world_size - 1``."""
        return self._rank

    def get_local_rank(self) -> int:
        """Return this worker's rank among the workers of its machine.

        The local executor runs every worker on one machine, so this is the world rank.
        """
        return self._rank

    def get_world_size(self) -> int:
        """Return the number of workers."""
        return self._spec.world_size

    def get_local_world_size(self) -> int:
        """Return the number of workers on this worker's machine: all of them with the local executor."""
        return self._spec.world_size

    def get_node_rank(self) -> int:
        """Return the rank of this worker's machine: always 0 with the local executor (one machine)."""
        return 0

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


class Session:
    """The state of one worker inside a run: its connection to the driver, rank, and latest checkpoint."""

    # An ASYNC report hands its files over without waiting for the driver: a receiver thread (trainer/uploader.py
    # Inbox) then reads the connection. A subclass that reads the connection itself sets this False, and its
    # ASYNC reports wait for their destination in report(), as before.
    background_receive: bool = True

    def __init__(self, conn: Connection, spec: p.WorkerSpec, rank: int, start_checkpoint: str | None) -> None:
        self.spec, self.rank, self.context = spec, rank, TrainContext(spec, rank)
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
               mode: Any, delete_local: bool | None) -> None:
        """Report this rank's part of the next round (see :func:`trainkeep.report`)."""
        # 1. A failed background upload fails this report.
        if self._uploader is not None:
            self._uploader.raise_failure()
        # 2. Validate everything before anything is sent or written.
        try:
            plan = self._plan(metrics, checkpoint, checkpoint_dir_name, mode, delete_local)
        except Exception as exc:
            self.bad_input = exc
            raise
        # 3. Announce the round; a rank with files learns where they go, and copies them (or hands them over).
        k = self._reports
        self._reports += 1
        self._send(p.Announce(plan.metrics if self.rank == 0 else None, plan.has_checkpoint, plan.files,
                              plan.dir_name, plan.mode.value))
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
            raise FileNotFoundError(f"NO_UPLOAD checkpoint directory {checkpoint.path} does not exist")
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
        assert plan.src is not None and plan.files is not None
        dest = known if known is not None else self._dest(k)
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
            "(or trainkeep.torch.TorchTrainer)"
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
) -> None:
    """Report this worker's metrics, and optionally checkpoint files, for the next round of the run.

    Every worker must call it the same number of times; the round's metrics are rank 0's, and every worker's
    files go into one checkpoint directory (``checkpoint_dir_name``, default ``checkpoint_NNNNNN``).

    Modes: ``SYNC`` returns once the round is committed and retention ran (then ``get_checkpoint()`` is that
    checkpoint, on every rank); ``ASYNC`` returns once the files are handed to a background uploader (two at most
    in flight; an upload error fails the run at the next report or at the end); ``NO_UPLOAD`` registers a
    directory that already lies inside the run directory, as it is. ``delete_local_checkpoint_after_upload``
    (default: True for ASYNC, else False) removes the local source directory once its files are uploaded.

    Raises:
        SessionError outside a run; InvalidMetricsError / ScoreTypeError (TypeError) for bad metrics or a
        non-numeric score; ValueError for a bad name, mode, or NO_UPLOAD location; all before anything is
        written, and they fail the run without a retry.
    """
    _current("report").report(metrics, checkpoint, checkpoint_dir_name, checkpoint_upload_mode,
                              delete_local_checkpoint_after_upload)


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
