"""Fixtures of the CLI tests: finished runs written by the real CheckpointManager in a temp dir."""

from __future__ import annotations

from pathlib import Path

import pytest
from cli_helpers import KEEP_ALL, MIN_TOP2, SCORES, EngineState, scored_reports, write_run


@pytest.fixture
def scored_run(tmp_path: Path) -> EngineState:
    """A finished run of six checkpoints and metrics-only rounds, keeping the top 2 by lowest val_loss."""
    return write_run(tmp_path / "runs" / "scored", scored_reports(SCORES, metric_only_every=2), MIN_TOP2)


@pytest.fixture
def keep_all_run(tmp_path: Path) -> EngineState:
    """A failed run that keeps all of its five checkpoints (so that prune has something to delete)."""
    return write_run(tmp_path / "runs" / "all", scored_reports([0.5, 0.1, 0.4, 0.2, 0.3]), KEEP_ALL, "failed")
