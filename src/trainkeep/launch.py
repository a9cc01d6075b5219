"""Join a run from a script started by a launcher (torchrun, srun, mpirun): ``init()`` and ``shutdown()``.

Every rank calls ``trainkeep.init(run_config=...)``; then ``report()``, ``get_checkpoint()`` and
``get_context()`` work as inside a trainer, with the same rounds. Rank 0 hosts the controller of
``trainer/controller.py`` in a background thread, over a :class:`~trainkeep._internal.trainer.backends.launched.
LaunchedWorkerGroup` that listens on ``MASTER_ADDR``; every rank, rank 0 included, connects to it and speaks
the round protocol as a worker process of a trainer does. Rank 0 is the single writer of the run.

The launcher owns the processes and their restarts: when a rank fails, the attempt fails on every rank (each
``report()`` raises), and a launcher that restarts the job (``torchrun --max-restarts N``) starts a new rank 0
that reopens the run (a dead holder's lock is taken over) and resumes from the latest committed checkpoint.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import socket
import sys
import threading
from collections.abc import Mapping
from types import TracebackType
from typing import Any, NamedTuple

import cloudpickle

from trainkeep._internal.core.config import (
    DEFAULT_STORAGE_PATH,
    RunConfig,
    ScalingConfig,
    ValidationConfig,
    default_run_name,
)
from trainkeep._internal.engine.manager import CheckpointManager
from trainkeep._internal.storage import resolve
from trainkeep._internal.trainer import protocol as p
from trainkeep._internal.trainer import session as session_module
from trainkeep._internal.trainer.backends.launched import Hello, LaunchedWorkerGroup, Refused, connect
from trainkeep._internal.trainer.callbacks import CallbackRunner
from trainkeep._internal.trainer.context import TrainContext
from trainkeep._internal.trainer.controller import Controller
from trainkeep._internal.trainer.failures import AttemptFailed, pack_exception
from trainkeep._internal.trainer.session import Session
from trainkeep._internal.trainer.validation import pickled_fn, validations_beside
from trainkeep._launch_env import LaunchEnv, authkey, read_launch_env
from trainkeep.errors import ConfigTypeError, SessionError, TrainingFailedError

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 600.0
"""How long ranks wait for each other to join and to reach a round (``RunConfig.report_timeout_s``)."""

STOP_GRACE_S = 30.0
"""After a failure, how long rank 0 waits for the other ranks to end their uploads before it sweeps the round."""

_HOST_JOIN_S = STOP_GRACE_S + 30  # how long rank 0's script waits for its controller thread to close the run


class Joined(NamedTuple):
    """Rank 0's answer to a rank's Hello: the run's spec, where to start, and the rank's place among the hosts."""

    spec: bytes
    start_checkpoint: str | None
    local_rank: int
    local_world_size: int
    node_rank: int


def place(hellos: Mapping[int, Hello]) -> dict[int, tuple[int, int, int]]:
    """Return each rank's (local rank, local world size, node rank): the launcher's values where it set them,
    else counted from the hosts of the ranks (nodes numbered in the order of their lowest rank)."""
    hosts: dict[str, list[int]] = {}
    for rank in sorted(hellos):
        hosts.setdefault(hellos[rank].host, []).append(rank)
    node_of = {host: index for index, host in enumerate(hosts)}
    placed = {}
    for rank, hello in hellos.items():
        peers = hosts[hello.host]
        placed[rank] = (hello.local_rank if hello.local_rank is not None else peers.index(rank),
                        hello.local_world_size if hello.local_world_size is not None else len(peers),
                        hello.node_rank if hello.node_rank is not None else node_of[hello.host])
    return placed


class LaunchedContext(TrainContext):
    """``get_context()`` in a launched script: the ranks the launcher gave, or rank 0 counted."""

    def __init__(self, spec: p.WorkerSpec, rank: int, joined: Joined) -> None:
        super().__init__(spec, rank)
        self._joined = joined

    def get_local_rank(self) -> int:
        """Return this rank's index among the ranks of its node (``LOCAL_RANK``, ``SLURM_LOCALID``, ...)."""
        return self._joined.local_rank

    def get_local_world_size(self) -> int:
        """Return the number of ranks on this rank's node."""
        return self._joined.local_world_size

    def get_node_rank(self) -> int:
        """Return the index of this rank's node (``GROUP_RANK``, ``SLURM_NODEID``, or counted by rank 0)."""
        return self._joined.node_rank


