"""A checkpoint that failed verification is marked corrupt (issue 14, item 2; DESIGN §5 invariant 5).

Once marked, by a resume or by ``trainkeep verify``, it is shown as ``corrupt`` by ``trainkeep ls``, left out of
ranking (``best_checkpoints``, ``Result.best_checkpoints``, ``get_best_checkpoint``) and out of deletion by
retention, and removed only by ``trainkeep prune RUN --corrupt``. The mark survives a rebuilt run index.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import corruption_helpers as h
import pytest
from click.testing import CliRunner

import trainkeep as tk
from trainkeep._internal.core.layout import RUN_INDEX_NAME
from trainkeep._internal.engine.corruption import mark_path
from trainkeep._internal.engine.run import read_run
from trainkeep._internal.storage import LocalStorage
from trainkeep.cli.app import cli

OLDEST = "checkpoint_000000"
KEEP_ONE = tk.CheckpointConfig(num_to_keep=1, checkpoint_score_attribute="loss", checkpoint_score_order="min")


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pristine")
    (root / "scratch").mkdir()
    h.write_run(str(root / "run"), str(root / "scratch"))  # losses 1, 1/2, 1/3: the newest is the best
    return root / "run"


@pytest.fixture
def run(pristine: Path, tmp_path: Path) -> Path:
    dest = tmp_path / "storage" / "run"
    shutil.copytree(pristine, dest, symlinks=True)
    (tmp_path / "scratch").mkdir()
    return dest


def _flip_a_bit(run: Path, name: str) -> None:
    path = run / name / "model.bin"
    data = bytearray(path.read_bytes())
    data[random.Random(name).randrange(len(data))] ^= 0x10
    path.write_bytes(bytes(data))


def _cli(*args: str) -> tuple[int, Any]:
    result = CliRunner().invoke(cli, [*args, "--json"])
    return result.exit_code, json.loads(result.stdout) if result.stdout.strip() else None


def _roles(run: Path) -> dict[str, str]:
    code, rows = _cli("ls", str(run))
    assert code == 0
    return {row["name"]: row["role"] for row in rows}


def _report_better(manager: tk.CheckpointManager, scratch: Path, losses: list[float]) -> None:
    for loss in losses:
        manager.report({"loss": loss}, h.write_source(str(scratch), {"model.bin": os.urandom(64)}))


def test_a_checkpoint_found_corrupt_at_resume_is_never_deleted_by_retention(run: Path, tmp_path: Path) -> None:
    _flip_a_bit(run, h.NEWEST)  # the best checkpoint: retention under num_to_keep=1 would delete it first
    with tk.CheckpointManager(run, KEEP_ONE) as manager:
        resumed = manager.resume_checkpoint()
        assert resumed is not None and os.path.basename(resumed.path) == h.PREVIOUS
        _report_better(manager, tmp_path / "scratch", [0.1, 0.01, 0.001])
        assert (run / h.NEWEST).is_dir(), "retention deleted a corrupt checkpoint"
        assert h.NEWEST not in [os.path.basename(c.path) for c, _ in manager.best_checkpoints]
        assert manager.retention_decision().reasons[h.NEWEST].startswith("corrupt")
    assert (run / h.NEWEST).is_dir()
    entries = {c.name: c for c in read_run(LocalStorage(), str(run)).index.checkpoints}
    assert entries[h.NEWEST].corrupt is not None and "checksum" in entries[h.NEWEST].corrupt
    assert set(entries) == {h.NEWEST, "checkpoint_000005"}

    result = tk.Result.from_path(run)
    assert [os.path.basename(c.path) for c, _ in result.best_checkpoints] == ["checkpoint_000005"]
    assert os.path.basename(result.get_best_checkpoint("loss", "min").path) == "checkpoint_000005"
    assert _roles(run) == {h.NEWEST: "corrupt", "checkpoint_000005": "best, latest"}


def test_prune_corrupt_deletes_only_the_marked_ones_and_dry_run_nothing(run: Path, snapshot: Callable) -> None:
    _flip_a_bit(run, h.PREVIOUS)
    code, rows = _cli("verify", str(run))
    assert code == 1 and [row["marked_corrupt"] for row in rows] == [False, True, False]
    before = snapshot(str(run))
    code, rows = _cli("prune", str(run), "--corrupt", "--dry-run")
    assert code == 0 and snapshot(str(run)) == before
    assert {row["name"]: row["action"] for row in rows} == {OLDEST: "keep", h.PREVIOUS: "delete", h.NEWEST: "keep"}
    code, rows = _cli("prune", str(run), "--corrupt")
    assert code == 0 and [row["name"] for row in rows if row["deleted"]] == [h.PREVIOUS]
    assert sorted(p.name for p in run.iterdir() if p.name.startswith("checkpoint_")) == [OLDEST, h.NEWEST]
    assert not os.path.exists(mark_path(LocalStorage(), str(run), h.PREVIOUS))
    assert _roles(run) == {OLDEST: "kept", h.NEWEST: "best, latest"}


@pytest.mark.parametrize("flags", [[], ["--corrupt", "--num-to-keep", "1"], ["--corrupt", "--order", "max"]])
def test_prune_needs_exactly_one_of_num_to_keep_and_corrupt(run: Path, flags: list[str],
                                                             snapshot: Callable) -> None:
    before = snapshot(str(run))
    result = CliRunner().invoke(cli, ["prune", str(run), *flags])
    assert result.exit_code == 2 and "--num-to-keep" in result.stderr
    assert snapshot(str(run)) == before


def test_a_mark_made_by_verify_survives_a_rebuilt_index_and_stops_retention(run: Path, tmp_path: Path) -> None:
    _flip_a_bit(run, h.PREVIOUS)
    assert _cli("verify", str(run))[0] == 1
    (run / RUN_INDEX_NAME).unlink()  # the index is a cache: rebuilt from the manifests, plus the markers
    assert _roles(run)[h.PREVIOUS] == "corrupt"
    with tk.CheckpointManager(run, KEEP_ONE) as manager:
        _report_better(manager, tmp_path / "scratch", [0.01])
    assert sorted(p.name for p in run.iterdir() if p.name.startswith("checkpoint_")) == [h.PREVIOUS,
                                                                                         "checkpoint_000003"]


def test_a_mark_made_while_a_writer_holds_the_run_is_honoured_by_its_retention(run: Path, tmp_path: Path) -> None:
    with tk.CheckpointManager(run, KEEP_ONE) as manager:
        _flip_a_bit(run, h.PREVIOUS)
        assert _cli("verify", str(run))[0] == 1  # verify takes no lock: it only writes the marker
        _report_better(manager, tmp_path / "scratch", [0.01])
        assert (run / h.PREVIOUS).is_dir(), "the writer's retention deleted a checkpoint verify found corrupt"
        assert not (run / OLDEST).exists() and not (run / h.NEWEST).exists()


def test_a_name_reused_after_prune_is_not_condemned_by_the_old_marker(run: Path, tmp_path: Path) -> None:
    _flip_a_bit(run, h.PREVIOUS)
    assert _cli("verify", str(run))[0] == 1
    marker = Path(mark_path(LocalStorage(), str(run), h.PREVIOUS))
    saved = marker.read_bytes()
    assert _cli("prune", str(run), "--corrupt")[0] == 0
    marker.write_bytes(saved)  # as if the process had died before removing the marker
    with tk.CheckpointManager(run, h.KEEP_ALL) as manager:
        manager.report({"loss": 0.0}, h.write_source(str(tmp_path / "scratch"), {"model.bin": b"new"}), h.PREVIOUS)
    assert _roles(run)[h.PREVIOUS] == "best, latest"
