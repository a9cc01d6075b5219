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
from trainkeep._internal.core.layout import HISTORY_NAME, RUN_INDEX_NAME

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


# ------------------------------------------------------------------ issue 13 item 1, issue 14 items 5 and 11


def test_a_nested_score_with_a_slash_inside_a_key_keeps_the_best_checkpoint(run_dir: str,
                                                                            make_source: MakeSource) -> None:
    """{"nested": {"sub/attr": 5}} was ranked as missing, so the later lower score evicted it from storage."""
    config = tk.CheckpointConfig(1, "nested/sub/attr", "max")
    with tk.CheckpointManager(run_dir, config) as manager:
        manager.report({"nested": {"sub/attr": 5}}, make_source({"w": b"5"}))
        manager.report({"nested/sub": {"attr": 3}}, make_source({"w": b"3"}))
        manager.report({"nested": {"sub": {"attr": 4}}}, make_source({"w": b"4"}))
        kept = sorted(os.path.basename(c.path) for c, _ in manager.checkpoints)
    assert kept == ["checkpoint_000000", "checkpoint_000002"]  # the best, and the latest (never deleted)
    assert not Path(run_dir, "checkpoint_000001").exists()
    result = tk.Result.from_path(run_dir)
    assert [m for _, m in result.best_checkpoints] == [{"nested": {"sub/attr": 5}}]
    assert result.get_best_checkpoint("nested/sub/attr", "max").path.endswith("checkpoint_000000")
    assert list(result.metrics_dataframe["nested/sub/attr"]) == [5, 3, 4]


def test_two_spellings_of_one_metric_fail_the_report_and_write_nothing(run_dir: str, make_source: MakeSource,
                                                                       snapshot: Callable[[str], dict]) -> None:
    with tk.CheckpointManager(run_dir, tk.CheckpointConfig(1, "a/b", "max")) as manager:
        manager.report({"a/b": 1.0}, make_source())
        before = snapshot(run_dir)
        for metrics in ({"a/b": 2.0, "a": {"b": 3.0}}, {"a": {"b/c": 1}, "a/b": {"c": 2}}):
            with pytest.raises(tk.InvalidMetricsError, match="two spellings of the metric 'a/b"):
                manager.report(metrics, make_source())
            assert snapshot(run_dir) == before
        manager.report({"a": {"b": 0.5}}, make_source())
    assert list(tk.Result.from_path(run_dir).metrics_dataframe["a/b"]) == [1.0, 0.5]


def test_metrics_dataframe_never_replaces_a_reported_value(run_dir: str) -> None:
    """Metrics named like trainkeep's columns keep their names; trainkeep's columns move to trainkeep/<name>."""
    with tk.CheckpointManager(run_dir) as manager:
        manager.report({"round": 100, "time": "late", "checkpoint_dir_name": "mine", "trainkeep/round": -1})
        manager.report({"loss": 1.0})
    df = tk.Result.from_path(run_dir).metrics_dataframe
    assert list(df["round"].fillna(-2)) == [100, -2]  # the user's, never ours
    assert list(df["time"].fillna("-")) == ["late", "-"] and list(df["checkpoint_dir_name"].fillna("-")) == ["mine", "-"]
    assert list(df["trainkeep/round"].fillna(-2)) == [-1, -2]
    assert list(df["trainkeep/trainkeep/round"]) == [0, 1]  # ours, prefixed once more as trainkeep/round is taken
    assert df["trainkeep/time"].notna().all() and df["trainkeep/checkpoint_dir_name"].isna().all()
    assert "loss" in df.columns


def test_metrics_dataframe_refuses_two_spellings_written_by_an_older_version(run_dir: str) -> None:
    with tk.CheckpointManager(run_dir) as manager:
        manager.report({"x": 1})
    with open(Path(run_dir, HISTORY_NAME), "a") as f:  # what trainkeep wrote before the check at report()
        f.write('{"round": 1, "time": 1.0, "metrics": {"a/b": 1, "a": {"b": 2}}, "checkpoint": null}\n')
    result = tk.Result.from_path(run_dir)
    assert result.metrics == {"a/b": 1, "a": {"b": 2}}
    with pytest.raises(tk.InvalidMetricsError, match=r"round 1 of run .*metrics\['a/b'\] and metrics\['a'\]\['b'\]"):
        result.metrics_dataframe  # noqa: B018


def test_a_score_beyond_the_float_range_is_refused_and_stored_ones_read(run_dir: str, make_source: MakeSource,
                                                                        snapshot: Callable[[str], dict]) -> None:
    """10**400 as the score was accepted; then every commit raised OverflowError and readers crashed."""
    with tk.CheckpointManager(run_dir, tk.CheckpointConfig(1, "score", "max")) as manager:
        manager.report({"score": 1.0, "big": 10**400}, make_source())  # any metric may be a big int ...
        before = snapshot(run_dir)
        for metrics in ({"score": 10**400}, {"score": -(10**400), "x": 1}):
            with pytest.raises(tk.ScoreTypeError, match="'score'.*beyond the float range"):  # ... not the score
                manager.report(metrics, make_source())
            assert snapshot(run_dir) == before
        manager.report({"score": 2.0, "big": 10**399}, make_source())
    # Reopened ranking by the stored big ints: retention, from_path and get_best_checkpoint read them.
    with tk.CheckpointManager(run_dir, tk.CheckpointConfig(1, "big", "max")) as manager:
        manager.report({"score": 3.0}, make_source())
    result = tk.Result.from_path(run_dir)
    assert len(result.best_checkpoints) == 1
    with pytest.raises(RuntimeError, match="no checkpoint .* has a numeric metric 'big'"):
        result.get_best_checkpoint("big", "max")
    assert result.get_best_checkpoint("score", "max").path.endswith("checkpoint_000002")
    assert list(result.metrics_dataframe["score"]) == [1.0, 2.0, 3.0]
