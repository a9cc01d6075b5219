"""RayWorkerGroup: the workers of one attempt as Ray actors, placed on a Ray cluster by a placement group.

Each actor runs the same worker entry as a local worker process (``trainer.worker.serve``) on a TCP connection
back to a listener the driver opens for the attempt, so the round protocol, the commits and the failure
handling are the local executor's code, unchanged. Ray only places, starts and kills the workers: no message
and no checkpoint byte travels through Ray's object store; workers write their files straight to the run's
storage, and the driver stays its single writer.

A connection is authenticated with a fresh random key per attempt (``multiprocessing``'s HMAC challenge)
before anything on it is unpickled. A worker's death is seen twice over: its connection ends (its process
died) or Ray reports its actor dead (its node died, even if no socket noticed). Ray is imported lazily.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import socket
import time
from collections.abc import Callable
from multiprocessing.connection import Connection, answer_challenge, deliver_challenge, wait
from typing import Any

from trainkeep._internal.core.config import ScalingConfig
from trainkeep._internal.trainer.backends.placement import Landing, assign_ranks, check_fits, worker_bundle
from trainkeep._internal.trainer.datasets import DataConfig, split_ray
from trainkeep._internal.trainer.group import Event, Exited, Message, WorkerGroup
from trainkeep._internal.trainer.protocol import Layout
from trainkeep.errors import ConfigError, PlacementTimeoutError, WorkerStartError

logger = logging.getLogger(__name__)

PLACE_TIMEOUT_S = 120.0
"""How long a request the cluster could hold waits for its resources (other jobs, a node that is coming)."""

CONNECT_TIMEOUT_S = 120.0
"""How long the placed actors get to connect back to the driver."""

POLL_S = 0.5
"""How often ``wait`` asks Ray about actors whose death no socket reported (a lost node)."""

ProbeView = Callable[[str, int], str]
"""``view(path, node_rank)`` -> the path a worker of that node reads; the identity outside tests."""


class _WorkerActor:
    """The Ray actor of one rank (wrapped by ``ray.remote`` on first use)."""

    def landing(self) -> Landing:
        import ray

        context = ray.get_runtime_context()
        gpu_ids = [str(i) for i in context.get_accelerator_ids().get("GPU", [])]
        host = ray.util.get_node_ip_address()
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))  # a port for a service this rank may host (torch's store, LightGBM)
            port = int(sock.getsockname()[1])
        return Landing(context.get_node_id(), host, gpu_ids, port)

    def read_probe(self, path: str) -> bytes | None:
        try:
            with open(path, "rb") as f:
                return f.read()
        except OSError:
            return None

    def serve(self, address: tuple[str, int], authkey: bytes, rank: int, env: dict[str, str],
              shards: dict[str, Any] | None = None) -> int:
        from trainkeep._internal.trainer import worker

        os.environ.update(env)
        sock = socket.create_connection(address)  # IPv4 or IPv6, unlike multiprocessing's Client
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        conn = Connection(sock.detach())
        try:
            answer_challenge(conn, authkey)  # the driver's listener checks this end first, then proves itself
            deliver_challenge(conn, authkey)
            conn.send(rank)
            return worker.serve(conn, shards)
        finally:
            conn.close()


_actor_class: Any = None


def _remote_actor() -> Any:
    global _actor_class
    if _actor_class is None:
        import ray

        _actor_class = ray.remote(max_restarts=0)(_WorkerActor)
    return _actor_class


class _Rank:
    def __init__(self, actor: Any, landing: Landing) -> None:
        self.actor, self.landing = actor, landing
        self.ref: Any = None  # the pending result of actor.serve
        self.conn: Connection | None = None
        self.exited = False


class RayWorkerGroup(WorkerGroup):
    """The workers of one attempt as Ray actors (see the module docstring).

    Args:
        scaling: the workers' number, resources and placement strategy.
        shared_dir: a local storage directory that every node must see (checked when the group spans nodes),
            or None for object or shared storage that needs no check.
        probe_view: tests only: how a node sees the probe path (to simulate a node with its own disk).
    """

    def __init__(self, scaling: ScalingConfig, shared_dir: str | None = None,
                 probe_view: ProbeView | None = None) -> None:
        self._scaling, self._shared_dir, self._probe_view = scaling, shared_dir, probe_view
        self._pg: Any = None
        self._actors: list[Any] = []  # every actor started, by bundle: kill() reaches them before ranks exist
        self._ranks: list[_Rank] = []
        self._shards: list[dict[str, Any]] | None = None  # each rank's ray.data iterators, by dataset name

    # ------------------------------------------------------------------------------------------ placement

    def place(self) -> Layout:
        """Reserve the workers' resources, start one actor per rank, and return where each rank runs.

        Raises:
            ConfigError (a ValueError) when the cluster could never hold the request (at once, naming what was
            asked and what the cluster has), or when a local storage directory is not seen by every node;
            TimeoutError when the resources did not free up within ``PLACE_TIMEOUT_S``.
            On any error, what was started is released.
        """
        import ray
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        try:
            # 1. Fail fast on what this cluster can never hold.
            check_fits(self._scaling, _live_nodes(ray))
            # 2. Reserve one bundle per worker, then start an actor in each.
            bundle = worker_bundle(self._scaling)
            self._pg = placement_group([dict(bundle)] * self._scaling.num_workers,
                                       strategy=self._scaling.placement_strategy)
            self._wait_placed(ray)
            other = {k: v for k, v in bundle.items() if k not in ("CPU", "GPU")}
            self._actors = actors = [_remote_actor().options(
                num_cpus=bundle.get("CPU", 0), num_gpus=bundle.get("GPU", 0), resources=other or None,
                scheduling_strategy=PlacementGroupSchedulingStrategy(self._pg, placement_group_bundle_index=i),
            ).remote() for i in range(self._scaling.num_workers)]
            # 3. Ranks follow the nodes: the workers of a node get consecutive ranks.
            landings = ray.get([actor.landing.remote() for actor in actors])
            order, layout = assign_ranks(landings)
            self._ranks = [_Rank(actors[i], landings[i]) for i in order]
            # 4. A local directory is a run's storage only if every node sees the same one.
            if self._shared_dir is not None and len({r.landing.node_id for r in self._ranks}) > 1:
                self._check_shared_dir(ray, layout)
            return layout._replace(driver_ip=ray.util.get_node_ip_address())
        except BaseException:
            self.kill()
            raise

    def _wait_placed(self, ray: Any) -> None:
        ready, _ = ray.wait([self._pg.ready()], timeout=PLACE_TIMEOUT_S)
        if not ready:
            raise PlacementTimeoutError(
                f"the Ray cluster could hold {self._scaling.num_workers} workers of "
                f"{worker_bundle(self._scaling)} but did not free them within {PLACE_TIMEOUT_S:g} s "
                f"(available now: {ray.available_resources()}); other jobs hold them")

    def _check_shared_dir(self, ray: Any, layout: Layout) -> None:
        """Write a probe file into the storage directory and have every worker read it back."""
        assert self._shared_dir is not None
        token = os.urandom(16)
        path = os.path.join(self._shared_dir, f".trainkeep-probe-{token.hex()}")
        with open(path, "wb") as f:
            f.write(token)
        try:
            view = self._probe_view or (lambda p, _node: p)
            seen = ray.get([r.actor.read_probe.remote(view(path, pl.node_rank))
                            for r, pl in zip(self._ranks, layout.placements, strict=True)])
        finally:
            with contextlib.suppress(OSError):
                os.remove(path)
        blind = sorted({r.landing.node_ip + f" (node {pl.node_rank})"
                        for r, pl, got in zip(self._ranks, layout.placements, seen, strict=True) if got != token})
        if blind:
            raise ConfigError(
                f"storage_path {self._shared_dir!r} is a local directory, but the workers on {', '.join(blind)} "
                "do not see the file the driver wrote there: the nodes of this Ray cluster do not share it. "
                "Use storage that every node sees: a shared file system mounted at the same path on every node, "
                "or object storage such as storage_path='s3://bucket/runs'.")

    def split_datasets(self, datasets: dict[str, Any], config: DataConfig) -> None:
        """Split each ``ray.data`` dataset among the placed ranks (``datasets.split_ray``, with the ranks' node
        ids as locality hints); Ray carries rank r's iterators to its actor with the call that starts it.

        Raises:
            ConfigTypeError (a TypeError) when a dataset function returned something else than a Dataset.
        """
        self._shards = split_ray(datasets, config, [r.landing.node_id for r in self._ranks])

    # ------------------------------------------------------------------------------------------ WorkerGroup

    def start(self, envs: list[dict[str, str]]) -> None:
        """Have each placed actor connect back and wait for its Boot; rank r gets ``envs[r]`` set first.

        Raises:
            OSError when an actor fails or does not connect within ``CONNECT_TIMEOUT_S`` (all are killed).
        """
        import ray

        if not self._ranks:
            self.place()
        try:
            host = ray.util.get_node_ip_address()  # 127.0.0.1 when Ray runs on loopback
            authkey = os.urandom(32)
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            with socket.create_server((host, 0), family=family) as listener:
                address = listener.getsockname()[:2]
                for rank, (r, env) in enumerate(zip(self._ranks, envs, strict=True)):
                    shards = self._shards[rank] if self._shards is not None else None
                    r.ref = r.actor.serve.remote(address, authkey, rank, env, shards)
                self._accept(ray, listener, authkey)
        except BaseException:
            self.kill()
            raise

    def _accept(self, ray: Any, listener: socket.socket, authkey: bytes) -> None:
        deadline = time.monotonic() + CONNECT_TIMEOUT_S
        while any(r.conn is None for r in self._ranks):
            if time.monotonic() > deadline:
                missing = [i for i, r in enumerate(self._ranks) if r.conn is None]
                raise WorkerStartError(f"Ray worker rank(s) {missing} did not connect within {CONNECT_TIMEOUT_S:g} s")
            if not select.select([listener], [], [], POLL_S)[0]:
                self._check_started(ray)
                continue
            sock, _ = listener.accept()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            conn = Connection(sock.detach())
            try:
                deliver_challenge(conn, authkey)
                answer_challenge(conn, authkey)
                rank = conn.recv()
                self._ranks[rank].conn = conn
            except Exception as exc:  # not one of ours (or it died on the way): drop it
                logger.debug("dropped a connection to the worker listener: %s", exc)
                conn.close()

    def _check_started(self, ray: Any) -> None:
        pending = [r.ref for r in self._ranks if r.conn is None]
        done, _ = ray.wait(pending, num_returns=len(pending), timeout=0)
        for ref in done:
            rank = next(i for i, r in enumerate(self._ranks) if r.ref == ref)
            try:
                outcome = f"returned {ray.get(ref)}"
            except Exception as exc:
                outcome = f"failed: {exc}"
            raise WorkerStartError(f"Ray worker rank {rank} ({self.describe(rank)}) {outcome} before connecting")

    @property
    def world_size(self) -> int:
        return len(self._ranks)

    def describe(self, rank: int) -> str:
        r = self._ranks[rank]
        return f"Ray actor {r.actor._actor_id.hex()[:12]} on node {r.landing.node_ip} {r.landing.node_id[:8]}"

    def send(self, rank: int, message: Any) -> None:
        """Send ``message`` to worker ``rank``; a worker that is already gone is skipped."""
        conn = self._ranks[rank].conn
        if conn is None or conn.closed:
            return
        try:
            conn.send(message)
        except OSError:
            conn.close()  # its end is reported by wait()

    def wait(self, timeout: float | None) -> list[Event]:
        """Block until a worker sends something or ends, or ``timeout`` seconds pass; return what happened."""
        import ray

        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            step = POLL_S if deadline is None else max(0.0, min(POLL_S, deadline - time.monotonic()))
            events = self._poll(ray, step)
            if events or (deadline is not None and time.monotonic() >= deadline) or self._all_exited():
                return events

    def _all_exited(self) -> bool:
        return all(r.exited for r in self._ranks)

    def _poll(self, ray: Any, step: float) -> list[Event]:
        events: list[Event] = []
        conns = {r.conn: (rank, r) for rank, r in enumerate(self._ranks)
                 if r.conn is not None and not r.conn.closed and not r.exited}
        for conn in wait(list(conns), step) if conns else ():
            rank, r = conns[conn]  # type: ignore[index]
            self._drain(rank, r, events)
            if r.conn is not None and r.conn.closed:
                self._exit(ray, rank, r, events, grace_s=5.0)
        # a node that died may leave sockets open for a long while: ask Ray about the rest
        live = {r.ref: (rank, r) for rank, r in enumerate(self._ranks) if not r.exited and r.ref is not None}
        done, _ = ray.wait(list(live), num_returns=len(live), timeout=0) if live else ([], [])
        for ref in done:
            rank, r = live[ref]
            if _actor_died(ray, ref):
                self._drain(rank, r, events)
                self._exit(ray, rank, r, events, grace_s=0.0)
        return events

    def _drain(self, rank: int, r: _Rank, events: list[Event]) -> None:
        conn = r.conn
        if conn is None or conn.closed:
            return
        try:
            while conn.poll():
                events.append(Message(rank, conn.recv()))
        except (EOFError, OSError):
            conn.close()

    def _exit(self, ray: Any, rank: int, r: _Rank, events: list[Event], grace_s: float) -> None:
        """Report rank ``rank``'s end once: its actor's return value, or None when the actor died."""
        if r.exited:
            return
        if r.conn is not None:
            r.conn.close()
        r.exited = True
        code: int | None = None
        done, _ = ray.wait([r.ref], timeout=grace_s)
        if done:
            with contextlib.suppress(Exception):
                code = int(ray.get(done[0]))
        events.append(Exited(rank, code))

    def join(self, timeout_s: float) -> None:
        """Wait up to ``timeout_s`` for every worker to return, then kill the actors."""
        import ray

        refs = [r.ref for r in self._ranks if r.ref is not None]
        if refs:
            _, pending = ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
            for ref in pending:
                rank = next(i for i, r in enumerate(self._ranks) if r.ref == ref)
                logger.warning("worker rank %d (%s) did not return within %g s after its training function "
                               "returned; killing it", rank, self.describe(rank), timeout_s)
        self.kill()

    def kill(self) -> None:
        """Kill every actor, wait until Ray reports them gone, and release the placement group."""
        import ray
        from ray.util.placement_group import remove_placement_group

        for actor in self._actors:
            with contextlib.suppress(Exception):
                ray.kill(actor, no_restart=True)
        for r in self._ranks:
            if r.conn is not None:
                r.conn.close()
        refs = [r.ref for r in self._ranks if r.ref is not None]
        if refs:  # returns once each actor is dead: none of them can still write to storage
            ray.wait(refs, num_returns=len(refs), timeout=30)
        if self._pg is not None:
            with contextlib.suppress(Exception):
                remove_placement_group(self._pg)
            self._pg = None
        self._shards = None  # Ray ends the split's coordinator once no handle to it is left


def _actor_died(ray: Any, ref: Any) -> bool:
    try:
        ray.get(ref, timeout=0)
    except ray.exceptions.RayActorError:
        return True
    except Exception:
        return False
    return False


def preflight(scaling: ScalingConfig) -> None:
    """Connect this driver to Ray (``ray.init()`` with Ray's defaults unless done already), and refuse a request
    the cluster could never hold.

    Raises:
        ConfigError (a ValueError) when Ray is not installed, or names what was asked and what the cluster has.
    """
    try:
        import ray
    except ImportError as exc:
        raise ConfigError(f"executor='ray' needs Ray: pip install 'trainkeep[ray]' ({exc})") from exc
    if not ray.is_initialized():
        logger.info("executor='ray': ray.init() with Ray's defaults (call ray.init() first to choose the cluster)")
        ray.init()
    check_fits(scaling, _live_nodes(ray))


def _live_nodes(ray: Any) -> list[dict[str, float]]:
    return [node["Resources"] for node in ray.nodes() if node.get("Alive")]
