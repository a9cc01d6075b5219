"""Result.from_path: a run read back from storage, without a trainer and without writing anything."""

from __future__ import annotations

import math
import os
import uuid
from collections.abc import Callable
from pathlib import Path

import fsspec
import pandas as pd
import pytest

import trainkeep as tk
from trainkeep.layout import HISTORY_NAME, RUN_INDEX_NAME

MakeSource = Callable[..., tk.Checkpoint]

# (metrics, with a checkpoint?) per round: nested metrics, a metrics-only round, NaN, missing, a tie.
ROUNDS = [
    ({"epoch": 0, "val": {"acc": 0.5}, "train": {"loss": 2.0}}, True),
    ({"epoch": 1, "train": {"loss": 1.5}}, False),
    ({"epoch": 2, "val": {"acc": math.nan}, "train": {"loss": 1.2}}, True),
    ({"epoch": 3, "train": {"loss": 1.1}}, True),  # the score is missing
    ({"epoch": 4, "val": {"acc": 0.9}, "train": {"loss": 1.0}}, True),
    ({"epoch": 5, "val": {"acc": 0.7}, "train": {"loss": 0.9}}, True),
    ({"epoch": 6, "val": {"acc": 0.9}, "train": {"loss": 0.8}}, True),  # ties with epoch 4, newer
    ({"epoch": 7, "train": {"loss": 0.7}}, False),
]


def _write_run(path: str, make_source: MakeSource, config: tk.CheckpointConfig, **kwargs: object) -> None:
    with tk.CheckpointManager(path, config, **kwargs) as manager:
        for metrics, with_checkpoint in ROUNDS:
            ckpt = make_source({"state.bin": str(metrics["epoch"]).encode()}) if with_checkpoint else None
            manager.report(metrics, ckpt)


def _epochs(pairs: list[tuple[tk.Checkpoint, dict]]) -> list[int]:
    return [m["epoch"] for _, m in pairs]


def test_from_path_reads_checkpoint_best_and_last_metrics(run_dir: str, make_source: MakeSource) -> None:
    _write_run(run_dir, make_source, tk.CheckpointConfig(3, "val/acc", "max"))
    result = tk.Result.from_path(run_dir)
    assert result.path == run_dir and result.error is None
    assert result.metrics == ROUNDS[-1][0]  # the last report, even without a checkpoint
    assert result.checkpoint == tk.Checkpoint(os.path.join(run_dir, "checkpoint_000006"))
    assert _epochs(result.best_checkpoints) == [5, 4, 6]  # top 3, best last; the tie goes to the newer
    assert all(isinstance(c, tk.Checkpoint) and c.is_local for c, _ in result.best_checkpoints)
    with result.checkpoint.as_directory() as d:
        assert Path(d, "state.bin").read_bytes() == b"6"


def test_best_checkpoints_without_score_are_by_recency(run_dir: str, make_source: MakeSource) -> None:
    _write_run(run_dir, make_source, tk.CheckpointConfig(num_to_keep=2))
    assert _epochs(tk.Result.from_path(run_dir).best_checkpoints) == [5, 6]


def test_metrics_dataframe_has_every_round_flattened(run_dir: str, make_source: MakeSource) -> None:
    _write_run(run_dir, make_source, tk.CheckpointConfig())
    df = tk.Result.from_path(run_dir).metrics_dataframe
    assert list(df["round"]) == list(range(len(ROUNDS)))
    assert list(df["epoch"]) == list(range(len(ROUNDS)))
    assert {"val/acc", "train/loss", "time", "checkpoint_dir_name"} <= set(df.columns)
    assert "val" not in df.columns and "train" not in df.columns
    assert list(df["train/loss"]) == [m["train"]["loss"] for m, _ in ROUNDS]
    assert df["checkpoint_dir_name"][0] == "checkpoint_000000" and pd.isna(df["checkpoint_dir_name"][1])
    assert math.isnan(df["val/acc"][2]) and math.isnan(df["val/acc"][3])  # NaN, and missing


def test_get_best_checkpoint_ignores_missing_and_nan(run_dir: str, make_source: MakeSource) -> None:
    _write_run(run_dir, make_source, tk.CheckpointConfig())
    result = tk.Result.from_path(run_dir)
    best = result.get_best_checkpoint("val/acc", "max")
    assert best == tk.Checkpoint(os.path.join(run_dir, "checkpoint_000006"))  # the newer of the 0.9 tie
    assert result.get_best_checkpoint("val/acc", "min") == tk.Checkpoint(os.path.join(run_dir, "checkpoint_000000"))
    assert result.get_best_checkpoint("train/loss", "min").path.endswith("checkpoint_000006")


