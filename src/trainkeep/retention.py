"""Ranking of checkpoints and the keep/delete decision, as pure functions over plain records.

The rules (DESIGN §4):

* With a score attribute, finite scores rank by the order ("max": higher is better, "min": lower is better).
  A missing, NaN or infinite score ranks below every finite score in both orders.
* Ties, and everything without a score attribute, rank by recency: the older checkpoint is evicted first.
* Kept: the top ``num_to_keep`` by rank (all when None), plus the latest committed checkpoint, plus any
  checkpoint a live worker was started from.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from trainkeep.config import CheckpointConfig
from trainkeep.metrics import score_value


@dataclass(frozen=True)
class Record:
    """A committed checkpoint as retention sees it: its name, its round, the metrics of its round."""

    name: str
    round: int
    metrics: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)


def rank_key(record: Record, config: CheckpointConfig) -> tuple:
    """Return a sort key under which a better checkpoint sorts later."""
    attribute = config.checkpoint_score_attribute
    if attribute is None:
        return (record.round,)
    score = score_value(record.metrics, attribute)
    if score is None:
        return (0, 0.0, record.round)
    return (1, score if config.checkpoint_score_order == "max" else -score, record.round)


def rank(records: Iterable[Record], config: CheckpointConfig) -> list[Record]:
    """Return ``records`` ordered from worst to best."""
    return sorted(records, key=lambda r: rank_key(r, config))


def best_checkpoints(records: Iterable[Record], config: CheckpointConfig) -> list[Record]:
    """Return the top ``num_to_keep`` records (all when None), worst first and best last."""
    ranked = rank(records, config)
    if config.num_to_keep is None:
        return ranked
    return ranked[-config.num_to_keep :]


@dataclass(frozen=True)
class Decision:
    """What retention keeps and deletes, with a one-line reason for each record."""

    keep: tuple[Record, ...]
    delete: tuple[Record, ...]
    reasons: Mapping[str, str]


def decide(
    records: Collection[Record], config: CheckpointConfig, protected: Collection[str] = ()
) -> Decision:
    """Decide which of the committed ``records`` to keep and which to delete.

    ``protected`` names checkpoints that must survive whatever their rank (a live worker started from them).
    The newest record (highest round) is always kept. Both outputs are in round order.
    """
    if not records:
        return Decision((), (), {})
    latest = max(records, key=lambda r: r.round)
    top = best_checkpoints(records, config)
    place = {r.name: len(top) - i for i, r in enumerate(top)}  # 1 = best
    by = _ranking_phrase(config)
    reasons: dict[str, str] = {}
    keep: list[Record] = []
    delete: list[Record] = []
    for record in sorted(records, key=lambda r: r.round):
        if record.name in place:
            limit = "all kept" if config.num_to_keep is None else f"top {config.num_to_keep}"
            reasons[record.name] = f"#{place[record.name]} {by} ({limit})"
            keep.append(record)
        elif record.name == latest.name:
            reasons[record.name] = f"latest (never deleted), outside the top {config.num_to_keep} {by}"
            keep.append(record)
        elif record.name in protected:
            reasons[record.name] = "a live worker was started from it"
            keep.append(record)
        else:
            reasons[record.name] = f"outside the top {config.num_to_keep} {by}"
            delete.append(record)
    return Decision(tuple(keep), tuple(delete), reasons)


def _ranking_phrase(config: CheckpointConfig) -> str:
    if config.checkpoint_score_attribute is None:
        return "by recency"
    order = "highest" if config.checkpoint_score_order == "max" else "lowest"
    return f"by {config.checkpoint_score_attribute} ({order} first)"
