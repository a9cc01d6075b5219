"""Port of ray-project/ray python/ray/train/tests/test_checkpoint_manager.py (Ray 2.60), with trainkeep's public
CheckpointManager in place of Ray's internal ``_CheckpointManager``.

Ray's manager registers the user's directories and deletes them when they fall out of the top ``num_to_keep``;
trainkeep's copies each reported directory into the run and deletes those copies, so "deleted" below is about
the run's checkpoint directories (the user's sources are never deleted). Ray's ``_get_checkpoint_score`` is
internal: the nested-score test asserts the ranking it produces instead.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from trainkeep import Checkpoint, CheckpointConfig, CheckpointManager


@pytest.fixture
def checkpoint_paths(tmp_path):
    paths = []
    for i in range(10):
        path = tmp_path / f"ckpt_{i}"
        path.mkdir()
        (path / "dummy.txt").write_text(f"{i}")
        paths.append(str(path))
    return paths


def on_storage(manager: CheckpointManager) -> set[int]:
    """Return the iterations whose checkpoint directories are in the run."""
    found = set()
    for name in os.listdir(manager.path):
        if name.startswith("checkpoint_"):
            found.add(int(Path(manager.path, name, "dummy.txt").read_text()))
    return found


def test_unlimited_checkpoints(checkpoint_paths, tmp_path):
    with CheckpointManager(str(tmp_path / "run"), CheckpointConfig(num_to_keep=None)) as manager:
        for i in range(10):
            manager.report({"iter": i}, Checkpoint.from_directory(checkpoint_paths[i]))
        assert len(manager.best_checkpoints) == 10


def test_limited_checkpoints(checkpoint_paths, tmp_path):
    with CheckpointManager(str(tmp_path / "run"), CheckpointConfig(num_to_keep=2)) as manager:
        for i in range(10):
            manager.report({"iter": i}, Checkpoint.from_directory(checkpoint_paths[i]))
        assert len(manager.best_checkpoints) == 2
        assert {m["iter"] for _, m in manager.best_checkpoints} == {8, 9}  # the latest without a metric
        assert on_storage(manager) == {8, 9}
    assert all(os.path.exists(p) for p in checkpoint_paths)  # the sources are the user's: kept


@pytest.mark.parametrize("order", ["min", "max"])
def test_keep_checkpoints_by_score(order, checkpoint_paths, tmp_path, seed):
    rng = random.Random(seed)
    with CheckpointManager(str(tmp_path / "run"), CheckpointConfig(
            num_to_keep=2, checkpoint_score_attribute="score", checkpoint_score_order=order)) as manager:
        scores = []
        for i in range(10):
            score = rng.random()
            manager.report({"iter": i, "score": score}, Checkpoint.from_directory(checkpoint_paths[i]))
            scores.append(score)
        top = sorted(scores, reverse=order == "max")[:2]
        assert set(top) == {m["score"] for _, m in manager.best_checkpoints}
        best_iters = {m["iter"] for _, m in manager.best_checkpoints}
        assert on_storage(manager) == best_iters | {9}  # the top 2, and the latest


def test_keep_latest_checkpoint(checkpoint_paths, tmp_path):
    with CheckpointManager(str(tmp_path / "run"), CheckpointConfig(
            num_to_keep=2, checkpoint_score_attribute="score", checkpoint_score_order="max")) as manager:
        for i, score in enumerate([3.0, 2.0, 1.0]):
            manager.report({"score": score}, Checkpoint.from_directory(checkpoint_paths[i]))
        assert len(manager.best_checkpoints) == 2
        # the latest, with the lowest score, is not deleted yet
        assert manager.latest_checkpoint is not None
        assert on_storage(manager) == {0, 1, 2}
        manager.report({"score": 0.0}, Checkpoint.from_directory(checkpoint_paths[3]))
        # a newer one came: the previous latest is now below the top 2 and goes; the new latest stays
        assert on_storage(manager) == {0, 1, 3}
        assert Path(manager.latest_checkpoint.path, "dummy.txt").read_text() == "3"


@pytest.mark.parametrize("metrics", [
    {"nested": {"sub": {"attr": 5}}},
    {"nested": {"sub/attr": 5}},
    {"nested/sub": {"attr": 5}},
    {"nested/sub/attr": 5},
])
def test_nested_get_checkpoint_score(metrics, checkpoint_paths, tmp_path):
    """Each spelling flattens to "nested/sub/attr" = 5: it outranks a later 4 and survives it (keep 1)."""
    with CheckpointManager(str(tmp_path / "run"), CheckpointConfig(
            num_to_keep=1, checkpoint_score_attribute="nested/sub/attr", checkpoint_score_order="max")) as manager:
        manager.report(metrics, Checkpoint.from_directory(checkpoint_paths[0]))
        manager.report({"nested/sub/attr": 4}, Checkpoint.from_directory(checkpoint_paths[1]))
        manager.report({"nested/sub/attr": 3}, Checkpoint.from_directory(checkpoint_paths[2]))
        assert [m for _, m in manager.best_checkpoints] == [metrics]
        assert on_storage(manager) == {0, 2}
