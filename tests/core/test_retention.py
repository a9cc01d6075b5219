"""Retention on lists of plain records, no files: the decisions, their reasons, and Ray's documented examples."""

from __future__ import annotations

import math

import pytest

import trainkeep as tk
from trainkeep._internal.core.retention import Record, best_checkpoints, decide, decide_corrupt, rank


def _records(*scores: object, attribute: str = "score") -> list[Record]:
    out = []
    for i, score in enumerate(scores):
        metrics = {} if score is None else {attribute: score}
        out.append(Record(f"ckpt_{i}", i, metrics))
    return out


def _names(records: tuple[Record, ...] | list[Record]) -> list[str]:
    return [r.name for r in records]


def test_keep_two_max_matches_rays_example() -> None:
    # Ray: keep 2, max, scores 3,9,1,7,2 -> disk holds {9,7,2}; best_checkpoints = [7, 9]; the "2" is the latest.
    records = _records(3, 9, 1, 7, 2)
    config = tk.CheckpointConfig(2, "score", "max")
    decision = decide(records, config)
    assert _names(decision.keep) == ["ckpt_1", "ckpt_3", "ckpt_4"]
    assert _names(decision.delete) == ["ckpt_0", "ckpt_2"]
    assert _names(best_checkpoints(records, config)) == ["ckpt_3", "ckpt_1"]


def test_reasons_name_the_rank_the_rule_and_the_latest() -> None:
    records = _records(3.0, 9.0, 1.0, 7.0, 2.0, attribute="val_loss")
    decision = decide(records, tk.CheckpointConfig(2, "val_loss", "min"))
    assert decision.reasons == {
        "ckpt_0": "outside the top 2 by val_loss (lowest first)",
        "ckpt_1": "outside the top 2 by val_loss (lowest first)",
        "ckpt_2": "#1 by val_loss (lowest first) (top 2)",
        "ckpt_3": "outside the top 2 by val_loss (lowest first)",
        "ckpt_4": "#2 by val_loss (lowest first) (top 2)",
    }
    worse_latest = decide(_records(1.0, 2.0, 9.0, attribute="val_loss"), tk.CheckpointConfig(1, "val_loss", "min"))
    assert worse_latest.reasons["ckpt_2"] == "latest (never deleted), outside the top 1 by val_loss (lowest first)"
    assert worse_latest.reasons["ckpt_0"] == "#1 by val_loss (lowest first) (top 1)"
    assert _names(worse_latest.delete) == ["ckpt_1"]


def test_reasons_without_score_and_without_limit() -> None:
    decision = decide(_records(None, None, None), tk.CheckpointConfig(num_to_keep=1))
    assert decision.reasons == {"ckpt_0": "outside the top 1 by recency", "ckpt_1": "outside the top 1 by recency",
                                "ckpt_2": "#1 by recency (top 1)"}
    keep_all = decide(_records(1, 2), tk.CheckpointConfig(None, "score", "max"))
    assert keep_all.reasons == {"ckpt_0": "#2 by score (highest first) (all kept)",
                                "ckpt_1": "#1 by score (highest first) (all kept)"}
    assert keep_all.delete == ()


def test_protected_checkpoints_survive_with_their_reason() -> None:
    decision = decide(_records(1, 5, 9, 8), tk.CheckpointConfig(1, "score", "max"), protected={"ckpt_0"})
    assert _names(decision.keep) == ["ckpt_0", "ckpt_2", "ckpt_3"]
    assert decision.reasons["ckpt_0"] == "a live worker was started from it"
    assert _names(decision.delete) == ["ckpt_1"]


@pytest.mark.parametrize("order", ["max", "min"])
@pytest.mark.parametrize("bad", [None, math.nan, math.inf, -math.inf])
def test_missing_nan_and_inf_rank_below_every_finite_score_in_both_orders(order: str, bad: object) -> None:
    records = _records(bad, 5.0, -5.0, bad)
    ranked = rank(records, tk.CheckpointConfig(None, "score", order))
    assert _names(ranked[:2]) == ["ckpt_0", "ckpt_3"]  # the non-finite ones, the older first (evicted first)
    finite = ["ckpt_2", "ckpt_1"] if order == "max" else ["ckpt_1", "ckpt_2"]
    assert _names(ranked[2:]) == finite


def test_ties_evict_the_older_checkpoint_first() -> None:
    # Ray: keep 1, scores 1,1,1 -> only the newest survives.
    decision = decide(_records(1, 1, 1), tk.CheckpointConfig(1, "score", "max"))
    assert _names(decision.keep) == ["ckpt_2"]
    assert _names(decide(_records(1, 1, 0), tk.CheckpointConfig(1, "score", "max")).keep) == ["ckpt_1", "ckpt_2"]


def test_nested_score_attribute_ranks_by_the_nested_value() -> None:
    records = [Record(f"c{i}", i, {"val": {"acc": acc}}) for i, acc in enumerate([0.3, 0.9, 0.1, 0.5])]
    decision = decide(records, tk.CheckpointConfig(2, "val/acc", "max"))
    assert _names(decision.keep) == ["c1", "c3"]


def test_no_records_no_decision() -> None:
    decision = decide([], tk.CheckpointConfig(1))
    assert decision.keep == () and decision.delete == () and dict(decision.reasons) == {}


def test_decision_lists_are_in_round_order_regardless_of_input_order() -> None:
    records = list(reversed(_records(4, 1, 3, 2, 0)))
    decision = decide(records, tk.CheckpointConfig(2, "score", "max"))
    assert [r.round for r in decision.keep] == [0, 2, 4]
    assert [r.round for r in decision.delete] == [1, 3]


def test_a_corrupt_record_is_never_deleted_never_ranked_and_never_the_latest() -> None:
    records = _records(9, 1, 7, 2)
    records[0] = Record("ckpt_0", 0, {"score": 9}, corrupt=True)  # the best score
    records[3] = Record("ckpt_3", 3, {"score": 2}, corrupt=True)  # the newest
    config = tk.CheckpointConfig(1, "score", "max")
    decision = decide(records, config)
    assert _names(decision.keep) == ["ckpt_0", "ckpt_2", "ckpt_3"] and _names(decision.delete) == ["ckpt_1"]
    assert decision.reasons["ckpt_0"].startswith("corrupt: never deleted automatically")
    assert decision.reasons["ckpt_2"].startswith("#1 by score")  # the newest healthy one, and the best of them
    assert _names(best_checkpoints(records, config)) == ["ckpt_2"]
    assert _names(rank(records, config)) == ["ckpt_1", "ckpt_2"]


def test_decide_corrupt_deletes_exactly_the_corrupt_records() -> None:
    records = [Record("a", 0, corrupt=True), Record("b", 1), Record("c", 2, corrupt=True)]
    decision = decide_corrupt(records)
    assert _names(decision.delete) == ["a", "c"] and _names(decision.keep) == ["b"]
    assert decide_corrupt(records[1:2]).delete == ()
