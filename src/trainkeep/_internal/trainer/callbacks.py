"""User callbacks run by the driver (``RunConfig(callbacks=[...])``), as Ray Train's ``UserCallback``.

The controller calls :class:`CallbackRunner` after every completed report round and after every failed attempt.
A callback that raises is logged with its traceback and skipped: the round it was told about is already
committed, so it is never lost to a callback (Ray fails the whole run instead).

:class:`TensorBoardCallback` is the callback trainkeep ships: TensorBoard event files of every report's metrics
under ``<run>/tensorboard/``, so ``tensorboard --logdir <run>`` shows the run.
"""

from __future__ import annotations

import logging
import numbers
import os
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from trainkeep._internal.core.user_callback import UserCallback
from trainkeep._internal.engine.checkpoint import Checkpoint
from trainkeep.errors import MissingDependencyError

if TYPE_CHECKING:
    from trainkeep._internal.core.config import RunConfig, ScalingConfig
    from trainkeep._internal.engine.manager import CheckpointManager

logger = logging.getLogger(__name__)

TENSORBOARD_DIR = "tensorboard"
"""The directory of the run that :class:`TensorBoardCallback` writes its event files into."""


class TrainRunContext:
    """What a callback may know about the run (Ray Train's ``TrainRunContext``).

    Attributes:
        run_config, train_loop_config, scaling_config: as given to the trainer.
        run_path: the run's directory on its storage; ``filesystem``: the storage's fsspec filesystem.
        report_index: the index of the report round a callback is being told about (it counts on across
            restarts and resumes of the run; trainkeep's addition).
    """

    def __init__(self, run_config: RunConfig, train_loop_config: dict[str, Any] | None,
                 scaling_config: ScalingConfig, run_path: str, filesystem: Any, is_local: bool) -> None:
        self.run_config, self.train_loop_config, self.scaling_config = run_config, train_loop_config, scaling_config
        self.run_path, self.filesystem, self.is_local = run_path, filesystem, is_local
        self.report_index = -1

    def get_run_config(self) -> RunConfig:
        """Return the run's RunConfig."""
        return self.run_config


class CallbackRunner:
    """Call the run's callbacks for the controller; collects every rank's metrics of each round until it completes."""

    def __init__(self, callbacks: Sequence[UserCallback], context: TrainRunContext | None) -> None:
        self.callbacks, self.context = list(callbacks), context
        self._metrics: dict[int, dict[int, dict[str, Any]]] = {}  # round index -> rank -> metrics

    @classmethod
    def for_run(cls, run_config: RunConfig, train_loop_config: dict[str, Any] | None, scaling_config: ScalingConfig,
                manager: CheckpointManager) -> CallbackRunner:
        """Return the runner of ``run_config.callbacks`` for the run ``manager`` holds open."""
        context = TrainRunContext(run_config, train_loop_config, scaling_config, manager.path, manager.storage.fs,
                                  manager.storage.is_local)
        return cls(run_config.callbacks or [], context)

    def add_metrics(self, index: int, rank: int, metrics: Mapping[str, Any] | None) -> None:
        """Remember what ``rank`` reported in round ``index`` (nothing is kept without callbacks)."""
        if self.callbacks:
            self._metrics.setdefault(index, {})[rank] = dict(metrics or {})

    def after_report(self, index: int, world_size: int, checkpoint: Checkpoint | None) -> None:
        """Tell every callback that round ``index`` completed."""
        by_rank = self._metrics.pop(index, {})
        if not self.callbacks or self.context is None:
            return
        self.context.report_index = index
        metrics = [by_rank.get(rank, {}) for rank in range(world_size)]
        for callback in self.callbacks:
            self._call(callback, "after_report", metrics, checkpoint)

    def after_exception(self, failures: Mapping[int, BaseException]) -> None:
        """Tell every callback that an attempt failed with ``failures`` (rank -> exception); forget its rounds."""
        self._metrics.clear()
        if not failures or self.context is None:
            return
        for callback in self.callbacks:
            self._call(callback, "after_exception", dict(failures))

    def close(self) -> None:
        """Let callbacks that hold resources (TensorBoardCallback's writer) release them; errors are logged."""
        for callback in self.callbacks:
            close = getattr(callback, "close", None)
            if callable(close):
                try:
                    close()
                except Exception:
                    logger.exception("closing callback %s failed", type(callback).__name__)

    def _call(self, callback: UserCallback, hook: str, *args: Any) -> None:
        try:
            getattr(callback, hook)(self.context, *args)
        except Exception:  # the round is committed already: a callback's error must not lose it
            logger.exception("callback %s.%s raised (report round %s); the run goes on without it",
                             type(callback).__name__, hook, self.context.report_index if self.context else "?")


