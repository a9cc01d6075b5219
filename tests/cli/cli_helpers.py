"""Helpers for the CLI tests: real runs written by CheckpointManager, and the real console script.

A module of its own (not conftest) so that `from cli_helpers import ...` cannot pick up another directory's conftest.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trainkeep as tk
from trainkeep._internal.core.manifest import Manifest
from trainkeep._internal.core.retention import Decision

_SCRIPT = Path(sys.executable).with_name("trainkeep")
COMMAND = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "trainkeep"]


def run_cli(*args: str, env: dict[str, str] | None = None, cwd: str | os.PathLike | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run the installed ``trainkeep`` console script in a subprocess and return what it did."""
    full_env = {**os.environ, "COLUMNS": "200", **(env or {})}
    return subprocess.run([*COMMAND, *args], capture_output=True, text=True, env=full_env, cwd=cwd,
                          timeout=timeout)


def run_json(*args: str) -> Any:
    """Run a ``--json`` command that must succeed, and return its parsed stdout."""
    proc = run_cli(*args, "--json")
    assert proc.returncode == 0, (proc.returncode, proc.stdout, proc.stderr)
    return json.loads(proc.stdout)


def assert_one_line_error(proc: subprocess.CompletedProcess[str], code: int, *fragments: str) -> None:
    """Check a failed command: the exit code, one ``trainkeep: error:`` line on stderr, no traceback."""
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("trainkeep: error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


@dataclass
class Report:
    """One report of a test run: its metrics and, when it commits a checkpoint, its files."""

    metrics: dict[str, Any]
    files: dict[str, bytes] | None = None
    metadata: dict[str, Any] | None = None


@dataclass
class EngineState:
    """What the engine itself says about a run, captured from its CheckpointManager before closing it."""

    path: str
    checkpoints: list[str]
    metrics: dict[str, dict[str, Any]]
    manifests: dict[str, Manifest]
    best: str | None
    decision: Decision
    history: list[dict[str, Any]] = field(default_factory=list)


def write_run(path: str | os.PathLike, reports: list[Report], config: tk.CheckpointConfig,
              status: str = "finished", storage_filesystem: Any = None) -> EngineState:
    """Write a run through CheckpointManager, capture the engine's state, and close the run with ``status``."""
    manager = tk.CheckpointManager(path, config, storage_filesystem)
    try:
        for report in reports:
            checkpoint = None
            with tempfile.TemporaryDirectory() as d:
                if report.files is not None:
                    for rel, data in report.files.items():
                        os.makedirs(os.path.dirname(os.path.join(d, rel)), exist_ok=True)
                        with open(os.path.join(d, rel), "wb") as f:
                            f.write(data)
                    checkpoint = tk.Checkpoint.from_directory(d)
                    if report.metadata is not None:
                        checkpoint.set_metadata(report.metadata)
                manager.report(report.metrics, checkpoint=checkpoint)
        return capture(manager)
    finally:
        manager.close(status)


def capture(manager: tk.CheckpointManager) -> EngineState:
    """Return the engine's view of the run held by ``manager``."""
    names = [os.path.basename(c.path) for c, _ in manager.checkpoints]
    best = manager.best_checkpoints
    return EngineState(
        path=manager.path,
        checkpoints=names,
        metrics={os.path.basename(c.path): m for c, m in manager.checkpoints},
        manifests={name: manager.manifest(name) for name in names},
        best=os.path.basename(best[-1][0].path) if best else None,
        decision=manager.retention_decision(),
        history=manager.history,
    )


def scored_reports(scores: list[float], metric_only_every: int = 0) -> list[Report]:
    """Return reports with a ``val_loss`` per checkpoint, a few files each, and some metrics-only rounds."""
    reports: list[Report] = []
    for i, score in enumerate(scores):
        if metric_only_every and i % metric_only_every == 0:
            reports.append(Report({"step": i, "train_loss": score * 2}))
        files = {"model.bin": os.urandom(1000 + 100 * i), "sub/opt.bin": bytes([i]) * 50}
        metrics = {"epoch": i, "val_loss": score, "lr": 0.1, "nested": {"acc": 1 - score, "f1": score / 2},
                   "grad_norm": 1.5, "tokens": 1000 * i}
        reports.append(Report(metrics, files, metadata={"epoch": i}))
    return reports


# Losses chosen so that the latest checkpoint is not in the top 2: it stays as "kept as latest only".
SCORES = [0.9, 0.3, 0.7, 0.2, 0.6, 0.5]
MIN_TOP2 = tk.CheckpointConfig(num_to_keep=2, checkpoint_score_attribute="val_loss", checkpoint_score_order="min")
KEEP_ALL = tk.CheckpointConfig(checkpoint_score_attribute="val_loss", checkpoint_score_order="min")
