"""Retention against a brute-force oracle written from DESIGN §4, not from retention.py.

The oracle compares checkpoints pairwise ("is a ranked above b?") and counts how many beat each one; the engine
sorts by a key. They must agree on every random sequence of reports: scores with ties, NaN, ±inf and missing
values, nested score attributes, num_to_keep None and 1..5, both orders, protected names.

Deterministic by default (hypothesis ``derandomize``); ``SEED=<int>`` explores a different, replayable stream.
"""

from __future__ import annotations

import math
import os
import random
from dataclasses import dataclass
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st

import trainkeep as tk
from trainkeep._internal.core.retention import Record, best_checkpoints, decide

_SEED = os.environ.get("SEED")
_SETTINGS = settings(max_examples=500, derandomize=_SEED is None, deadline=None,
                     suppress_health_check=[HealthCheck.too_slow])


def _replayable(test: Any) -> Any:
    """Apply the shared settings; with SEED= set, seed hypothesis with it (printed on failure by hypothesis)."""
    test = _SETTINGS(test)
    return hypothesis_seed(int(_SEED))(test) if _SEED else test


# ------------------------------------------------------------------------------------------------ the oracle


@dataclass(frozen=True)
class Config:
    num_to_keep: int | None
    attribute: str | None
    order: str


def oracle_score(metrics: dict[str, Any], attribute: str) -> float | None:
    """The finite score named by ``attribute`` ("a/b" walks nested dicts; an exact top-level key wins)."""
    if attribute in metrics:
        value = metrics[attribute]
    else:
        value = metrics
        for part in attribute.split("/"):
            if not isinstance(value, dict) or part not in value:
                return None
            value = value[part]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def beats(a: Record, b: Record, config: Config) -> bool:
    """Return True when ``a`` ranks strictly above ``b`` (so ``b`` would be evicted before ``a``)."""
    newer = a.round > b.round
    if config.attribute is None:
        return newer
    sa, sb = oracle_score(dict(a.metrics), config.attribute), oracle_score(dict(b.metrics), config.attribute)
    if sa is None or sb is None:
        return newer if sa is None and sb is None else sb is None
    if sa == sb:
        return newer
    return sa > sb if config.order == "max" else sa < sb


def places(records: list[Record], config: Config) -> dict[str, int]:
    """Return each record's place: how many others beat it (0 is the best)."""
    return {r.name: sum(beats(o, r, config) for o in records if o is not r) for r in records}


def oracle_decision(records: list[Record], config: Config, protected: set[str]) -> tuple[set[str], set[str]]:
    """Return (kept names, deleted names) by DESIGN §4's rules."""
    place = places(records, config)
    limit = len(records) if config.num_to_keep is None else config.num_to_keep
    latest = max(records, key=lambda r: r.round).name
    kept = {name for name, p in place.items() if p < limit} | {latest} | (protected & set(place))
    return kept, set(place) - kept


def oracle_best(records: list[Record], config: Config) -> list[str]:
    """Return the top ``num_to_keep`` names, best last."""
    place = places(records, config)
    limit = len(records) if config.num_to_keep is None else config.num_to_keep
    top = [name for name, p in place.items() if p < limit]
    return sorted(top, key=lambda name: -place[name])


# ------------------------------------------------------------------------------------------------ strategies

_values = st.one_of(
    st.sampled_from([0.0, 1.0, 1.0, 2.0, -1.0]),  # small pool: many ties
    st.floats(allow_nan=False, allow_infinity=False, width=32),
    st.integers(-3, 3),
    st.just(math.nan), st.just(math.inf), st.just(-math.inf),
    st.none(),  # the metric is missing from this report
)


@st.composite
def scenarios(draw: Any) -> tuple[list[Record], Config, set[str]]:
    attribute = draw(st.sampled_from([None, "score", "val/score"]))
    config = Config(draw(st.one_of(st.none(), st.integers(1, 5))), attribute, draw(st.sampled_from(["max", "min"])))
    values = draw(st.lists(_values, min_size=1, max_size=12))
    gaps = draw(st.lists(st.integers(1, 3), min_size=len(values), max_size=len(values)))
    records, round_ = [], 0
    for i, (value, gap) in enumerate(zip(values, gaps, strict=True)):
        round_ += gap  # metrics-only rounds between checkpoints leave gaps
        metrics: dict[str, Any] = {"step": i}
        if value is not None:
            if attribute == "val/score":
                metrics["val"] = {"score": value}
            else:
                metrics["score"] = value
        records.append(Record(f"ckpt_{i}", round_, metrics))
    protected = set(draw(st.lists(st.sampled_from([r.name for r in records]), max_size=2)))
    return records, config, protected


