"""The single-writer lock on every backend: a second writer is refused naming the holder, a released or dead
holder's lock is taken over, and (on lease stores) a stale lease is taken over while a lost one fences writes."""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time

import pytest

import trainkeep as tk
from trainkeep._internal.storage import LeaseLock
from trainkeep.errors import RunLockedError


def lock_path(backend) -> str:
    return f"{backend.storage()[1]}/run/.trainkeep/lock"


def test_second_writer_is_refused_naming_the_holder_until_the_first_closes(backend):
    first = backend.manager()
    with pytest.raises(RunLockedError, match=f"pid {os.getpid()} on host {socket.gethostname()}"):
        backend.manager()
    first.close()
    with backend.manager() as second:
        second.report({"step": 0})


def test_a_holder_in_another_process_is_refused_then_taken_over_when_it_dies(backend):
    if not backend.shared_across_processes:
        pytest.skip("memory:// lives inside one process")
    child = backend.start_child("hold", "run")
    try:
        line = child.stdout.readline()
        assert line.startswith("ready "), child.stderr.read()
        with pytest.raises(RunLockedError, match=f"pid {child.pid} "):
            backend.manager()
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    with backend.manager() as manager:  # flock dies with its process; a dead pid's lease is stale at once
        manager.report({"step": 0})


def write_foreign_lease(backend, heartbeat_age_s: float) -> None:
    storage, _ = backend.storage()
    record = {"pid": 4242, "host": "another-host.example", "token": "f" * 32, "since": "earlier",
              "heartbeat": time.time() - heartbeat_age_s, "ttl_s": 60.0}
    storage.write_atomic(lock_path(backend), json.dumps(record).encode())


def test_a_live_lease_of_another_host_is_refused_and_a_stale_one_taken_over(backend):
    if backend.name == "local":
        pytest.skip("the local disk locks with flock, which the kernel releases with its holder")
    with backend.manager():
        pass  # creates the run
    write_foreign_lease(backend, heartbeat_age_s=5)
    with pytest.raises(RunLockedError, match="pid 4242 on host another-host.example"):
        backend.manager()
    write_foreign_lease(backend, heartbeat_age_s=120)
    with backend.manager() as manager:
        holder = json.loads(manager.storage.read_bytes(lock_path(backend)))
        assert holder["pid"] == os.getpid() and holder["token"] == manager._lock.holder["token"]


def test_racing_writers_exactly_one_wins(backend):
    """Eight threads open the same new run at once: one holds it, seven are refused naming it."""
    if backend.name == "local":
        pytest.skip("flock's exclusivity is the kernel's; this checks the lease's compare-and-swap")
    start, outcomes = threading.Barrier(8), []

    def contend() -> None:
        start.wait()
        try:
            outcomes.append(backend.manager())
        except RunLockedError as exc:
            outcomes.append(exc)

    threads = [threading.Thread(target=contend) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    winners = [o for o in outcomes if isinstance(o, tk.CheckpointManager)]
    assert len(outcomes) == 8 and len(winners) == 1
    winners[0].close()


def test_a_lost_lease_stops_every_later_write(backend, monkeypatch, make_files):
    if backend.name == "local":
        pytest.skip("flock cannot be lost while its holder lives")
    monkeypatch.setattr(LeaseLock, "ttl_s", 0.4)  # heartbeat every 0.1 s
    manager = backend.manager()
    manager.report({"step": 0})
    write_foreign_lease(backend, heartbeat_age_s=0)  # another writer took it over
    deadline = time.monotonic() + 30
    while manager._lock.lost is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert manager._lock.lost is not None
    with pytest.raises(RunLockedError, match="another-host.example"):
        manager.report({"step": 1}, checkpoint=tk.Checkpoint.from_directory(make_files({"m.bin": b"m"})))
    storage, root = backend.storage()
    assert not storage.exists(f"{root}/run/checkpoint_000001")
    with pytest.raises(RunLockedError):
        manager.close()  # cannot mark the run finished; must not delete the new holder's lease either
    assert json.loads(storage.read_bytes(lock_path(backend)))["pid"] == 4242