class TensorBoardCallback(UserCallback):
    """Write every report's metrics (rank 0's, nested keys joined with "/") as TensorBoard scalars.

    The event files go to ``log_dir``, by default ``<run>/tensorboard/`` (a run on an object store: a local
    temporary directory whose files are uploaded there every ``upload_interval_s`` and at the end). The step
    is the run's report index, so a resumed run continues its curves. Values that are not real numbers are
    skipped. Uses ``torch.utils.tensorboard`` when torch and tensorboard are installed, else tensorboardX.

    Raises:
        ImportError when neither is installed (``pip install 'trainkeep[tensorboard]'``).
    """

    def __init__(self, log_dir: str | os.PathLike | None = None, upload_interval_s: float = 30.0) -> None:
        self._writer_class = _summary_writer_class()
        self.log_dir = os.fspath(log_dir) if log_dir is not None else None
        self.upload_interval_s = upload_interval_s
        self._writer: Any = None
        self._upload_to: tuple[Any, str] | None = None  # (filesystem, directory) of a remote run
        self._local_dir = ""
        self._uploaded = 0.0

    def after_report(self, run_context: TrainRunContext, metrics: list[dict[str, Any]],
                     checkpoint: Checkpoint | None) -> None:
        """Add rank 0's numeric metrics at step ``run_context.report_index`` and flush them to disk."""
        writer = self._open(run_context)
        for tag, value in _scalars(metrics[0] if metrics else {}):
            writer.add_scalar(tag, value, global_step=run_context.report_index)
        writer.flush()
        if self._upload_to is not None and time.monotonic() - self._uploaded >= self.upload_interval_s:
            self._upload()

    def close(self) -> None:
        """Close the event file (for a remote run: upload it, then remove the local temporary directory)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
            if self._upload_to is not None:
                self._upload()
                shutil.rmtree(self._local_dir, ignore_errors=True)
                self._upload_to = None

    def _open(self, context: TrainRunContext) -> Any:
        if self._writer is None:
            directory = self.log_dir
            if directory is None and context.is_local:
                directory = os.path.join(context.run_path, TENSORBOARD_DIR)
            elif directory is None:
                directory = tempfile.mkdtemp(prefix="trainkeep_tensorboard_")
                self._upload_to = (context.filesystem, f"{context.run_path.rstrip('/')}/{TENSORBOARD_DIR}")
            self._local_dir = directory
            self._writer = self._writer_class(log_dir=directory)
        return self._writer

    def _upload(self) -> None:
        assert self._upload_to is not None
        fs, remote = self._upload_to
        for name in sorted(os.listdir(self._local_dir)):
            fs.put_file(os.path.join(self._local_dir, name), f"{remote}/{name}")
        self._uploaded = time.monotonic()


def _scalars(metrics: Mapping[str, Any], prefix: str = "") -> list[tuple[str, float]]:
    """Return the real-number leaves of ``metrics`` as (keys joined with "/", value); bools are left out.

    NaN and infinities are kept: TensorBoard shows them as they are.
    """
    out: list[tuple[str, float]] = []
    for key, value in metrics.items():
        tag = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.extend(_scalars(value, tag + "/"))
        elif isinstance(value, numbers.Real) and not isinstance(value, bool):
            out.append((tag, float(value)))
    return out


def _summary_writer_class() -> Any:
    try:
        import tensorboard  # noqa: F401  (torch.utils.tensorboard needs it)
        from torch.utils.tensorboard import SummaryWriter

        return SummaryWriter
    except ImportError:
        pass
    try:
        from tensorboardX import SummaryWriter as XWriter

        return XWriter
    except ImportError:
        raise MissingDependencyError("TensorBoardCallback needs tensorboard (with torch) or tensorboardX: "
                          "pip install 'trainkeep[tensorboard]'") from None
