"""The entry point of a worker process: boot, run the training function inside a session, report the end.

Started by ``backends.local`` as ``python -c "...; main()" FD PARENT_PID``: FD is this worker's end of its
connection to the driver. ``backends.ray`` calls :func:`serve` in a Ray actor, on a TCP connection instead. Nothing of the user's ``__main__`` is imported; the training function arrives
pickled with cloudpickle.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from multiprocessing.connection import Connection
from typing import Any

import cloudpickle

from trainkeep._internal.trainer import datasets, sources
from trainkeep._internal.trainer import protocol as p
from trainkeep._internal.trainer import session as session_module
from trainkeep._internal.trainer.failures import pack_exception


def main(argv: list[str] | None = None) -> None:
    """Run one worker; exit 0 when the training function returned, 1 when it raised."""
    args = sys.argv[1:] if argv is None else argv
    fd, parent_pid = int(args[0]), int(args[1])
    _die_with_parent(parent_pid)
    conn = Connection(fd)
    code = serve(conn)
    conn.close()
    sys.exit(code)


def serve(conn: Connection, ray_shards: dict[str, Any] | None = None) -> int:
    """Receive the Boot message on ``conn``, run the training function it names; return the exit code.

    The entry of every executor: a local worker process calls it on its socket pair, a Ray actor on its TCP
    connection to the driver (with its ``ray.data`` shards, ``ray_shards``, handed over by Ray).
    """
    try:
        boot: p.Boot = conn.recv()
    except (EOFError, OSError):
        return 1
    for entry in reversed(boot.sys_path):  # the driver's import path, so functions pickled by reference load
        if entry not in sys.path:
            sys.path.insert(0, entry)
    code = run(conn, boot, ray_shards)
    with contextlib.suppress(Exception):
        sys.stdout.flush()
        sys.stderr.flush()
    return code


def run(conn: Connection, boot: p.Boot, ray_shards: dict[str, Any] | None = None) -> int:
    """Run the training function of ``boot`` in a session on ``conn``; return the exit code."""
    session: session_module.Session | None = None
    try:
        spec: p.WorkerSpec = cloudpickle.loads(boot.spec)
        with contextlib.suppress(Exception):  # only cosmetic: tracebacks show the user's files and lines
            sources.restore_files(spec.train_fn, spec.code_files)
        shards = None if spec.datasets is None else datasets.worker_shards(
            spec.datasets, boot.shards, boot.rank, spec.world_size, ray_shards)
        session = session_module.Session(conn, spec, boot.rank, boot.start_checkpoint, boot.placement, shards)
        session_module.install(session)
        spec.setup.start(session.context, spec)
        value = _call(spec)
        session.finish()
        spec.setup.stop()
        packed, warning = _pack_return_value(value) if boot.rank == 0 else (None, "")
        conn.send(p.Finished(packed, warning))
        return 0
    except BaseException as exc:
        if session is not None:
            session.drain()  # reports made before the failure still commit: their uploads finish first
        data, text = pack_exception(_from_user_frames(exc))
        # a function that cannot even be loaded here, or a bad report, would fail the same way again
        bad_input = session is None or exc is session.bad_input
        with contextlib.suppress(OSError):
            conn.send(p.Failed(data, text, bad_input))
        return 1
    finally:
        session_module.install(None)


def _from_user_frames(exc: BaseException) -> BaseException:
    """Drop this module's own frames from the top of ``exc``'s traceback (it starts at the user's function)."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None and tb.tb_frame.f_code.co_filename == __file__:
        tb = tb.tb_next
    return exc.with_traceback(tb)


def _call(spec: p.WorkerSpec) -> Any:
    if spec.takes_config:
        return spec.train_fn(spec.config if spec.config is not None else {})
    return spec.train_fn()


def _pack_return_value(value: Any) -> tuple[bytes | None, str]:
    """Return ``value`` pickled, or None and a warning when it cannot be (the training still succeeded)."""
    if value is None:
        return None, ""
    try:
        return cloudpickle.dumps(value), ""
    except Exception as exc:
        return None, (f"the training function's return value on rank 0 ({type(value).__name__}) could not be "
                      f"pickled, so Result.return_value is None: {type(exc).__name__}: {exc}")


def _die_with_parent(parent_pid: int) -> None:
    """Ask Linux to SIGKILL this worker when the driver dies; exit now if it already did."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    if os.getppid() != parent_pid:
        sys.exit(1)
