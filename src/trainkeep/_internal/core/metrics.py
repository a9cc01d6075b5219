"""Pure helpers for reported metrics: validation into plain JSON values, flattening, score lookup."""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterator, Mapping
from typing import Any

from trainkeep.errors import InvalidMetricsError, ScoreTypeError

_MAX_DEPTH = 32
_MAX_INT_BITS = 4096  # about 1233 digits; Python refuses to turn ints of more than 4300 digits into text


def normalize_metrics(metrics: object) -> dict[str, Any]:
    """Return a deep copy of ``metrics`` made of plain JSON values (dict, list, str, int, float, bool, None).

    numpy scalars and 0-d arrays become Python numbers. Tensors, sets, arbitrary objects and non-string keys
    are refused, because the history and manifests are JSON and must read back the same. Two spellings of one
    metric (``{"a/b": 1, "a": {"b": 2}}``, which both flatten to ``a/b``) are refused, because every lookup is
    by the flattened name and one of the values would be lost.

    Raises:
        InvalidMetricsError (a ValueError and a TypeError) naming the offending key path and type.
    """
    if not isinstance(metrics, Mapping):
        raise InvalidMetricsError(f"metrics must be a dict, got {type(metrics).__name__}")
    out = _normalize(metrics, "metrics", 0)
    flatten(out, strict=True)
    return out


def _normalize(value: Any, where: str, depth: int) -> Any:
    if depth > _MAX_DEPTH:
        raise InvalidMetricsError(f"{where} is nested more than {_MAX_DEPTH} levels deep")
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        if value.bit_length() > _MAX_INT_BITS:
            raise InvalidMetricsError(
                f"{where} is an int of {value.bit_length()} bits; allowed: ints of at most {_MAX_INT_BITS} bits "
                "(report a float or a string instead)"
            )
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


def flatten(metrics: Mapping[str, Any], strict: bool = False) -> dict[str, Any]:
    """Return ``metrics`` with nested dicts flattened into ``"outer/inner"`` keys, as Ray Train flattens them.

    Keys are joined with "/" whatever mix of nesting and slashes produced them: ``{"a": {"b/c": 1}}``,
    ``{"a/b": {"c": 1}}`` and ``{"a": {"b": {"c": 1}}}`` all give ``{"a/b/c": 1}``. Empty dicts contribute no key
    (as in Ray); lists are values, not descended into.

    Two spellings that flatten to the same key (``{"a/b": 1, "a": {"b": 2}}``) are refused at ``report()``, so
    stored metrics never have them; with ``strict=False`` (reading a run written before that check) the spelling
    with the fewest nesting levels wins, the first one on a tie.

    Raises:
        InvalidMetricsError with ``strict=True`` when two spellings flatten to the same key, naming both.
    """
    flat: dict[str, Any] = {}
    where: dict[str, tuple[int, str]] = {}
    for key, value, depth, path in _leaves(metrics):
        if key in where:
            if strict:
                raise InvalidMetricsError(
                    f"{where[key][1]} and {path} are two spellings of the metric {key!r} (nested keys are joined "
                    "with '/'); report each metric once, either nested or with '/' in its name"
                )
            if depth >= where[key][0]:
                continue
        flat[key] = value
        where[key] = (depth, path)
    return flat


def _leaves(metrics: Mapping[str, Any]) -> Iterator[tuple[str, Any, int, str]]:
    """Yield (flattened key, value, nesting depth, key path as written) for every non-dict value, in key order."""
    # Iterative, so that a hand-edited, deeply nested history line cannot overflow the stack.
    stack: list[tuple[str, Iterator[tuple[str, Any]], str]] = [("", iter(metrics.items()), "metrics")]
    while stack:
        prefix, items, path = stack[-1]
        for key, value in items:
            full, spelled = f"{prefix}{key}", f"{path}[{key!r}]"
            if isinstance(value, Mapping):
                stack.append((full + "/", iter(value.items()), spelled))
                break
            yield full, value, len(stack) - 1, spelled
        else:
            stack.pop()


def _groups(metrics: Mapping[str, Any]) -> set[str]:
    """Return the flattened names of every dict inside ``metrics`` (``{"a": {"b/c": {}}}`` gives ``a``, ``a/b/c``)."""
    names: set[str] = set()
    stack: list[tuple[str, Mapping[str, Any]]] = [("", metrics)]
    while stack:
        prefix, mapping = stack.pop()
        for key, value in mapping.items():
            if isinstance(value, Mapping):
                names.add(f"{prefix}{key}")
                stack.append((f"{prefix}{key}/", value))
    return names


_MISSING = object()


def lookup(metrics: Mapping[str, Any], attribute: str) -> Any:
    """Return the value of ``attribute`` in the flattened ``metrics`` (see :func:`flatten`).

    Returns the module's ``MISSING`` sentinel when absent, including when it names a dict rather than a value.
    """
    return flatten(metrics).get(attribute, MISSING)


MISSING: Any = _MISSING


def is_real_number(value: Any) -> bool:
    """Return True for ints and floats (including NaN and ±inf), False for bools and everything else."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and type(value).__name__ != "bool_"


def as_float(value: Any) -> float | None:
    """Return ``value`` as a float when it is a real number that converts (NaN and ±inf included), else None.

    An int beyond the float range (``10**400``) gives None instead of raising ``OverflowError``.
    """
    if not is_real_number(value):
        return None
    try:
        return float(value)
    except (OverflowError, ValueError, TypeError):
        return None


def check_score(metrics: Mapping[str, Any], attribute: str | None) -> None:
    """Raise ScoreTypeError if ``attribute`` is present in ``metrics`` but is not a real number within float range.

    The attribute is looked up in the flattened metrics; one that names a group of metrics (a dict, or the
    common prefix of ``"a/b"`` names) is present and is not a number.
    """
    if attribute is None:
        return
    value = lookup(metrics, attribute)
    if value is MISSING:
        value = _group(metrics, attribute)
        if value is None:
            return
    elif as_float(value) is not None:
        return
    if is_real_number(value):
        raise ScoreTypeError(
            f"checkpoint_score_attribute {attribute!r} must be a real number that converts to a float in every "
            f"report that has it (NaN and +-inf allowed), got {_short(value)} ({type(value).__name__}), which "
            "is beyond the float range"
        )
    raise ScoreTypeError(
        f"checkpoint_score_attribute {attribute!r} must be a real number in every report that has it "
        f"(NaN and +-inf allowed), got {value!r} ({type(value).__name__})"
    )


def _short(value: Any) -> str:
    """Return ``repr(value)``, or a digit count for an int too long to show."""
    if isinstance(value, int) and value.bit_length() > 128:
        return f"an int of about {int(value.bit_length() * math.log10(2)) + 1} digits"
    return repr(value)


def _group(metrics: Mapping[str, Any], name: str) -> dict[str, Any] | None:
    """Return the metrics under the group ``name`` (flattened, prefix removed), or None when it is no group."""
    prefix = name + "/"
    group = {k[len(prefix):]: v for k, v in flatten(metrics).items() if k.startswith(prefix)}
    return group if group or name in _groups(metrics) else None


def score_value(metrics: Mapping[str, Any], attribute: str) -> float | None:
    """Return the finite score of ``attribute`` in ``metrics``, or None when missing, NaN, infinite or out of range."""
    value = as_float(lookup(metrics, attribute))
    return value if value is not None and math.isfinite(value) else None
