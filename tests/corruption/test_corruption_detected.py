"""Damaged checkpoints and run indexes: every kind of damage is detected with its reason, resume falls back to the
newest valid checkpoint with a warning, nothing is deleted, and a clean checkpoint never fails verification.

The runs are written by the real CheckpointManager on the local disk; the damage is done to the files afterwards,
as a disk, a person or another program would. ``trainkeep verify`` runs through click's CliRunner.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import random
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import corruption_helpers as h
import pytest
from click.testing import CliRunner

import trainkeep as tk
from trainkeep._internal.core.layout import MANIFEST_NAME, RUN_INDEX_NAME
from trainkeep._internal.core.manifest import parse_run_index
from trainkeep._internal.engine.run import read_run
from trainkeep._internal.engine.verify import verify_checkpoint
from trainkeep._internal.storage import LocalStorage
from trainkeep.cli.app import cli

Snapshot = Callable[[str], dict]
CHECKPOINTS = ["checkpoint_000000", h.PREVIOUS, h.NEWEST]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Write the run once per module: three checkpoints of three files each, losses going down."""
    root = tmp_path_factory.mktemp("pristine")
    (root / "scratch").mkdir()
    h.write_run(str(root / "run"), str(root / "scratch"))
    return root / "run"


@pytest.fixture
def run(pristine: Path, tmp_path: Path) -> Path:
    """Return a fresh copy of the pristine run, for this test to damage."""
    dest = tmp_path / "storage" / "run"
    shutil.copytree(pristine, dest, symlinks=True)
    (tmp_path / "scratch").mkdir()
    return dest


def _snapshots(run: Path, snapshot: Snapshot) -> dict[str, dict]:
    return {name: snapshot(str(run / name)) for name in CHECKPOINTS}


