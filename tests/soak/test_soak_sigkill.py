"""Random SIGKILL soak of a real training run: nothing committed is ever lost, corrupt, or skipped on resume.

A child driver process (soak_driver.py) runs a real ``DataParallelTrainer`` with two worker processes on one run
(``num_to_keep=2`` by a score with ties, NaN and missing values; about one metrics-only round in four;
``FailureConfig(max_failures=-1)``). The parent SIGKILLs, at random moments of the training loop, either one worker
(the driver restarts the group from the latest checkpoint) or the driver itself (its workers die with it; the
parent starts a new driver, whose ``fit()`` resumes the run). The loop (soak_loop.py) logs, fsynced, every
checkpoint that a SYNC ``report()`` returned as committed, and what each attempt started from.

After every driver kill, and at the end, the parent reads the run without writing (``read_run``,
``verify_checkpoint``) and asserts:

* Lost = 0: every logged-committed checkpoint that retention had no reason to delete (``trainkeep._internal.core.retention``
  over every checkpoint ever committed: the log, the history and the manifests) is present and verifies;
* Corrupt = 0: every checkpoint present verifies and holds exactly the bytes and metrics the loop reported;
* every restart resumed from the newest committed checkpoint (worker restarts: as rank 0 saw storage before its
  first report; driver restarts: as the parent saw storage after the kill);
* no debris survives a later commit: a directory without a manifest, or an intent record, only for a round after
  the newest commit (the round the kill interrupted) or a checkpoint whose deletion the kill interrupted; a temp
  file of ours only if no commit happened since the previous check.

``SEED=`` replays the schedule of kills (the timing, so the exact kill points, depends on the machine);
``KILLS=`` sets the number of kills (default 300); ``SOAK=1`` runs 10,000.
"""

from __future__ import annotations

import json
import os
import random
import resource
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest
import soak_loop

import trainkeep as tk
from trainkeep._internal.core.layout import INTENT_PREFIX, INTERNAL_DIR, TEMP_SUFFIX
from trainkeep._internal.core.retention import Record, decide
from trainkeep._internal.engine.run import is_run, read_run
from trainkeep._internal.engine.verify import read_manifest, verify_checkpoint
from trainkeep._internal.storage import LocalStorage

DRIVER = str(Path(__file__).with_name("soak_driver.py"))
CONFIG = tk.CheckpointConfig(**soak_loop.CONFIG)
KILLS = int(os.environ.get("KILLS") or (10_000 if os.environ.get("SOAK") == "1" else 300))
DRIVER_KILL_SHARE = 0.15  # the rest are worker kills, which cost only a group restart
EARLY_DRIVER_KILL_SHARE = 0.2  # of the driver kills: not timed from an attempt's start (import, open, sweep, a
# group restart in progress)
MAX_DELAY_S = 0.12  # rounds take ~10-20 ms: a kill lands anywhere in the first few rounds of an attempt
EARLY_WINDOW_S = 0.8
EVENT_TIMEOUT_S = 120.0


def _round(name: str) -> int:
    """Return the round in a checkpoint name (``checkpoint_000012`` -> 12); fail naming anything else."""
    head, _, digits = name.rpartition("_")
    assert head.endswith("checkpoint") and digits.isdigit(), f"unexpected entry {name!r} in the run"
    return int(digits)


def _same(a: Any, b: Any) -> bool:
    """Compare JSON values, NaN included (NaN != NaN in Python, but its JSON text is the same)."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def read_events(log: Path) -> list[dict[str, Any]]:
    """Return the side log's events; a torn last line (the kill hit the write) ends it."""
    if not log.exists():
        return []
    events = []
    for line in log.read_bytes().split(b"\n"):
        try:
            events.append(json.loads(line))
        except ValueError:
            break
    return events


@dataclass
class Audit:
    """What one read-only check of the quiescent run found."""

    newest: str | None
    present: set[str]
    lost: list[str] = field(default_factory=list)
    corrupt: list[str] = field(default_factory=list)
    debris: list[str] = field(default_factory=list)
    temp_files: set[str] = field(default_factory=set)


