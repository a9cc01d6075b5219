"""Reported metrics: normalisation to plain JSON values, flattening, score lookup and score type checks."""

from __future__ import annotations

import json
import math
from fractions import Fraction

import numpy as np
import pytest
import torch

import trainkeep as tk
from trainkeep._internal.core.metrics import (
    MISSING,
    as_float,
    check_score,
    flatten,
    lookup,
    normalize_metrics,
    score_value,
)


def test_numpy_scalars_and_0d_arrays_become_python_numbers() -> None:
    out = normalize_metrics({"a": np.float32(0.5), "b": np.int64(3), "c": np.bool_(True), "d": np.array(2.5),
                             "e": [np.float64(1.0), (np.int8(2),)], "f": {"g": np.uint16(7)}})
    assert out == {"a": 0.5, "b": 3, "c": True, "d": 2.5, "e": [1.0, [2]], "f": {"g": 7}}
    assert [type(out[k]) for k in "abcd"] == [float, int, bool, float]
    assert type(out["f"]["g"]) is int
    json.dumps(out)  # plain JSON values only


def test_normalize_returns_a_deep_copy() -> None:
    source = {"nested": {"x": [1, 2]}}
    out = normalize_metrics(source)
    out["nested"]["x"].append(3)
    assert source == {"nested": {"x": [1, 2]}}


def test_nan_and_inf_are_kept() -> None:
    out = normalize_metrics({"a": math.nan, "b": -math.inf})
    assert math.isnan(out["a"]) and out["b"] == -math.inf


@pytest.mark.parametrize(
    ("metrics", "fragments"),
    [
        ({"loss": torch.tensor(0.5)}, ("metrics['loss']", "torch", ".item()")),
        ({"a": {"b": torch.ones(2)}}, ("metrics['a']['b']", "torch")),
        ({"tags": {"x", "y"}}, ("metrics['tags']", "set")),
        ({"obj": object()}, ("metrics['obj']", "object")),
        ({"a": [1, {"b": Fraction(1, 3)}]}, ("metrics['a'][1]['b']", "Fraction")),
        ({"arr": np.zeros(3)}, ("metrics['arr']", "ndarray")),
        ({1: 2.0}, ("metrics", "key 1", "int", "strings")),
        ({"a": {("t",): 1}}, ("metrics['a']", "('t',)", "strings")),
        ({"b": b"bytes"}, ("metrics['b']", "bytes")),
    ],
)
def test_unstorable_values_are_refused_naming_the_key_path(metrics: dict, fragments: tuple[str, ...]) -> None:
    with pytest.raises(tk.InvalidMetricsError) as exc:
        normalize_metrics(metrics)
    assert isinstance(exc.value, TypeError)
    assert isinstance(exc.value, ValueError)  # what Ray Train raises for a tensor in metrics
    for fragment in fragments:
        assert fragment in str(exc.value)


@pytest.mark.parametrize("metrics", [None, [("a", 1)], "loss=1", 3])
def test_metrics_must_be_a_dict(metrics: object) -> None:
    with pytest.raises(tk.InvalidMetricsError, match="metrics must be a dict"):
        normalize_metrics(metrics)


def test_deep_nesting_is_refused() -> None:
    deep: dict = {}
    node = deep
    for _ in range(40):
        node["x"] = {}
        node = node["x"]
    with pytest.raises(tk.InvalidMetricsError, match="nested more than"):
        normalize_metrics(deep)


def test_flatten_joins_nested_keys_with_slashes_and_drops_empty_dicts() -> None:
    assert flatten({"a": {"b": 1, "c": {"d": 2}}, "e": 3, "empty": {}, "l": [{"x": 1}]}) == {
        "a/b": 1, "a/c/d": 2, "e": 3, "l": [{"x": 1}]}
    assert list(flatten({"z": {"y": 1}, "a": 2, "m/n": {"o": 3}})) == ["z/y", "a", "m/n/o"]  # key order kept


@pytest.mark.parametrize("metrics", [{"a": {"b/c": 1}}, {"a/b": {"c": 1}}, {"a": {"b": {"c": 1}}}, {"a/b/c": 1}])
def test_every_mix_of_nesting_and_slashes_flattens_to_one_key(metrics: dict) -> None:
    assert flatten(metrics) == {"a/b/c": 1}
    assert lookup(metrics, "a/b/c") == 1
    assert score_value(metrics, "a/b/c") == 1.0
    check_score(metrics, "a/b/c")
    assert normalize_metrics(metrics) == metrics


def test_a_slash_inside_a_nested_key_is_found() -> None:
    """The issue 13 case: ranked as missing before, so a later lower score evicted the best checkpoint."""
    metrics = {"nested": {"sub/attr": 5}}
    assert lookup(metrics, "nested/sub/attr") == 5
    assert score_value(metrics, "nested/sub/attr") == 5.0
    with pytest.raises(tk.ScoreTypeError, match="'nested/sub/attr'.*'bad'"):
        check_score({"nested": {"sub/attr": "bad"}}, "nested/sub/attr")


