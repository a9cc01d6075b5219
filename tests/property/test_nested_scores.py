"""Metric lookups against a flatten-then-look-up oracle, over random mixes of nesting and slashes in keys.

Ray Train flattens reported metrics with "/" and looks the score attribute up in the flattened dict, so
``{"a": {"b/c": 1}}``, ``{"a/b": {"c": 1}}`` and ``{"a": {"b": {"c": 1}}}`` all hold the metric ``a/b/c``
(DESIGN §4). The oracle below is written from that sentence, recursively, not from metrics.py: it lists every
path from the top to a non-dict value and joins it with "/". Two paths with the same join are a collision, which
``report()`` refuses. Every lookup of trainkeep (validation at ``report()``, the score used by retention,
``get_best_checkpoint``) must agree with the oracle on every example.

Deterministic by default (hypothesis ``derandomize``); ``SEED=<int>`` explores a different, replayable stream.
"""

from __future__ import annotations

import math
import os
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st

import trainkeep as tk
from trainkeep._internal.core.metrics import (
    MISSING,
    check_score,
    flatten,
    lookup,
    normalize_metrics,
    score_value,
)
from trainkeep._internal.core.retention import Record, decide

_SEED = os.environ.get("SEED")
_SETTINGS = settings(max_examples=400, derandomize=_SEED is None, deadline=None,
                     suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(autouse=True)
def _print_seed() -> None:
    """Print how to replay: the fixed derandomized stream, or the SEED this run explored."""
    print(f"hypothesis seed: SEED={_SEED} replays this test" if _SEED else
          "hypothesis derandomized (the same examples every run); SEED=<int> explores another stream")


def _replayable(test: Any) -> Any:
    test = _SETTINGS(test)
    return hypothesis_seed(int(_SEED))(test) if _SEED else test


# ------------------------------------------------------------------------------------------------ the oracle


def oracle_paths(metrics: dict[str, Any], above: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    """Return every (path of keys, value) from the top to a value that is not a dict."""
    out: list[tuple[tuple[str, ...], Any]] = []
    for key, value in metrics.items():
        if isinstance(value, dict):
            out += oracle_paths(value, above + (key,))
        else:
            out.append((above + (key,), value))
    return out


def oracle_dict_names(metrics: dict[str, Any], above: tuple[str, ...] = ()) -> set[str]:
    """Return the joined path of every dict inside ``metrics``."""
    names: set[str] = set()
    for key, value in metrics.items():
        if isinstance(value, dict):
            names |= {"/".join(above + (key,))} | oracle_dict_names(value, above + (key,))
    return names


def oracle_flat(metrics: dict[str, Any]) -> tuple[dict[str, Any], set[str]]:
    """Return (the flattened metrics, the names that two or more paths flatten to)."""
    flat: dict[str, Any] = {}
    collided: set[str] = set()
    for path, value in oracle_paths(metrics):
        name = "/".join(path)
        if name in flat:
            collided.add(name)
        flat[name] = value
    return flat, collided


def oracle_score_check(metrics: dict[str, Any], attribute: str) -> str:
    """Return "missing", "ok" or "type error": what ``report()`` must do with this score attribute."""
    flat, _ = oracle_flat(metrics)
    if attribute not in flat:
        is_group = attribute in oracle_dict_names(metrics) or any(n.startswith(attribute + "/") for n in flat)
        return "type error" if is_group else "missing"
    value = flat[attribute]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "type error"
    try:
        float(value)
    except OverflowError:
        return "type error"
    return "ok"


def oracle_score(metrics: dict[str, Any], attribute: str) -> float | None:
    """Return the finite score that ranks, or None (missing, NaN, ±inf, not a number, beyond the float range)."""
    if oracle_score_check(metrics, attribute) != "ok":
        return None
    value = float(oracle_flat(metrics)[0][attribute])
    return value if math.isfinite(value) else None


def oracle_best_value(metrics: dict[str, Any], attribute: str) -> float | None:
    """Return what ``get_best_checkpoint`` compares: any number but NaN (±inf included), else None."""
    if oracle_score_check(metrics, attribute) != "ok":
        return None
    value = float(oracle_flat(metrics)[0][attribute])
    return None if math.isnan(value) else value


def same(a: Any, b: Any) -> bool:
    return a is b or a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b))


# ------------------------------------------------------------------------------------------------ strategies

