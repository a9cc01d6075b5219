"""One writer per run, with real processes: a second manager or trainer fails fast naming the holder's pid, a
SIGKILLed holder's run is taken over, 100 racing starts never give two writers at once, and readers running beside
a writer never see a half-committed checkpoint."""

from __future__ import annotations

import json
import multiprocessing
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import concurrency_loops as loops
import psutil
import pytest
from click.testing import CliRunner

import trainkeep as tk
from trainkeep._internal.engine.run import read_run
from trainkeep._internal.engine.verify import verify_checkpoint
from trainkeep._internal.storage import LocalStorage
from trainkeep.cli.app import cli

FAIL_FAST_S = 1.0
RACERS = 100
POLLS = 1000
MIN_COMMITS_DURING = 50  # the reads must overlap this many commits (and the retention deletes after them)


def _context() -> Any:
    """Fork children from a clean server process that has trainkeep imported (cheap, and no inherited threads)."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["trainkeep"])
    return ctx


def _refused_within(open_run: Callable[[], Any]) -> tk.errors.RunLockedError:
    started = time.monotonic()
    with pytest.raises(tk.errors.RunLockedError) as refused:
        open_run()
    assert time.monotonic() - started < FAIL_FAST_S, "the second writer waited instead of failing fast"
    return refused.value


def test_a_second_manager_fails_fast_naming_the_holder_and_takes_over_once_it_is_killed(tmp_path: Path) -> None:
    run, ctx = str(tmp_path / "run"), _context()
    ready = ctx.Event()
    holder = ctx.Process(target=loops.hold, args=(run, str(tmp_path), ready))
    holder.start()
    try:
        assert ready.wait(120), "the holder never opened the run"
        error = _refused_within(lambda: tk.CheckpointManager(run))
        assert error.holder["pid"] == holder.pid and f"pid {holder.pid}" in str(error)
    finally:
        holder.kill()
        holder.join(60)
    assert holder.exitcode == -signal.SIGKILL
    with tk.CheckpointManager(run) as manager:  # the dead holder's lock is taken over; its commit survived
        assert [m["holder"] for _, m in manager.checkpoints] == [holder.pid]
        manager.report({"taken_over": True}, loops._checkpoint(str(tmp_path), b"second"))
    assert all(verify_checkpoint(LocalStorage(), run, n) == [] for n in ("checkpoint_000000", "checkpoint_000001"))


def _wait_for_line(fd: int, driver: subprocess.Popen[bytes], timeout_s: float = 120) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert driver.poll() is None, "the holder's driver ended by itself"
        if select.select([fd], [], [], 0.5)[0]:
            return os.read(fd, 4096).decode()
    raise AssertionError("the holder's driver never reported")


def test_a_second_trainer_fails_fast_naming_the_holder_and_resumes_once_it_is_killed(
        tmp_path: Path, snapshot: Callable[[str], dict]) -> None:
    storage, fifo = tmp_path / "storage", tmp_path / "events.fifo"
    os.mkfifo(fifo)
    reader, keep_open = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK), os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    config = {"tmp": str(tmp_path), "fifo": str(fifo), "log": str(tmp_path / "log.jsonl")}
    run_config = tk.RunConfig(name="run", storage_path=str(storage))
    code = (f"import trainkeep as tk, concurrency_loops as l; tk.DataParallelTrainer(l.report_then_wait, "
            f"train_loop_config={config!r}, run_config=tk.RunConfig(name='run', storage_path={str(storage)!r})).fit()")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.path.dirname(loops.__file__), *sys.path])}
    driver = subprocess.Popen([sys.executable, "-c", code], env=env, stdin=subprocess.DEVNULL)
    try:
        assert "holding" in _wait_for_line(reader, driver)
        workers = psutil.Process(driver.pid).children(recursive=True)
        before = snapshot(str(storage))
        trainer = tk.DataParallelTrainer(loops.resume_and_report, train_loop_config=config, run_config=run_config)
        error = _refused_within(trainer.fit)
        assert error.holder["pid"] == driver.pid and f"pid {driver.pid}" in str(error)
        assert snapshot(str(storage)) == before, "the refused trainer wrote to the run"
    finally:
        driver.kill()
        driver.wait(60)
        os.close(reader)
        os.close(keep_open)
    _, alive = psutil.wait_procs(workers, timeout=60)
    assert not alive, "the holder's workers outlived it"

    result = tk.DataParallelTrainer(loops.resume_and_report, train_loop_config=config, run_config=run_config).fit()
    assert [json.loads(line) for line in Path(config["log"]).read_text().splitlines()] == [
        {"from": "checkpoint_000000"}]
    assert [os.path.basename(c.path) for c, _ in result.best_checkpoints] == ["checkpoint_000000",
                                                                             "checkpoint_000001"]


# ---------------------------------------------------------------------------------------------- racing starts


def test_a_hundred_racing_starts_never_give_two_writers_at_once(tmp_path: Path) -> None:
    run, log = str(tmp_path / "run"), str(tmp_path / "race.log")
    done = subprocess.run([sys.executable, loops.__file__, run, str(tmp_path), log, str(RACERS)], timeout=300,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]

    events = [json.loads(line) for line in Path(log).read_text().splitlines()]
    enters = {e["enter"]: e["t"] for e in events if "enter" in e}
    exits = {e["exit"]: e["t"] for e in events if "exit" in e}
    refusals = [e for e in events if "refused" in e]
    assert set(enters) == set(exits) and len(enters) >= 2, "fewer than two winners: nothing to overlap"
    refused_for_good = {e["refused"] for e in refusals} - set(enters)
    assert len(enters) + len(refused_for_good) == RACERS
    spans = sorted((enters[pid], exits[pid], pid) for pid in enters)
    for (_, end, first), (start, _, second) in zip(spans, spans[1:], strict=False):
        assert start > end, f"writers {first} and {second} held the run at the same time"
    named = [e for e in refusals if e["holder"] is not None]
    assert {e["holder"] for e in named} <= set(enters), "a refusal named a process that never held the run"
    state = read_run(LocalStorage(), run)
    assert sorted(c.metrics["writer"] for c in state.index.checkpoints) == sorted(enters)
    assert all(verify_checkpoint(LocalStorage(), run, c.name) == [] for c in state.index.checkpoints)
    print(f"{RACERS} racing processes, {len(enters) + len(refusals)} starts: {len(enters)} held the run one after "
          f"another, {len(refusals)} were refused, {len(named)} of them naming the holder")
    assert len(named) == len(refusals), f"{len(refusals) - len(named)} of {len(refusals)} refusals named no holder"


# ---------------------------------------------------------------------------------------------- readers


class Readers:
    """Read the run the four read-only ways, verify what each lists, and classify every failure."""

    def __init__(self, run: str) -> None:
        self.run, self.storage = run, LocalStorage()
        self.counts = {"polls": 0, "seen": 0, "verified": 0, "deleted while read": 0}
        self.torn: list[str] = []

    def listed(self) -> set[str]:
        return {c.name for c in read_run(self.storage, self.run).index.checkpoints}

    def settle(self, name: str, problems: list[Any]) -> None:
        """A checkpoint that failed verification must be one that retention removed since it was listed."""
        if name in self.listed():
            self.torn.append(f"{name}: {'; '.join(map(str, problems))}")
        else:
            self.counts["deleted while read"] += 1

    def check(self, names: list[str]) -> None:
        for name in names:
            self.counts["seen"] += 1
            problems = verify_checkpoint(self.storage, self.run, name)
            if problems:
                self.settle(name, problems)
            else:
                self.counts["verified"] += 1

    def poll(self) -> None:
        way = self.counts["polls"] % 4
        self.counts["polls"] += 1
        if way == 0:
            self.check(sorted(self.listed()))
        elif way == 1:
            result = tk.Result.from_path(self.run)
            names = {os.path.basename(c.path) for c, _ in result.best_checkpoints}
            self.check(sorted(names | ({os.path.basename(result.checkpoint.path)} if result.checkpoint else set())))
        elif way == 2:
            listing = CliRunner().invoke(cli, ["ls", self.run, "--json"])
            assert listing.exit_code == 0, listing.output
            self.check([row["name"] for row in json.loads(listing.stdout)])
        else:
            verified = CliRunner().invoke(cli, ["verify", self.run, "--json"])
            for row in json.loads(verified.stdout):
                self.counts["seen"] += 1
                if row["ok"]:
                    self.counts["verified"] += 1
                else:
                    self.settle(row["checkpoint"], [p["reason"] for p in row["problems"]])


def test_readers_beside_a_writer_never_see_a_half_committed_checkpoint(tmp_path: Path) -> None:
    run, ctx = str(tmp_path / "run"), _context()
    stop, commits = ctx.Event(), ctx.Value("i", 0)
    writer = ctx.Process(target=loops.write_forever, args=(run, str(tmp_path), stop, commits))
    writer.start()
    readers = Readers(run)
    try:
        deadline = time.monotonic() + 120
        while commits.value == 0:  # the run exists once its first checkpoint committed
            assert writer.is_alive() and time.monotonic() < deadline, "the writer never committed"
            time.sleep(0.01)
        first = commits.value
        while readers.counts["polls"] < POLLS or commits.value - first < MIN_COMMITS_DURING:
            assert writer.is_alive() and time.monotonic() < deadline + 120, "the writer stopped writing"
            readers.poll()
        during = commits.value - first
    finally:
        stop.set()
        writer.join(60)
    assert writer.exitcode == 0
    print(f"readers beside a writer: {readers.counts}, {during} commits during the reads, torn={len(readers.torn)}")
    assert readers.torn == [], readers.torn
    assert all(verify_checkpoint(LocalStorage(), run, name) == [] for name in readers.listed())
