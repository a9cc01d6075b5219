"""What the copy path overlaps: the hash taken from the written range (or read back from the source where that
range cannot be mapped), writeback started early, and fsyncs issued together on one I/O pool."""

from __future__ import annotations

import os
import random
import signal
import threading
import time

import pytest
import xxhash

from trainkeep._internal.storage.base import CHUNK_SIZE
from trainkeep._internal.storage.fastcopy import COPY_METHODS, _copy_fds
from trainkeep._internal.storage.syscalls import SYSCALLS, io_pool, start_writeback, together


def test_the_hash_is_read_back_from_the_source_where_the_destination_cannot_be_mapped(tmp_path, seed):
    data = random.Random(seed).randbytes(CHUNK_SIZE + 4321)
    (tmp_path / "src.bin").write_bytes(data)
    fd_in = os.open(tmp_path / "src.bin", os.O_RDONLY)
    fd_out = os.open(tmp_path / "dest.bin", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:  # a write-only descriptor cannot be mapped for reading: the copy must hash through pread instead
        size, digest = _copy_fds(fd_in, fd_out, fd_out, str(tmp_path / "src.bin"), None, COPY_METHODS, SYSCALLS)
    finally:
        os.close(fd_in)
        os.close(fd_out)
    assert (size, digest) == (len(data), xxhash.xxh3_128(data).hexdigest())
    assert (tmp_path / "dest.bin").read_bytes() == data


def test_starting_writeback_never_raises_even_on_a_bad_descriptor(tmp_path):
    start_writeback(-1, 0, 4096)  # it promises nothing: the fsync that follows does
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.write(fd, b"x" * 10000)
        start_writeback(fd, 0, 10000)
    finally:
        os.close(fd)
    assert (tmp_path / "f").read_bytes() == b"x" * 10000


def test_together_runs_its_calls_at_the_same_time():
    meet = threading.Barrier(3, timeout=30)  # only calls that run at the same time can all pass it
    together(meet.wait, meet.wait, meet.wait)


def test_together_raises_the_first_error_only_once_every_call_has_ended():
    ended: list[str] = []

    def slow() -> None:
        time.sleep(0.2)
        ended.append("slow")

    def fails() -> None:
        raise OSError(5, "injected")

    with pytest.raises(OSError, match="injected"):
        together(fails, slow)
    assert ended == ["slow"]  # a caller that cleans up after the error never races a call still running
    with pytest.raises(ValueError):
        together(lambda: None, lambda: (_ for _ in ()).throw(ValueError("second")))


def test_a_forked_child_gets_its_own_io_threads():
    assert io_pool().submit(lambda: 1).result(timeout=30) == 1  # the parent's pool exists and has threads
    pid = os.fork()
    if pid == 0:  # the child inherits the pool object but not its threads
        code = 1
        try:
            signal.alarm(30)
            code = 0 if io_pool().submit(lambda: 2).result(timeout=10) == 2 else 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