def _committed_records(seed: int, events: list[dict[str, Any]], state: Any, present: set[str],
                       storage: LocalStorage, run: str) -> tuple[dict[str, Record], list[str]]:
    """Return every checkpoint ever committed as a retention record (log, history and manifests agree)."""
    problems: list[str] = []
    records: dict[str, Record] = {}
    for event in events:
        if event["event"] == "committed":
            records[event["name"]] = Record(event["name"], _round(event["name"]), event["metrics"])
    for row in state.history:
        if not _same(row["metrics"], soak_loop.metrics_for(seed, row["metrics"]["epoch"])):
            problems.append(f"history row of round {row['round']} holds metrics the loop never reported")
    history = {row["checkpoint"]: row for row in state.history if row.get("checkpoint")}
    for name, row in history.items():
        records.setdefault(name, Record(name, row["round"], row["metrics"]))
    for name in present:
        manifest = read_manifest(storage, run, name)
        records.setdefault(name, Record(name, manifest.round, manifest.metrics))
    for event in events:
        if event["event"] == "committed" and event["name"] not in history:
            problems.append(f"{event['name']} was committed (report returned) but its round is not in the history")
    return records, problems


def _is_corrupt(storage: LocalStorage, run: str, name: str, seed: int, logged: dict[str, Any]) -> str | None:
    problems = verify_checkpoint(storage, run, name)
    if problems:
        return "; ".join(map(str, problems))
    manifest = read_manifest(storage, run, name)
    epoch = manifest.metrics["epoch"]
    if {f.path: f.checksum for f in manifest.files} != soak_loop.checksums_for(seed, epoch):
        return f"its files are not the ones the loop wrote for epoch {epoch}"
    if not _same(manifest.metrics, soak_loop.metrics_for(seed, epoch)):
        return f"its metrics are not the ones the loop reported for epoch {epoch}"
    if name in logged and not _same(logged[name]["checksums"], soak_loop.checksums_for(seed, epoch)):
        return f"get_checkpoint() after report() of epoch {logged[name]['epoch']} named it, but it holds epoch {epoch}"
    return None


def _debris(storage: LocalStorage, run: str, present: set[str], retiring: set[str], newest_round: int) -> list[str]:
    """Return what an interrupted report or delete may not leave once a later checkpoint committed."""
    found = []
    for name in os.listdir(run):
        full = os.path.join(run, name)
        if name in present or name == INTERNAL_DIR or not os.path.isdir(full):
            continue
        if not (name in retiring or _round(name) > newest_round):
            found.append(f"directory {name} without a valid manifest")
    for name in os.listdir(os.path.join(run, INTERNAL_DIR)):
        is_intent = name.startswith(INTENT_PREFIX) and name.endswith(".json")  # (temp files are checked apart)
        if is_intent and _round(name[len(INTENT_PREFIX):-len(".json")]) < newest_round:
            found.append(f"intent record {name}")
    return found


def audit_run(run: str, seed: int, events: list[dict[str, Any]]) -> Audit:
    """Read the quiescent run (nothing written) and classify what is on storage."""
    storage = LocalStorage()
    if not is_run(storage, run):  # the first driver was killed before it opened the run: nothing to lose
        assert not any(e["event"] == "committed" for e in events), "commits were logged, but there is no run"
        return Audit(None, set())
    state = read_run(storage, run, CONFIG)
    present = {entry.name for entry in state.index.checkpoints}
    logged = {e["name"]: e for e in events if e["event"] == "committed"}
    records, problems = _committed_records(seed, events, state, present, storage, run)
    assert not problems, problems
    keep = {record.name for record in decide(list(records.values()), CONFIG).keep}
    result = Audit(max(present, key=_round, default=None), present)
    for name in sorted(keep & set(logged)):
        if name not in present or verify_checkpoint(storage, run, name):
            result.lost.append(name)
    for name in sorted(present):
        reason = _is_corrupt(storage, run, name, seed, logged)
        if reason:
            result.corrupt.append(f"{name}: {reason}")
    newest_round = _round(result.newest) if result.newest else -1
    result.debris = _debris(storage, run, present, set(state.index.retiring), newest_round)
    for where in (run, os.path.join(run, INTERNAL_DIR)):
        result.temp_files |= {os.path.join(where, n) for n in os.listdir(where) if n.endswith(TEMP_SUFFIX)}
    return result


