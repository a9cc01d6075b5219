"""Merging a validation's metrics into a checkpoint's, over random mixes of nesting and slashes in keys.

The rule (docs/trainer.md, "Validation"): a top-level key the validation returns replaces the reported one whole
(Ray's ``dict.update``); beyond that the validation wins on every flattened name it returns and every other
reported metric survives; the result never holds two spellings of one metric. The oracle below is written from that rule over flattened
dicts, not from validation_state.py.

Deterministic by default (hypothesis ``derandomize``); ``SEED=<int>`` explores a different, replayable stream.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st

from trainkeep._internal.core.metrics import flatten, normalize_metrics
from trainkeep._internal.core.validation_state import merge_validated
from trainkeep.errors import InvalidMetricsError

_SEED = os.environ.get("SEED")
_SETTINGS = settings(max_examples=300, derandomize=_SEED is None, deadline=None,
                     suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


@pytest.fixture(autouse=True)
def _print_seed() -> None:
    print(f"hypothesis seed: SEED={_SEED} replays this test" if _SEED else
          "hypothesis derandomized (the same examples every run); SEED=<int> explores another stream")


def _replayable(test: Any) -> Any:
    test = _SETTINGS(test)
    return hypothesis_seed(int(_SEED))(test) if _SEED else test


_KEYS = st.sampled_from(["a", "b", "a/b", "b/c", "a/b/c", "c"])
_METRICS = st.recursive(st.integers(0, 9), lambda inner: st.dictionaries(_KEYS, inner, max_size=3), max_leaves=6)


def _valid(metrics: Any) -> dict[str, Any] | None:
    """Return ``metrics`` when it is a dict that report() accepts (no two spellings), else None."""
    if not isinstance(metrics, dict):
        return None
    try:
        return normalize_metrics(metrics)
    except InvalidMetricsError:
        return None


def oracle(reported: dict[str, Any], validated: dict[str, Any]) -> dict[str, Any]:
    """Return the flattened merge the rule asks for."""
    names = set(flatten(validated))
    out = {name: item for key, value in reported.items() if key not in validated
           for name, item in flatten({key: value}).items() if name not in names}
    out.update(flatten(validated))
    return out


@_replayable
@given(_METRICS.map(_valid).filter(lambda m: m is not None), _METRICS.map(_valid).filter(lambda m: m is not None))
def test_the_validation_wins_by_flattened_name_and_no_metric_gets_two_spellings(reported: dict[str, Any],
                                                                                 validated: dict[str, Any]) -> None:
    merged = merge_validated(reported, validated)
    assert normalize_metrics(merged) == merged  # one spelling per metric: report() would accept it
    assert flatten(merged) == oracle(reported, validated)