@pytest.mark.parametrize(
    ("metrics", "first", "second", "key"),
    [
        ({"a/b": 1, "a": {"b": 2}}, "metrics['a/b']", "metrics['a']['b']", "'a/b'"),
        ({"a": {"b/c": 1}, "a/b": {"c": 2}}, "metrics['a']['b/c']", "metrics['a/b']['c']", "'a/b/c'"),
        ({"x": {"a": {"b": 1}, "a/b": 1}}, "metrics['x']['a']['b']", "metrics['x']['a/b']", "'x/a/b'"),
    ],
)
def test_two_spellings_of_one_metric_are_refused(metrics: dict, first: str, second: str, key: str) -> None:
    with pytest.raises(tk.InvalidMetricsError) as exc:
        normalize_metrics(metrics)
    assert isinstance(exc.value, ValueError) and isinstance(exc.value, TypeError)
    message = str(exc.value)
    assert first in message and second in message and key in message and "two spellings" in message


def test_a_stored_collision_reads_back_with_the_least_nested_spelling() -> None:
    """Runs written before collisions were refused still read (lookups never raise); strict mode names them."""
    for metrics in ({"a/b": 1, "a": {"b": 2}}, {"a": {"b": 2}, "a/b": 1}):
        assert flatten(metrics) == {"a/b": 1} and lookup(metrics, "a/b") == 1
        with pytest.raises(tk.InvalidMetricsError, match="two spellings"):
            flatten(metrics, strict=True)


@pytest.mark.parametrize("metrics", [{"val": {"loss": 1}}, {"val/loss": 1}, {"val": {}}, {"val/x": {"y": 1}}])
def test_a_score_attribute_naming_a_group_is_a_type_error_however_spelled(metrics: dict) -> None:
    with pytest.raises(tk.ScoreTypeError, match=r"'val'.*\(dict\)"):
        check_score(metrics, "val")
    check_score({"x": {"val": 1.0}, "value": 2}, "val")  # a name that only ends or starts the same is missing


def test_lookup_of_a_group_or_a_missing_name_is_missing() -> None:
    metrics = {"a": {"b": 2, "c": {"d": 3}}, "e": None}
    assert lookup(metrics, "a/b") == 2
    assert lookup(metrics, "a/c/d") == 3
    assert lookup(metrics, "e") is None
    assert lookup(metrics, "a") is MISSING and lookup(metrics, "a/c") is MISSING
    assert lookup(metrics, "missing") is MISSING
    assert lookup(metrics, "a/c/x") is MISSING


@pytest.mark.parametrize("value", [1, 2.5, -3, math.nan, math.inf, -math.inf])
def test_real_scores_pass(value: float) -> None:
    check_score({"loss": value}, "loss")
    check_score({"val": {"loss": value}}, "val/loss")


@pytest.mark.parametrize("value", ["0.5", None, True, False, [1.0], {"x": 1.0}, {}])
def test_non_real_scores_are_type_errors(value: object) -> None:
    with pytest.raises(tk.ScoreTypeError) as exc:
        check_score({"loss": value}, "loss")
    assert isinstance(exc.value, TypeError)
    assert "checkpoint_score_attribute 'loss'" in str(exc.value)
    assert "real number" in str(exc.value)


def test_nested_non_real_score_is_a_type_error_and_missing_is_fine() -> None:
    with pytest.raises(tk.ScoreTypeError, match="'val/loss'"):
        check_score({"val": {"loss": "bad"}}, "val/loss")
    check_score({"other": 1}, "loss")
    check_score({"loss": "anything"}, None)


@pytest.mark.parametrize("value", [10**400, -(10**400), 10**1000])
def test_a_score_beyond_the_float_range_is_a_type_error(value: int) -> None:
    """Issue 14: 10**400 was accepted, then every later commit raised OverflowError in retention."""
    for metrics, attribute in (({"score": value}, "score"), ({"val": {"score": value}}, "val/score")):
        with pytest.raises(tk.ScoreTypeError) as exc:
            check_score(normalize_metrics(metrics), attribute)
        assert isinstance(exc.value, TypeError)
        assert f"{attribute!r}" in str(exc.value) and "beyond the float range" in str(exc.value)
        assert "digits" in str(exc.value) and len(str(exc.value)) < 300
    check_score({"score": 10**300}, "score")  # converts to a finite float
    check_score({"other": value}, "score")  # only the score must convert


def test_an_int_too_long_for_json_is_refused() -> None:
    with pytest.raises(tk.InvalidMetricsError, match=r"metrics\['x'\] is an int of 16610 bits; allowed: ints of at most"):
        normalize_metrics({"x": 10**5000})
    assert normalize_metrics({"x": 10**400}) == {"x": 10**400}


def test_stored_scores_beyond_the_float_range_read_as_missing() -> None:
    assert as_float(10**400) is None and as_float(True) is None and as_float("1") is None
    assert as_float(3) == 3.0 and math.isnan(as_float(math.nan) or 0.0)
    assert score_value({"x": 10**400}, "x") is None


def test_score_value_is_none_for_missing_nan_and_inf() -> None:
    assert score_value({"x": 2}, "x") == 2.0
    assert score_value({"x": math.nan}, "x") is None
    assert score_value({"x": math.inf}, "x") is None
    assert score_value({}, "x") is None
