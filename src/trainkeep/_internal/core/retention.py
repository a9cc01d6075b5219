"""Ranking of checkpoints and the keep/delete decision, as pure functions over plain records.

The rules (DESIGN §4):

* With a score attribute, finite scores rank by the order ("max": higher is better, "min": lower is better).
  A missing, NaN or infinite score ranks below every finite score in both orders.
* Ties, and everything without a score attribute, rank by recency: the older checkpoint is evicted first.
* Kept: the top ``num_to_keep`` by rank (all when None), plus the latest committed checkpoint, plus any
  checkpoint a live worker was started from.
* A checkpoint marked corrupt (it failed verification) takes no part: it is neither ranked nor the latest, and
  retention never deletes it (DESIGN §5, invariant 5). Only :func:`decide_corrupt`, behind an explicit command
  (``trainkeep prune RUN --corrupt``), deletes it.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from trainkeep._internal.core.config import CheckpointConfig
from trainkeep._internal.core.metrics import score_value


@dataclass(frozen=True)
class Record:
    """A committed checkpoint as retention sees it: its name, its round, the metrics of its round."""

    name: str
    round: int
    metrics: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)
    corrupt: bool = field(default=False, compare=False)


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
    """Return ``records`` ordered from worst to best, leaving out those marked corrupt."""
    return sorted((r for r in records if not r.corrupt), key=lambda r: rank_key(r, config))


def best_checkpoints(records: Iterable[Record], config: CheckpointConfig) -> list[Record]:
    """Return the top ``num_to_keep`` records (all when None), worst first and best last; never a corrupt one."""
    ranked = rank(records, config)
    if config.num_to_keep is None:
        return ranked
    return ranked[-config.num_to_keep :]


CORRUPT_REASON = "corrupt: never deleted automatically (trainkeep prune RUN --corrupt deletes it)"


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
    The newest record (highest round) that is not corrupt is always kept, and so is every corrupt one. Both
    outputs are in round order.
    """
    if not records:
        return Decision((), (), {})
    healthy = [r for r in records if not r.corrupt]
    latest = max(healthy, key=lambda r: r.round).name if healthy else None
    top = best_checkpoints(healthy, config)
    place = {r.name: len(top) - i for i, r in enumerate(top)}  # 1 = best
    by = _ranking_phrase(config)
    reasons: dict[str, str] = {}
    keep: list[Record] = []
    delete: list[Record] = []
    for record in sorted(records, key=lambda r: r.round):
        if record.corrupt:
            reasons[record.name] = CORRUPT_REASON
            keep.append(record)
        elif record.name in place:
            limit = "all kept" if config.num_to_keep is None else f"top {config.num_to_keep}"
            reasons[record.name] = f"#{place[record.name]} {by} ({limit})"
            keep.append(record)
        elif record.name == latest:
            reasons[record.name] = f"latest (never deleted), outside the top {config.num_to_keep} {by}"
            keep.append(record)
        elif record.name in protected:
            reasons[record.name] = "a live worker was started from it"
            keep.append(record)
        else:
            reasons[record.name] = f"outside the top {config.num_to_keep} {by}"
            delete.append(record)
    return Decision(tuple(keep), tuple(delete), reasons)


def decide_corrupt(records: Collection[Record]) -> Decision:
    """Decide to delete every record marked corrupt and to keep every other one (``trainkeep prune --corrupt``)."""
    ordered = sorted(records, key=lambda r: r.round)
    reasons = {r.name: "corrupt: deleted on request" if r.corrupt else "verifies: kept" for r in ordered}
    return Decision(tuple(r for r in ordered if not r.corrupt), tuple(r for r in ordered if r.corrupt), reasons)


def _ranking_phrase(config: CheckpointConfig) -> str:
    if config.checkpoint_score_attribute is None:
        return "by recency"
    order = "highest" if config.checkpoint_score_order == "max" else "lowest"
    return f"by {config.checkpoint_score_attribute} ({order} first)"
