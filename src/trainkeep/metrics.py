"""Pure helpers for reported metrics: validation into plain JSON values, flattening, score lookup."""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from typing import Any

from trainkeep.errors import InvalidMetricsError, ScoreTypeError

_MAX_DEPTH = 32


def normalize_metrics(metrics: object) -> dict[str, Any]:
    """Return a deep copy of ``metrics`` made of plain JSON values (dict, list, str, int, float, bool, None).

    numpy scalars and 0-d arrays become Python numbers. Tensors, sets, arbitrary objects and non-string keys
    are refused, because the history and manifests are JSON and must read back the same.

    Raises:
        InvalidMetricsError (a TypeError) naming the offending key path and type.
    """
    if not isinstance(metrics, Mapping):
        raise InvalidMetricsError(f"metrics must be a dict, got {type(metrics).__name__}")
    return _normalize(metrics, "metrics", 0)


def _normalize(value: Any, where: str, depth: int) -> Any:
    if depth > _MAX_DEPTH:
        raise InvalidMetricsError(f"{where} is nested more than {_MAX_DEPTH} levels deep")
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise InvalidMetricsError(
                    f"{where} has a key {key!r} of type {type(key).__name__}; metric names must be strings"
                )
            out[key] = _normalize(item, f"{where}[{key!r}]", depth + 1)
        return out
    if isinstance(value, (list, tuple)):
        return [_normalize(item, f"{where}[{i}]", depth + 1) for i, item in enumerate(value)]
    type_name = f"{type(value).__module__}.{type(value).__qualname__}"
    if type_name.startswith("torch."):
        raise InvalidMetricsError(
            f"{where} is a torch {type(value).__name__}; report plain numbers instead (for example "
            "tensor.item()), since metrics are stored as JSON"
        )
    if type(value).__module__ == "numpy" and hasattr(value, "item") and getattr(value, "ndim", 0) == 0:
        return _normalize(value.item(), where, depth)
    raise InvalidMetricsError(
        f"{where} has type {type_name}, which cannot be stored as JSON; allowed: numbers, strings, bools, "
        "None, lists and dicts with string keys"
    )


def flatten(metrics: Mapping[str, Any], sep: str = "/") -> dict[str, Any]:
    """Return ``metrics`` with nested dicts flattened into ``"outer/inner"`` keys."""
    flat: dict[str, Any] = {}

    def visit(prefix: str, mapping: Mapping[str, Any]) -> None:
        for key, value in mapping.items():
            full = f"{prefix}{key}"
            if isinstance(value, Mapping) and value:
                visit(full + sep, value)
            elif prefix == "" or full not in metrics:  # an exact top-level key wins over a nested path
                flat[full] = value

    visit("", metrics)
    return flat


_MISSING = object()


def lookup(metrics: Mapping[str, Any], attribute: str) -> Any:
    """Return the value of ``attribute`` in ``metrics``; an exact top-level key wins over a nested "a/b" path.

    Returns the module's ``MISSING`` sentinel when absent (or when it names a dict rather than a value).
    """
    value = _find(metrics, attribute)
    return MISSING if isinstance(value, Mapping) else value


def _find(metrics: Mapping[str, Any], attribute: str) -> Any:
    """Return what ``attribute`` names in ``metrics``, a dict included; ``MISSING`` when absent."""
    if attribute in metrics:
        return metrics[attribute]
    node: Any = metrics
    for part in attribute.split("/"):
        if not isinstance(node, Mapping) or part not in node:
            return MISSING
        node = node[part]
    return node


MISSING: Any = _MISSING


def is_real_number(value: Any) -> bool:
    """Return True for ints and floats (including NaN and ±inf), False for bools and everything else."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and type(value).__name__ != "bool_"


def check_score(metrics: Mapping[str, Any], attribute: str | None) -> None:
    """Raise ScoreTypeError if ``attribute`` is present in ``metrics`` but is not a real number (a dict included)."""
    if attribute is None:
        return
    value = _find(metrics, attribute)
    if value is MISSING or is_real_number(value):
        return
    raise ScoreTypeError(
        f"checkpoint_score_attribute {attribute!r} must be a real number in every report that has it "
        f"(NaN and +-inf allowed), got {value!r} ({type(value).__name__})"
    )


def score_value(metrics: Mapping[str, Any], attribute: str) -> float | None:
    """Return the finite score of ``attribute`` in ``metrics``, or None when missing, NaN or infinite."""
    value = lookup(metrics, attribute)
    if value is MISSING or not is_real_number(value):
        return None
    value = float(value)
    return value if math.isfinite(value) else None