def _warned_about(caplog: pytest.LogCaptureFixture, name: str) -> bool:
    return any(r.levelno == logging.WARNING and name in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(("damage", "reason"), [pytest.param(d, r, id=i) for i, d, r in h.ALL_DAMAGE])
def test_damage_is_detected_by_verify_and_by_the_cli_with_its_reason(run: Path, damage, reason: str) -> None:
    damage(run / h.NEWEST)

    problems = verify_checkpoint(LocalStorage(), str(run), h.NEWEST)
    assert any(reason in p.reason for p in problems), [str(p) for p in problems]
    code, rows, _ = h.verify_cli(str(run))
    assert code == 1
    verdicts = {row["checkpoint"]: row for row in rows}
    assert set(verdicts) == set(CHECKPOINTS)
    assert not verdicts[h.NEWEST]["ok"]
    assert any(reason in p["reason"] for p in verdicts[h.NEWEST]["problems"]), verdicts[h.NEWEST]
    assert verdicts["checkpoint_000000"]["ok"] and verdicts[h.PREVIOUS]["ok"]  # no false alarm next door


@pytest.mark.parametrize("damage", [pytest.param(d, id=i) for i, d, _ in h.ALL_DAMAGE])
def test_resume_skips_the_damaged_checkpoint_with_a_warning_and_deletes_nothing(
        run: Path, tmp_path: Path, damage, caplog: pytest.LogCaptureFixture, snapshot: Snapshot) -> None:
    damage(run / h.NEWEST)
    before = _snapshots(run, snapshot)

    with caplog.at_level(logging.WARNING, logger="trainkeep"):
        with tk.CheckpointManager(str(run), h.KEEP_ALL) as manager:
            resumed = manager.resume_checkpoint()
            assert resumed is not None and os.path.basename(resumed.path) == h.PREVIOUS
            # the run goes on: the next checkpoint commits under a fresh name, retention keeps everything
            committed = manager.report({"loss": 0.01}, h.write_source(str(tmp_path / "scratch"), {"a.bin": b"a"}))
            assert committed is not None and os.path.basename(committed.path) == "checkpoint_000003"
    assert _warned_about(caplog, h.NEWEST)
    assert _snapshots(run, snapshot) == before  # the damaged checkpoint is left exactly as it was


TRAINER_CASES = {
    "bit-flipped": next(d for i, d, _ in h.DATA_DAMAGE if i == "bit-flipped"),
    "manifest-not-json": next(d for i, d, _ in h.MANIFEST_DAMAGE if i == "manifest-not-json"),
}


@pytest.mark.parametrize("case", sorted(TRAINER_CASES))
def test_a_trainer_resumes_from_the_newest_valid_checkpoint(run: Path, tmp_path: Path, case: str,
                                                            caplog: pytest.LogCaptureFixture,
                                                            snapshot: Snapshot) -> None:
    TRAINER_CASES[case](run / h.NEWEST)
    before = _snapshots(run, snapshot)
    config = {"log": str(tmp_path / "log.txt"), "tmp": str(tmp_path / "scratch"), "epochs": 1}

    with caplog.at_level(logging.WARNING, logger="trainkeep"):
        result = tk.DataParallelTrainer(
            h.resume_and_report, train_loop_config=config,
            run_config=tk.RunConfig(name="run", storage_path=str(run.parent), checkpoint_config=h.KEEP_ALL)).fit()

    assert Path(config["log"]).read_text().splitlines() == [f"start {h.PREVIOUS}"]
    assert _warned_about(caplog, h.NEWEST)
    assert _snapshots(run, snapshot) == before
    assert result.checkpoint is not None and os.path.basename(result.checkpoint.path) == "checkpoint_000003"
    assert verify_checkpoint(LocalStorage(), str(run), "checkpoint_000003") == []


# ---------------------------------------------------------------------------------------------- run index


def _index_damage(run: Path) -> dict[str, Callable[[Path], None]]:
    index = run / RUN_INDEX_NAME
    good = json.loads(index.read_bytes())
    return {
        "garbage": lambda p: p.write_bytes(b"\x00\x01garbage"),
        "truncated": lambda p: p.write_bytes(index.read_bytes()[:100]),
        "empty": lambda p: p.write_bytes(b""),
        "checkpoints-not-a-list": lambda p: p.write_text(json.dumps({**good, "checkpoints": "all"})),
        "entry-without-name": lambda p: p.write_text(json.dumps(
            {**good, "checkpoints": [{k: v for k, v in c.items() if k != "name"} for c in good["checkpoints"]]})),
        "bad-status": lambda p: p.write_text(json.dumps({**good, "status": "exploded"})),
        "lists-a-vanished-checkpoint": lambda p: p.write_text(json.dumps(
            {**good, "checkpoints": [*good["checkpoints"], {**good["checkpoints"][-1], "name": "checkpoint_000009",
                                                             "round": 9}]})),
        "deleted": lambda p: p.unlink(),
    }


INDEX_CASES = ["garbage", "truncated", "empty", "checkpoints-not-a-list", "entry-without-name", "bad-status",
               "lists-a-vanished-checkpoint", "deleted"]


@pytest.mark.parametrize("case", INDEX_CASES)
def test_a_damaged_run_index_is_rebuilt_from_the_manifests(run: Path, case: str, caplog: pytest.LogCaptureFixture,
                                                          snapshot: Snapshot) -> None:
    listed = [(c.name, c.round, c.metrics) for c in read_run(LocalStorage(), str(run)).index.checkpoints]
    _index_damage(run)[case](run / RUN_INDEX_NAME)
    before = _snapshots(run, snapshot)

    code, rows, _ = h.verify_cli(str(run))  # read-only: verifies every checkpoint the manifests commit
    assert {row["checkpoint"] for row in rows if row["ok"]} == set(CHECKPOINTS)
    failed = {row["checkpoint"]: row["problems"] for row in rows if not row["ok"]}
    if case == "lists-a-vanished-checkpoint":  # what the index promised and storage lacks is reported
        assert code == 1 and failed == {"checkpoint_000009": [{"path": MANIFEST_NAME, "reason": "manifest is missing",
                                                                  "kind": "corrupt"}]}
    else:
        assert code == 0 and failed == {}
    with caplog.at_level(logging.WARNING, logger="trainkeep"):
        with tk.CheckpointManager(str(run), h.KEEP_ALL) as manager:
            assert [(os.path.basename(c.path), m) for c, m in manager.checkpoints] == [(n, m) for n, _, m in listed]
            assert manager.next_round == 3
            assert os.path.basename(manager.resume_checkpoint().path) == h.NEWEST
    if case not in ("deleted",):
        assert any(r.levelno == logging.WARNING for r in caplog.records)
    rebuilt = parse_run_index((run / RUN_INDEX_NAME).read_bytes(), "index")
    assert [(c.name, c.round, c.metrics) for c in rebuilt.checkpoints] == listed
    assert _snapshots(run, snapshot) == before


def test_a_damaged_manifest_is_reported_even_when_the_index_is_damaged_too(run: Path, snapshot: Snapshot) -> None:
    """With no index to list it, the checkpoint whose manifest does not parse must still fail verify."""
    (run / RUN_INDEX_NAME).write_bytes(b"garbage")
    (run / h.NEWEST / MANIFEST_NAME).write_bytes(b"garbage")
    before = _snapshots(run, snapshot)

    code, rows, err = h.verify_cli(str(run))
    assert code == 1
    assert {row["checkpoint"]: row["ok"] for row in rows} == {"checkpoint_000000": True, h.PREVIOUS: True,
                                                              h.NEWEST: False}
    assert "is corrupt" in err
    with tk.CheckpointManager(str(run), h.KEEP_ALL) as manager:
        assert os.path.basename(manager.resume_checkpoint().path) == h.PREVIOUS
        assert manager.next_round == 3  # the history still knows round 2: its name is never reused
    assert _snapshots(run, snapshot) == before


def test_a_trainer_resumes_a_run_whose_index_is_garbage(run: Path, tmp_path: Path) -> None:
    (run / RUN_INDEX_NAME).write_bytes(b"{not json")
    config = {"log": str(tmp_path / "log.txt"), "tmp": str(tmp_path / "scratch"), "epochs": 1}
    result = tk.DataParallelTrainer(
        h.resume_and_report, train_loop_config=config,
        run_config=tk.RunConfig(name="run", storage_path=str(run.parent), checkpoint_config=h.KEEP_ALL)).fit()
    assert Path(config["log"]).read_text().splitlines() == [f"start {h.NEWEST}"]
    assert [os.path.basename(c.path) for c, _ in result.best_checkpoints] == [*CHECKPOINTS, "checkpoint_000003"]


class _Planted:
    """Unpickling this creates a directory: the proof that something unpickled a file of ours."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.mkdir, (str(self.marker),))


def test_our_files_are_never_unpickled(run: Path, tmp_path: Path) -> None:
    """A pickle planted as the manifest, the run index, the metadata and a history line is refused as not JSON."""
    marker = tmp_path / "unpickled"
    payload = pickle.dumps(_Planted(marker))
    (run / h.NEWEST / MANIFEST_NAME).write_bytes(payload)
    (run / h.PREVIOUS / ".metadata.json").write_bytes(payload)
    (run / RUN_INDEX_NAME).write_bytes(payload)
    with open(run / "history.jsonl", "ab") as f:
        f.write(payload + b"\n")

    code, rows, _ = h.verify_cli(str(run))
    assert code == 1 and [row["checkpoint"] for row in rows if not row["ok"]] == [h.NEWEST]
    assert CliRunner().invoke(cli, ["ls", str(run), "--json"]).exit_code == 0
    assert os.path.basename(tk.Result.from_path(str(run)).checkpoint.path) == h.PREVIOUS
    with pytest.raises(ValueError):
        tk.Checkpoint.from_directory(str(run / h.PREVIOUS)).get_metadata()
    with tk.CheckpointManager(str(run), h.KEEP_ALL) as manager:
        assert os.path.basename(manager.resume_checkpoint().path) == h.PREVIOUS
    assert not marker.exists(), "a file of ours was unpickled"


# ---------------------------------------------------------------------------------------------- no false alarms


def _random_files(rng: random.Random) -> dict[str, bytes]:
    """Return 1-4 files of awkward sizes (0, 1, around a power of two) under awkward names."""
    names = ["model.bin", "sub/opt.bin", "a/b/c/d.txt", "ünïcode ñame.bin", "with space", "x", ".hidden_user_file"]
    sizes = [0, 1, 2, 255, 256, 257, 1023, 1024, 1025, 4096]
    return {name: rng.randbytes(rng.choice(sizes)) for name in rng.sample(names, rng.randint(1, 4))}


@pytest.fixture
def fast_dir(tmp_path: Path) -> Iterator[Path]:
    """Return a directory on tmpfs when there is one (fsync is free there: this test is about verification, and
    a thousand commits on a disk take half a minute of fsyncs), else under tmp_path."""
    if not os.access("/dev/shm", os.W_OK):
        yield tmp_path
        return
    root = Path(tempfile.mkdtemp(prefix="trainkeep-verify-", dir="/dev/shm"))
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_a_thousand_clean_checkpoints_all_verify(fast_dir: Path, seed: int) -> None:
    rng = random.Random(seed)
    scratch = fast_dir / "scratch"
    scratch.mkdir()
    runs = [str(fast_dir / "storage" / f"run{i}") for i in range(10)]
    for run in runs:  # ten runs of 100: each run index stays small, so writing them stays fast
        with tk.CheckpointManager(run) as manager:
            for i in range(100):
                metrics = {"i": i, "loss": rng.choice([rng.random(), float("nan"), float("inf")])}
                source = h.write_source(str(scratch), _random_files(rng))
                manager.report(metrics, source)
                shutil.rmtree(source.path)
    storage = LocalStorage()
    verified = 0
    for run in runs:
        names = sorted(n for n in os.listdir(run) if os.path.isfile(os.path.join(run, n, MANIFEST_NAME)))
        assert len(names) == 100
        for name in names:
            assert verify_checkpoint(storage, run, name) == []
            verified += 1
        code, rows, _ = h.verify_cli(run)
        assert code == 0 and len(rows) == 100 and all(row["ok"] for row in rows)
    print(f"{verified} clean checkpoints verified, 0 false positives")
    assert verified == 1000