_SEGMENTS = ["a", "b", "a/b", "b/a", "a/b/a", "c", ""]
_keys = st.sampled_from(_SEGMENTS)
_values = st.one_of(
    st.sampled_from([0.0, 1.0, 2.0, -1.0]), st.integers(-3, 3), st.floats(allow_nan=False, width=32),
    st.just(math.nan), st.just(math.inf), st.just(10**400), st.just(-(10**400)),
    st.sampled_from(["x", None, True, [1.0]]), st.just({}),
)
_metrics = st.dictionaries(_keys, st.recursive(_values, lambda inner: st.dictionaries(_keys, inner, max_size=3),
                                               max_leaves=8), max_size=4)
_probes = st.sampled_from(["a", "b", "c", "a/b", "b/a", "a/b/a", "a/b/c", "a/a", "b/a/b", "a/b/a/b", "a/", "x"])


def _clean(metrics: dict[str, Any]) -> bool:
    return not oracle_flat(metrics)[1]


# ------------------------------------------------------------------------------------------------ properties


@_replayable
@given(_metrics)
def test_report_refuses_exactly_the_collisions(metrics: dict[str, Any]) -> None:
    _, collided = oracle_flat(metrics)
    if collided:
        with pytest.raises(tk.InvalidMetricsError, match="two spellings of the metric") as exc:
            normalize_metrics(metrics)
        assert any(repr(name) in str(exc.value) for name in collided)
    else:
        normalize_metrics(metrics)


@_replayable
@given(_metrics.filter(_clean), _probes)
def test_flatten_and_lookup_match_the_oracle(metrics: dict[str, Any], probe: str) -> None:
    expected, _ = oracle_flat(metrics)
    flat = flatten(metrics, strict=True)
    assert flat.keys() == expected.keys()
    assert all(same(flat[k], expected[k]) for k in flat)
    for name in [probe, *expected]:
        assert same(lookup(metrics, name), expected.get(name, MISSING))


@_replayable
@given(_metrics.filter(_clean), _probes)
def test_score_checks_and_values_match_the_oracle(metrics: dict[str, Any], probe: str) -> None:
    for attribute in [probe, *oracle_flat(metrics)[0]]:
        if not attribute:
            continue  # an empty score attribute is refused by CheckpointConfig
        if oracle_score_check(metrics, attribute) == "type error":
            with pytest.raises(tk.ScoreTypeError, match=f"checkpoint_score_attribute {attribute!r}"):
                check_score(metrics, attribute)
        else:
            check_score(metrics, attribute)
        assert same(score_value(metrics, attribute), oracle_score(metrics, attribute))


@_replayable
@given(st.lists(_metrics.filter(_clean), min_size=1, max_size=8), _probes.filter(bool),
       st.sampled_from(["max", "min"]), st.integers(1, 3))
def test_retention_and_get_best_checkpoint_rank_by_the_oracle_score(
    reports: list[dict[str, Any]], attribute: str, order: str, keep: int
) -> None:
    reports = [m for m in reports if oracle_score_check(m, attribute) != "type error"]  # refused at report()
    if not reports:
        return
    records = [Record(f"ckpt_{i}", i, m) for i, m in enumerate(reports)]

    def signed(record: Record) -> tuple[int, float, int]:
        score = oracle_score(dict(record.metrics), attribute)
        return (0, 0.0, record.round) if score is None else (1, score if order == "max" else -score, record.round)

    top = sorted(records, key=signed)[-keep:]
    decision = decide(records, tk.CheckpointConfig(keep, attribute, order))
    assert {r.name for r in decision.keep} == {r.name for r in top} | {records[-1].name}

    pairs = [(tk.Checkpoint(f"/nowhere/{r.name}"), dict(r.metrics)) for r in records]
    result = tk.Result(metrics=None, checkpoint=None, path="/nowhere", best_checkpoints=pairs)
    usable = [(v if order == "max" else -v, r.round, r.name) for r in records
              if (v := oracle_best_value(dict(r.metrics), attribute)) is not None]  # the newer wins a tie
    if not usable:
        with pytest.raises(RuntimeError, match=f"numeric metric {attribute!r}"):
            result.get_best_checkpoint(attribute, order)
    else:
        assert result.get_best_checkpoint(attribute, order).path == f"/nowhere/{max(usable)[2]}"