def _alive(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


class Soak:
    """The parent's side: drivers, kills, and the checks between them."""

    def __init__(self, tmp: Path, seed: int) -> None:
        self.rng, self.seed, self.tmp = random.Random(seed), seed, tmp
        self.log, self.run = tmp / "side.log", str(tmp / "storage" / "run")
        fifo = tmp / "events.fifo"
        os.mkfifo(fifo)
        self.fifo = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
        self._keep_open = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)  # no EOF while no worker has it open
        (tmp / "scratch").mkdir()
        self.plan = tmp / "plan.json"
        self.plan.write_text(json.dumps({"seed": seed, "storage": str(tmp / "storage"), "log": str(self.log),
                                         "fifo": str(fifo), "scratch": str(tmp / "scratch")}))
        self.driver: subprocess.Popen[bytes] | None = None
        self.driver_log = open(tmp / "driver.log", "ab")
        self.counts = {"driver kills": 0, "worker kills": 0, "starts": 0, "driver resumes": 0, "checks": 0}
        self.expected_start: tuple[str | None, int] | None = None  # (newest seen after a driver kill, its pid)
        self.checked_events = 0
        self.temp_files: set[str] = set()
        self.commits_at_check = 0
        self.last: Audit | None = None

    # ------------------------------------------------------------------------------------------ processes

    def spawn(self) -> None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(DRIVER).parent), *sys.path])}
        self.driver = subprocess.Popen([sys.executable, DRIVER, str(self.plan)], env=env, stdin=subprocess.DEVNULL,
                                       stdout=self.driver_log, stderr=subprocess.STDOUT)
        self.expected_start = (self.expected_start[0], self.driver.pid) if self.expected_start else None

    def wait_for_start(self) -> None:
        """Block until rank 0 of a new attempt signals its start (the driver must not end by itself)."""
        deadline = time.monotonic() + EVENT_TIMEOUT_S
        while True:
            assert self.driver is not None and self.driver.poll() is None, self._driver_died()
            ready, _, _ = select.select([self.fifo], [], [], 0.5)
            if ready and b"start" in os.read(self.fifo, 65536):
                return
            assert time.monotonic() < deadline, f"no attempt started within {EVENT_TIMEOUT_S} s"

    def kill_worker(self) -> None:
        assert self.driver is not None
        workers = [p for p in psutil.Process(self.driver.pid).children() if _alive(p)]
        assert workers, "the driver has no live worker"
        os.kill(self.rng.choice(workers).pid, signal.SIGKILL)
        self.counts["worker kills"] += 1

    def kill_driver(self) -> None:
        """SIGKILL the driver; wait until it and every worker it had are gone."""
        assert self.driver is not None
        workers = psutil.Process(self.driver.pid).children(recursive=True)
        self.driver.kill()
        code = self.driver.wait(60)
        assert code == -signal.SIGKILL, self._driver_died()
        _, alive = psutil.wait_procs(workers, timeout=60)
        assert not alive, f"workers {[p.pid for p in alive]} outlived their driver"
        self.driver = None
        self.counts["driver kills"] += 1
        while select.select([self.fifo], [], [], 0)[0] and os.read(self.fifo, 65536):
            pass  # a start signalled by the dead driver's workers is stale

    def _driver_died(self) -> str:
        self.driver_log.flush()
        tail = (self.tmp / "driver.log").read_bytes()[-3000:].decode(errors="replace")
        return f"the driver ended by itself; its log ends with:\n{tail}"

    # ------------------------------------------------------------------------------------------ checks

    def check_starts(self, events: list[dict[str, Any]]) -> None:
        """Every attempt started from the newest committed checkpoint on storage."""
        for event in events[self.checked_events:]:
            if event["event"] != "start":
                continue
            self.counts["starts"] += 1
            assert event["from"] == event["seen"], (
                f"an attempt started from {event['from']}, but the newest committed checkpoint was {event['seen']}")
            if self.expected_start is not None and event["driver"] == self.expected_start[1]:
                assert event["from"] == self.expected_start[0], (
                    f"a new driver resumed from {event['from']}; the newest committed after the kill was "
                    f"{self.expected_start[0]}")
                self.expected_start = None
                self.counts["driver resumes"] += 1
        self.checked_events = len(events)

    def check(self) -> Audit:
        """Audit the quiescent run (after a driver kill); fail on anything lost, corrupt or left over."""
        events = read_events(self.log)
        self.check_starts(events)
        result = self.last = audit_run(self.run, self.seed, events)
        self.counts["checks"] += 1
        assert not result.lost, f"LOST committed checkpoints: {result.lost}"
        assert not result.corrupt, f"CORRUPT checkpoints: {result.corrupt}"
        assert not result.debris, f"debris survived a later commit: {result.debris}"
        commits = sum(1 for e in events if e["event"] == "committed")
        if commits > self.commits_at_check:
            stale = self.temp_files & result.temp_files
            assert not stale, f"temp files survived a later commit: {sorted(stale)}"
        self.temp_files, self.commits_at_check = result.temp_files, commits
        self.expected_start = (result.newest, -1)
        return result

    def close(self) -> None:
        if self.driver is not None and self.driver.poll() is None:
            self.driver.kill()
            self.driver.wait(60)
        os.close(self.fifo)
        os.close(self._keep_open)
        self.driver_log.close()