def test_get_best_checkpoint_errors(run_dir: str, make_source: MakeSource, tmp_path: Path) -> None:
    _write_run(run_dir, make_source, tk.CheckpointConfig())
    result = tk.Result.from_path(run_dir)
    for mode in ("MAX", "avg", None):
        with pytest.raises(ValueError, match=f"mode must be 'min' or 'max', got {mode!r}"):
            result.get_best_checkpoint("val/acc", mode)  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="no checkpoint of run .* has a numeric metric 'nope'"):
        result.get_best_checkpoint("nope", "max")
    empty = str(tmp_path / "empty_run")
    with tk.CheckpointManager(empty) as manager:
        manager.report({"loss": 1.0})
    with pytest.raises(RuntimeError, match="has no checkpoints"):
        tk.Result.from_path(empty).get_best_checkpoint("loss", "min")
    assert tk.Result.from_path(empty).checkpoint is None
    assert tk.Result.from_path(empty).metrics == {"loss": 1.0}


def test_missing_run_is_run_not_found(tmp_path: Path) -> None:
    for path in (tmp_path / "nothing_here", tmp_path):
        with pytest.raises(tk.RunNotFoundError) as exc:
            tk.Result.from_path(path)
        assert isinstance(exc.value, FileNotFoundError) and str(path) in str(exc.value)
        assert isinstance(exc.value, RuntimeError)  # what Ray Train raises for a missing run


def test_from_path_writes_nothing_even_on_a_damaged_live_run(run_dir: str, make_source: MakeSource,
                                                             snapshot: Callable[[str], dict]) -> None:
    config = tk.CheckpointConfig(2, "val/acc", "max")
    _write_run(run_dir, make_source, config)
    Path(run_dir, RUN_INDEX_NAME).write_bytes(b"{not json")  # corrupt: rebuilt in memory only
    with open(Path(run_dir, HISTORY_NAME), "ab") as f:
        f.write(b'{"round": 8, "ti')  # torn: ignored, not truncated
    live = tk.CheckpointManager(run_dir, config)  # a writer holds the run; readers need no lock
    try:
        before = snapshot(run_dir)
        result = tk.Result.from_path(run_dir)
        assert snapshot(run_dir) == before
        assert result.metrics == ROUNDS[-1][0]
        assert result.checkpoint == tk.Checkpoint(os.path.join(run_dir, "checkpoint_000006"))
    finally:
        live.close()


def test_from_path_on_an_fsspec_filesystem(make_source: MakeSource) -> None:
    fs = fsspec.filesystem("memory")
    path = f"/runs-{uuid.uuid4().hex}/exp"
    try:
        _write_run(path, make_source, tk.CheckpointConfig(2, "val/acc", "max"), storage_filesystem=fs)
        for result in (tk.Result.from_path(path, storage_filesystem=fs), tk.Result.from_path(f"memory://{path}")):
            assert _epochs(result.best_checkpoints) == [4, 6]
            assert result.checkpoint is not None and not result.checkpoint.is_local
            with result.checkpoint.as_directory() as d:
                assert Path(d, "state.bin").read_bytes() == b"6"
            assert list(result.metrics_dataframe["epoch"]) == list(range(len(ROUNDS)))
    finally:
        fs.rm(path.rsplit("/", 1)[0], recursive=True)


def test_get_best_checkpoint_tie_goes_to_the_newer_whatever_the_run_ranks_by(run_dir: str,
                                                                            make_source: MakeSource) -> None:
    with tk.CheckpointManager(run_dir, tk.CheckpointConfig(None, "acc", "max")) as manager:
        manager.report({"acc": 0.9, "loss": 1.0}, make_source())
        manager.report({"acc": 0.1, "loss": 1.0}, make_source())
    result = tk.Result.from_path(run_dir)
    assert [m["acc"] for _, m in result.best_checkpoints] == [0.1, 0.9]  # ranked by acc: the newer is first
    assert result.get_best_checkpoint("loss", "min").path.endswith("checkpoint_000001")
    assert result.get_best_checkpoint("loss", "max").path.endswith("checkpoint_000001")
