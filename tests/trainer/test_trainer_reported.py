"""get_all_reported_checkpoints() with real workers, and TorchTrainer's ACCELERATE_TORCH_DEVICE."""

from __future__ import annotations

import json

import api_loops as loops
import pytest

import trainkeep as tk
from trainkeep._internal.trainer import reported


def fit(fn, config, run_config, workers=2, trainer=tk.DataParallelTrainer):
    return trainer(fn, train_loop_config=config, scaling_config=tk.ScalingConfig(num_workers=workers),
                   run_config=run_config).fit()


def rows_by_rank(path):
    return {row["rank"]: row["rows"] for row in map(json.loads, open(path).read().splitlines())}


@pytest.mark.parametrize("mode", ["SYNC", "ASYNC"])
def test_every_rank_lists_the_committed_checkpoints_worst_first(mode, loop_config, make_run):
    loop_config.update(losses=[3.0, 1.0, 2.0, 5.0], mode=mode)
    config = tk.CheckpointConfig(num_to_keep=2, checkpoint_score_attribute="loss", checkpoint_score_order="min")
    fit(loops.reports_then_lists, loop_config, make_run(checkpoint_config=config))

    # kept: the best two (epochs 1 and 2) and the latest (epoch 3, protected); ranked worst to best as in Ray.
    # Even after ASYNC reports, the list waits for this rank's last commit.
    expected = [["checkpoint_000003", 3, 3, "COMMITTED"], ["checkpoint_000002", 2, 2, "COMMITTED"],
                ["checkpoint_000001", 1, 1, "COMMITTED"]]
    assert rows_by_rank(loop_config["log"]) == {0: expected, 1: expected}


def test_without_a_score_the_list_is_in_report_order_and_modes_and_timeouts_are_accepted(loop_config, make_run):
    loop_config.update(losses=[3.0, 1.0, 2.0],
                       kwargs={"consistency_mode": tk.CheckpointConsistencyMode.COMMITTED, "timeout_s": 30})
    fit(loops.reports_then_lists, loop_config, make_run(), workers=1)

    assert [row[0] for row in rows_by_rank(loop_config["log"])[0]] == [
        "checkpoint_000000", "checkpoint_000001", "checkpoint_000002"]


@pytest.mark.parametrize(("kwargs", "words"), [
    ({"consistency_mode": "EVENTUAL"}, "consistency_mode must be a CheckpointConsistencyMode"),
    ({"timeout_s": 0}, "timeout_s must be None or a number > 0, got 0"),
])
def test_bad_arguments_are_value_errors(kwargs, words, loop_config, make_run):
    loop_config.update(losses=[1.0], kwargs=kwargs)
    with pytest.raises(tk.TrainingFailedError, match=words) as exc:
        fit(loops.reports_then_lists, loop_config, make_run(), workers=1)
    assert isinstance(exc.value, ValueError)


def test_outside_a_run_it_says_how_to_start_one():
    with pytest.raises(tk.SessionError, match=r"get_all_reported_checkpoints\(\) works only inside"):
        tk.get_all_reported_checkpoints()


def test_statuses_come_from_the_validation_of_an_index_entry():
    class Entry:
        def __init__(self, validation):
            self.validation = validation

    assert reported.status_of(None) is tk.ReportedCheckpointStatus.COMMITTED
    assert reported.status_of(Entry(None)) is tk.ReportedCheckpointStatus.COMMITTED
    for status in ("PENDING_VALIDATION", "VALIDATED", "VALIDATION_TIMEOUT", "VALIDATION_FAILED"):
        assert reported.status_of(Entry({"status": status})).value == status
    assert [s.name for s in tk.ReportedCheckpointStatus] == [
        "COMMITTED", "PENDING_VALIDATION", "VALIDATED", "VALIDATION_TIMEOUT", "VALIDATION_FAILED"]
    assert [m.name for m in tk.CheckpointConsistencyMode] == ["COMMITTED", "VALIDATED"]


def test_torch_trainer_sets_accelerate_torch_device_as_ray_does(loop_config, make_run):
    pytest.importorskip("torch")
    fit(loops.accelerate_env, loop_config, make_run(), trainer=tk.torch.TorchTrainer)

    rows = sorted(map(json.loads, open(loop_config["log"]).read().splitlines()), key=lambda row: row["rank"])
    assert [row["rank"] for row in rows] == [0, 1]
    for row in rows:
        assert row["device"] == row["get_device"] == "cpu"  # str(get_device()); "cuda:N" on a GPU


def test_validated_mode_waits_for_pending_validations_until_its_deadline():
    from types import SimpleNamespace

    def manager(*statuses):
        entries = [SimpleNamespace(validation={"status": s} if s else None) for s in statuses]
        return SimpleNamespace(_state=SimpleNamespace(index=SimpleNamespace(checkpoints=entries)))

    validated = reported.Waiter(0, 2, tk.CheckpointConsistencyMode.VALIDATED, deadline=10.0)
    committed = reported.Waiter(0, 2, tk.CheckpointConsistencyMode.COMMITTED, deadline=None)
    pending = manager(None, "PENDING_VALIDATION")
    assert not reported.is_answerable(validated, 1, manager(), now=0.0)  # its own rounds first
    assert not reported.is_answerable(validated, 2, pending, now=0.0)
    assert reported.is_answerable(validated, 2, pending, now=10.0)  # the deadline: what there is
    assert reported.is_answerable(validated, 2, manager(None, "VALIDATED", "VALIDATION_FAILED"), now=0.0)
    assert reported.is_answerable(committed, 2, pending, now=0.0)
    assert not reported.is_answerable(committed, 1, pending, now=1e9)