class _Host:
    """Rank 0's side: the open run and the controller thread that serves every rank's connection."""

    def __init__(self, env: LaunchEnv, run_config: RunConfig, key: bytes, timeout_s: float,
                 validation_config: ValidationConfig | None) -> None:
        # 1. Open the run (resume it, take its lock: a dead holder's, e.g. a killed attempt's rank 0, is taken over).
        storage_path = str(run_config.storage_path or DEFAULT_STORAGE_PATH)
        name = run_config.name or _default_name(env, storage_path, run_config)
        run_url = f"{storage_path.rstrip('/')}/{name}"
        storage, run_path = resolve(run_url, run_config.storage_filesystem)
        assert run_config.checkpoint_config is not None
        spec = p.WorkerSpec(_script, None, False, env.world_size, name, storage_path, run_path, storage.fs,
                            run_config.checkpoint_config, None, validation=validation_config is not None)
        self.spec = cloudpickle.dumps(spec)
        if validation_config is not None:
            pickled_fn(validation_config)  # an unpicklable function fails here, before any write
        self.manager = CheckpointManager(run_url, run_config.checkpoint_config, run_config.storage_filesystem)
        try:
            # 2. Listen where the ranks look for rank 0; the driver-side hooks: callbacks and validations.
            self.group = LaunchedWorkerGroup((env.master_addr, env.port), key, timeout_s)
            start = self.manager.resume_checkpoint()
            self.callbacks = CallbackRunner.for_run(run_config, None, ScalingConfig(num_workers=env.world_size),
                                                    self.manager)
        except BaseException:
            self.manager.close("failed")
            raise
        if start is not None:
            logger.info("resuming run %s from checkpoint %s", self.manager.path, start.path)
        self.start = start.path if start is not None else None
        self.manager.protected = {self.start.rstrip("/").rpartition("/")[2]} if self.start else set()
        self.env, self.timeout_s, self.validation_config = env, timeout_s, validation_config
        self.error: BaseException | None = None
        # 3. Serve the ranks in the background: rank 0's own script runs on in the main thread.
        self.thread = threading.Thread(target=self._serve, name="trainkeep-controller", daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        """Admit every rank, run the rounds until each one finished, close the run; on failure tell every rank."""
        controller: Controller | None = None
        status = "failed"
        try:
            self.group.start([{}] * self.env.world_size)
            for rank, (local_rank, local_size, node_rank) in place(self.group.hellos).items():
                self.group.send(rank, Joined(self.spec, self.start, local_rank, local_size, node_rank))
            with validations_beside(self.manager, self.validation_config) as validations:
                controller = Controller(self.manager, self.group, self.env.world_size, self.timeout_s, self.start,
                                        callbacks=self.callbacks, validations=validations)
                controller.run()
            status = "finished"
        except AttemptFailed as failed:
            self.error = _launched_error(failed, self.env)
        except BaseException as exc:
            self.error = exc
        finally:
            if self.error is not None:
                self._stop_ranks()
            if controller is not None:
                controller.discard()
            self.callbacks.close()
            self.manager.protected = set()
            self._close(status)

    def _stop_ranks(self) -> None:
        """Tell every rank why the run failed, and give the uploads in flight time to end before the sweep.

        The launcher, not trainkeep, owns the processes, so they cannot be killed here: a rank learns of the
        failure at its next call and ends, which closes its connection. Staged directories are swept only
        after that (or after the grace), so that a rank's upload never fails on a directory deleted under it.
        """
        self.group.refuse(f"{type(self.error).__name__}: {self.error}")
        self.group.join(min(self.timeout_s, STOP_GRACE_S))

    def _close(self, status: str) -> None:
        """Close the run, then release every rank waiting in shutdown() (or tell it why the close failed)."""
        try:
            self.manager.close(status)
        except BaseException as exc:
            self.error = self.error or exc
        if self.error is None:
            latest = self.manager.latest_checkpoint
            for rank in range(self.env.world_size):
                self.group.send(rank, p.Done(latest.path if latest else None))
        else:
            self.group.refuse(f"{type(self.error).__name__}: {self.error}")
        self.group.kill()


class _LaunchedSession(Session):
    """A Session whose connection goes to rank 0 over the network, and which says why the run ended."""

    def __init__(self, conn: Any, spec: p.WorkerSpec, env: LaunchEnv, joined: Joined, host: _Host | None) -> None:
        super().__init__(conn, spec, env.rank, joined.start_checkpoint)
        self.context = LaunchedContext(spec, env.rank, joined)
        self.env, self.host = env, host
        self.failure: BaseException | None = None  # an uncaught exception of the script (see _excepthook)
        self.background_receive = False  # _recv and _pending_refusal read the connection themselves

    def _send(self, message: Any) -> None:
        try:
            super()._send(message)
        except OSError:
            raise self._ended(self._pending_refusal() or "rank 0 closed the connection") from None

    def _recv(self, kind: type) -> Any:
        try:
            message = self._conn.recv()
        except (EOFError, OSError):
            raise self._ended("rank 0 closed the connection") from None
        if isinstance(message, Refused):
            raise self._ended(message.reason)
        if not isinstance(message, kind):
            raise SessionError(f"protocol error: expected {kind.__name__} from rank 0, got {message!r}")
        return message

    def _pending_refusal(self) -> str:
        with contextlib.suppress(EOFError, OSError):
            if self._conn.poll(0):
                message = self._conn.recv()
                if isinstance(message, Refused):
                    return message.reason
        return ""

    def _ended(self, reason: str) -> BaseException:
        """Return the error that ends this rank: rank 0's own failure on rank 0, else one that says why."""
        if self.host is not None:
            with contextlib.suppress(OSError):
                self._conn.close()  # the controller waits for every connection to end before it sweeps
            self.host.thread.join(timeout=_HOST_JOIN_S)
            if self.host.error is not None:
                return self.host.error
        return TrainingFailedError(
            f"the run failed on rank 0 ({self.env.master_addr}:{self.env.port}), so rank {self.rank} stops: "
            f"{reason}. Rank 0's output says more; a launcher that restarts the job (torchrun --max-restarts N) "
            "resumes the run from its latest committed checkpoint."
        )


_current: _LaunchedSession | None = None


def init(run_config: RunConfig | None = None, *, port: int | None = None,
         validation_config: ValidationConfig | None = None) -> TrainContext:
    """Join the run as one rank of a script started by torchrun, srun or mpirun; return this rank's context.

    A collective: it returns once every rank joined. Rank 0 opens (or resumes) the run and hosts its controller
    on ``MASTER_ADDR`` at ``port`` (default: ``TRAINKEEP_PORT``, else ``MASTER_PORT + 1``). Afterwards
    ``report()``, ``get_checkpoint()`` and ``get_context()`` work as inside a trainer; :func:`shutdown` (also run
    at interpreter exit) ends the session. Without ``RunConfig(name=...)`` the run is named after the job
    (``SLURM_JOB_ID``, torchrun's ``--rdzv-id``) when there is one, else after the time: name it to resume.
    Rank 0 calls ``run_config.callbacks`` and runs the validations of ``validation_config`` (for
    ``report(..., validation=...)``) as a trainer's driver does; give every rank the same arguments.

    Raises:
        ConfigError naming the variables when the launcher's environment is missing or inconsistent;
        ConfigTypeError for a bad ``run_config``; SessionError when this process already joined a run or runs
        inside a trainer; on rank 0 a ReportTimeoutError naming the ranks that did not join within
        ``RunConfig.report_timeout_s`` (default 600 s), and on the other ranks a TrainingFailedError that says
        so; a ReportTimeoutError on a rank that cannot reach rank 0 that long; RunLockedError (rank 0) when a live
        writer holds the run; OSError when rank 0 cannot listen on its address.
    """
    global _current
    if _current is not None or session_module._session is not None:
        raise SessionError("trainkeep.init() was already called in this process (or it runs inside a trainer); "
                           "call trainkeep.shutdown() first")
    if run_config is not None and not isinstance(run_config, RunConfig):
        raise ConfigTypeError(f"run_config must be a trainkeep.RunConfig, got {run_config!r}")
    if validation_config is not None and not isinstance(validation_config, ValidationConfig):
        raise ConfigTypeError(f"validation_config must be None or a trainkeep.ValidationConfig, got "
                              f"{validation_config!r}")
    run_config = run_config or RunConfig()
    # 1. Where this rank stands, from its launcher; the same key on every rank of this attempt.
    env = read_launch_env(os.environ, port)
    key = authkey(env, os.environ)
    timeout_s = float(run_config.report_timeout_s or DEFAULT_TIMEOUT_S)
    # 2. Rank 0 opens the run and listens; then every rank (rank 0 too) connects and waits for the others.
    host = _Host(env, run_config, key, timeout_s, validation_config) if env.rank == 0 else None
    hello = Hello(env.rank, env.world_size, socket.gethostname(), os.getpid(), env.local_rank, env.local_world_size,
                  env.node_rank)
    conn = connect((env.master_addr, env.port), key, hello, timeout_s)
    try:
        answer = conn.recv()
    except (EOFError, OSError):
        answer = Refused("rank 0 closed the connection before every rank joined")
    if not isinstance(answer, Joined):
        conn.close()
        reason = answer.reason if isinstance(answer, Refused) else f"unexpected answer {answer!r}"
        if host is not None:
            host.thread.join(timeout=_HOST_JOIN_S)
            raise host.error or TrainingFailedError(reason)
        raise TrainingFailedError(f"rank 0 turned rank {env.rank} away: {reason}")
    # 3. A session like a trainer's worker has; shutdown() at exit, and an uncaught error fails the round.
    session = _LaunchedSession(conn, cloudpickle.loads(answer.spec), env, answer, host)
    session_module.install(session)
    _current = session
    _install_excepthook()
    atexit.register(_at_exit)
    logger.debug("rank %d of %d joined the run (%s)", env.rank, env.world_size, env.launcher)
    return session.context


def shutdown() -> None:
    """End this rank's session: wait for its uploads, then for every rank to finish and rank 0 to close the run.

    Idempotent, and a no-op when :func:`init` was not called. Run at interpreter exit too.

    Raises:
        TrainingFailedError (or the error of the failed round) when the run failed on any rank; the first
        background upload error of this rank.
    """
    global _current
    session, _current = _current, None
    if session is None:
        return
    session_module.install(None)
    try:
        if session.failure is not None:
            _report_failure(session, session.failure)
            return
        session.finish()
        session._send(p.Finished(None, ""))
        session._recv(p.Done)
    except BaseException as exc:
        if session.failure is None and not isinstance(exc, TrainingFailedError):
            _report_failure(session, exc)
        raise
    finally:
        with contextlib.suppress(OSError):
            session._conn.close()
        if session.host is not None:
            session.host.thread.join(timeout=_HOST_JOIN_S)


def _report_failure(session: _LaunchedSession, exc: BaseException) -> None:
    """Tell rank 0 that this rank failed with ``exc`` (the round fails on every rank), best effort."""
    session.drain()
    data, text = pack_exception(exc)
    with contextlib.suppress(Exception):
        session._send(p.Failed(data, text, exc is session.bad_input))
    with contextlib.suppress(OSError):
        session._conn.close()
    if session.host is not None:  # rank 0: let the controller close the run before the process ends
        session.host.thread.join(timeout=_HOST_JOIN_S)


def _at_exit() -> None:
    """Run shutdown() at interpreter exit; a run that failed must not exit 0, so exit with status 1 then."""
    try:
        shutdown()
    except BaseException as exc:
        logger.error("trainkeep: the run failed: %s", exc)
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(1)


def _install_excepthook() -> None:
    """Remember an uncaught exception of the script, so that the exit handler reports it as this rank's failure."""
    previous = sys.excepthook

    def hook(kind: type[BaseException], value: BaseException, tb: TracebackType | None) -> None:
        if _current is not None and _current.failure is None:
            _current.failure = value
        previous(kind, value, tb)

    sys.excepthook = hook


def _default_name(env: LaunchEnv, storage_path: str, run_config: RunConfig) -> str:
    """Return the job's name when the launcher gives one (a restart resumes it), else a fresh timestamped one."""
    if env.job_id and env.job_id != "none":
        return f"{env.launcher}_{''.join(c if c.isalnum() or c in '-_.' else '_' for c in env.job_id)}"
    storage, root = resolve(storage_path, run_config.storage_filesystem)
    base = name = default_run_name()
    suffix = 1
    while storage.exists(storage.join(root, name)):
        suffix += 1
        name = f"{base}_{suffix}"
    if env.attempt:
        logger.warning("run %s: this is restart %d of the job, but the run has no name, so it starts afresh; pass "
                       "RunConfig(name=...) to resume the same run after a restart", name, env.attempt)
    return name


def _launched_error(failed: AttemptFailed, env: LaunchEnv) -> BaseException:
    """Return the error of a failed launched run: the trainer's, worded for a job whose launcher does restarts."""
    error = failed.to_training_error(1, 0)
    _, _, detail = str(error.args[0]).partition(": ")  # drop "training failed after N attempt(s) (FailureConfig...)"
    restart = f", restart {env.attempt}" if env.attempt else ""
    error.args = (f"the run failed ({env.launcher} job{restart}): {detail}", *error.args[1:])
    error.__cause__ = failed.error
    return error


def _script() -> None:
    """Stand for the training function: in a launched job the script itself is the training function."""
