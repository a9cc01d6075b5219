"""A run written by trainkeep 0.1.0 (before the redesign) opens, resumes, verifies and grows with today's code.

``tests/data/runs/written_by_0_1_0`` was written by the release of commit a8c7322: five checkpoints scored by the
nested metric ``val/loss`` (min), ``num_to_keep=2``, and a metrics-only round after each checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

import trainkeep as tk

OLD_RUN = Path(__file__).resolve().parents[1] / "data" / "runs" / "written_by_0_1_0"
CONFIG = tk.CheckpointConfig(num_to_keep=2, checkpoint_score_attribute="val/loss", checkpoint_score_order="min")


@pytest.fixture
def run(tmp_path: Path) -> Path:
    dest = tmp_path / "written_by_0_1_0"
    shutil.copytree(OLD_RUN, dest)
    return dest


def _names(pairs: list) -> list[str]:
    return [os.path.basename(checkpoint.path) for checkpoint, _ in pairs]


def test_result_from_path_reads_the_old_run(run: Path) -> None:
    result = tk.Result.from_path(str(run))
    assert os.path.basename(result.checkpoint.path) == "checkpoint_000008"
    assert _names(result.best_checkpoints) == ["checkpoint_000006", "checkpoint_000002"]  # best last
    frame = result.metrics_dataframe
    assert list(frame["step"]) == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert frame["val/loss"].dropna().tolist() == [0.9, 0.5, 0.7, 0.6, 0.8]
    assert result.checkpoint.get_metadata() == {"step": 4}


def test_the_old_run_resumes_and_grows_under_the_same_policy(run: Path) -> None:
    with tk.CheckpointManager(str(run), CONFIG) as manager:
        resume = manager.resume_checkpoint()
        assert resume is not None and os.path.basename(resume.path) == "checkpoint_000008"
        with resume.as_directory() as d:
            assert Path(d, "opt", "state.json").read_text() == '{"step": 4}'
        assert manager.next_round == 10
        with tempfile.TemporaryDirectory() as d:
            Path(d, "weights.bin").write_bytes(b"\x05" * 64)
            manager.report({"step": 5, "val": {"loss": 0.1}}, checkpoint=tk.Checkpoint.from_directory(d))
        kept = sorted(p.name for p in run.iterdir() if p.name.startswith("checkpoint_"))
    assert kept == ["checkpoint_000002", "checkpoint_000010"]  # the two best; the new one is also the latest


def test_the_cli_verifies_and_lists_the_old_run(run: Path) -> None:
    cli = [sys.executable, "-m", "trainkeep"]
    verify = subprocess.run([*cli, "verify", str(run)], capture_output=True, text=True, timeout=60)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    listed = subprocess.run([*cli, "ls", str(run), "--json"], capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0, listed.stderr
    assert [row["name"] for row in json.loads(listed.stdout)] == ["checkpoint_000002", "checkpoint_000006",
                                                                 "checkpoint_000008"]