def _engine_config(config: Config) -> tk.CheckpointConfig:
    return tk.CheckpointConfig(config.num_to_keep, config.attribute, config.order)


# ------------------------------------------------------------------------------------------------ properties


@_replayable
@given(scenarios(), st.randoms(use_true_random=False))
def test_one_decision_matches_the_oracle(scenario: tuple, shuffler: random.Random) -> None:
    records, config, protected = scenario
    shuffled = list(records)
    shuffler.shuffle(shuffled)  # the engine must not depend on input order
    decision = decide(shuffled, _engine_config(config), protected)
    kept, deleted = oracle_decision(records, config, protected)
    assert {r.name for r in decision.keep} == kept
    assert {r.name for r in decision.delete} == deleted
    assert records[-1].name in kept  # the latest is never deleted
    assert set(decision.reasons) == kept | deleted
    assert [r.round for r in decision.keep] == sorted(r.round for r in decision.keep)
    assert [r.name for r in best_checkpoints(shuffled, _engine_config(config))] == oracle_best(records, config)


@_replayable
@given(scenarios())
def test_incremental_retention_matches_the_oracle_after_every_commit(scenario: tuple) -> None:
    records, config, _ = scenario
    engine_config = _engine_config(config)
    on_storage: list[Record] = []
    for step, record in enumerate(records, start=1):
        on_storage.append(record)
        decision = decide(on_storage, engine_config)
        kept, deleted = oracle_decision(on_storage, config, set())
        assert {r.name for r in decision.keep} == kept
        assert {r.name for r in decision.delete} == deleted
        assert record.name in kept
        on_storage = [r for r in on_storage if r.name in kept]  # deleted ones are gone for later decisions
        # Deleting as we go never loses a checkpoint that a one-shot decision over everything would keep.
        committed = records[:step]
        one_shot, _ = oracle_decision(committed, config, set())
        assert {r.name for r in on_storage} == one_shot
        assert [r.name for r in best_checkpoints(on_storage, engine_config)] == oracle_best(committed, config)
        if config.num_to_keep is not None:
            assert len(on_storage) <= config.num_to_keep + 1


def test_oracle_sanity_against_hand_worked_examples() -> None:
    """Pin the oracle itself to DESIGN §4's examples, so a wrong oracle cannot agree with a wrong engine."""
    rec = [Record(f"c{i}", i, {"score": s}) for i, s in enumerate([3, 9, 1, 7, 2])]
    assert oracle_decision(rec, Config(2, "score", "max"), set()) == ({"c1", "c3", "c4"}, {"c0", "c2"})
    assert oracle_best(rec, Config(2, "score", "max")) == ["c3", "c1"]
    assert oracle_decision(rec, Config(2, "score", "min"), set()) == ({"c2", "c4"}, {"c0", "c1", "c3"})
    nan_first = [Record("a", 0, {"score": math.nan}), Record("b", 1, {"score": -1e9}), Record("c", 2, {})]
    for order in ("max", "min"):
        assert oracle_best(nan_first, Config(1, "score", order)) == ["b"]
    assert oracle_decision(nan_first, Config(None, None, "max"), set()) == ({"a", "b", "c"}, set())


@_replayable
@given(scenarios(), st.sets(st.integers(0, 11), max_size=4))
def test_corrupt_records_are_kept_and_the_rest_is_decided_as_if_they_were_not_there(
        scenario: tuple, condemned: set[int]) -> None:
    """DESIGN §5 invariant 5: a corrupt checkpoint takes no part in ranking and is never deleted by retention."""
    records, config, protected = scenario
    marked = [Record(r.name, r.round, r.metrics, corrupt=i in condemned) for i, r in enumerate(records)]
    healthy = [r for r in marked if not r.corrupt]
    decision = decide(marked, _engine_config(config), protected)
    corrupt = {r.name for r in marked if r.corrupt}
    assert corrupt <= {r.name for r in decision.keep}
    if healthy:
        kept, deleted = oracle_decision(healthy, config, protected)
        assert {r.name for r in decision.keep} == kept | corrupt and {r.name for r in decision.delete} == deleted
        assert [r.name for r in best_checkpoints(marked, _engine_config(config))] == oracle_best(healthy, config)
    else:
        assert decision.delete == ()