@pytest.mark.slow
@pytest.mark.timeout(120 + 3 * KILLS)
def test_random_sigkills_of_driver_and_workers_lose_nothing(tmp_path: Path, seed: int) -> None:
    soak = Soak(tmp_path, seed)
    rng = soak.rng
    cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    try:
        for kill in range(KILLS):
            if soak.driver is None:
                soak.spawn()
            driver_kill = rng.random() < DRIVER_KILL_SHARE or kill == KILLS - 1
            if driver_kill and rng.random() < EARLY_DRIVER_KILL_SHARE and kill != KILLS - 1:
                time.sleep(rng.uniform(0, EARLY_WINDOW_S))  # the random kill point is the point of this test
            else:
                soak.wait_for_start()
                time.sleep(rng.uniform(0, MAX_DELAY_S))
            if driver_kill:
                soak.kill_driver()
                soak.check()
            else:
                soak.kill_worker()
    finally:
        soak.close()
        events = read_events(soak.log)
        commits = sum(1 for e in events if e["event"] == "committed")
        wall = time.monotonic() - started
        cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = cpu_after.ru_utime + cpu_after.ru_stime - cpu_before.ru_utime - cpu_before.ru_stime
        kills = soak.counts["driver kills"] + soak.counts["worker kills"]
        print(f"soak SEED={seed}: {kills} kills ({soak.counts['driver kills']} driver, {soak.counts['worker kills']} "
              f"worker) in {wall:.1f} s wall ({kills / max(wall, 1e-9):.1f} kills/s, ~{cpu:.0f} s CPU in children); "
              f"{commits} commits, {soak.counts['starts'] - 1} restarts ({soak.counts['driver resumes']} by a new driver), "
              f"{soak.counts['checks']} checks; "
              f"lost={len(soak.last.lost) if soak.last else '?'} corrupt={len(soak.last.corrupt) if soak.last else '?'}")
    assert soak.last is not None and kills == KILLS
    assert commits >= KILLS // 10, "too few commits between kills to exercise retention; is the machine very slow?"
