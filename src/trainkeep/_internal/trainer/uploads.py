"""The upload half of a worker's ``Session``: check a ``report()`` and plan it, then copy (or hand over) its files.

``report()`` validates everything into a ``_Plan`` before anything is sent or written; ``_upload`` then copies
this rank's share of the files into the staged directory the driver names (see ``trainer/controller.py``), or
runs the user's ``checkpoint_upload_fn``. A ``NO_UPLOAD`` checkpoint is registered in place (``_in_place_name``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

import cloudpickle

from trainkeep._internal.core.config import CheckpointUploadMode, ValidationTaskConfig
from trainkeep._internal.core.layout import MANIFEST_NAME, validate_checkpoint_name
from trainkeep._internal.core.manifest import FileEntry
from trainkeep._internal.core.metrics import check_score, normalize_metrics
from trainkeep._internal.engine.checkpoint import Checkpoint
from trainkeep._internal.storage import Storage, list_source_files
from trainkeep._internal.storage.fastcopy import hash_file
from trainkeep._internal.trainer import protocol as p
from trainkeep._internal.trainer.failures import pack_exception
from trainkeep._internal.trainer.uploader import AsyncUploader, Inbox
from trainkeep._internal.trainer.validation import check_requested
from trainkeep.errors import CheckpointNotFoundError, ConfigError, ConfigTypeError

logger = logging.getLogger(__name__)


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


class Uploads:
    """The planning and uploading methods of ``Session`` (trainer/session.py), which owns the state they use."""

    spec: p.WorkerSpec
    bad_input: BaseException | None
    background_receive: bool
    _conn: Connection
    _storage: Storage
    _uploader: AsyncUploader | None
    _inbox: Inbox | None
    _run_real: str | None

    if TYPE_CHECKING:  # Session's connection to the driver (a subclass may override them)
        def _send(self, message: Any) -> None: ...

        def _recv(self, kind: type) -> Any: ...

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
        if self._storage.is_local:  # still empty: the function creates it, as in Ray (e.g. with shutil.copytree)
            with contextlib.suppress(OSError):
                os.rmdir(dest.path)
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


def _upload_mode(mode: Any) -> CheckpointUploadMode:
    try:
        return CheckpointUploadMode(mode)
    except ValueError:
        allowed = ", ".join(m.name for m in CheckpointUploadMode)
        raise ConfigError(f"checkpoint_upload_mode must be a CheckpointUploadMode ({allowed}), got {mode!r}") from None
