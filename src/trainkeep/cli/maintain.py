"""The commands that check or change a run: ``verify`` (reads every byte, marks corrupt checkpoints) and ``prune``
(deletes)."""

from __future__ import annotations

import logging
from typing import Any

import click

from trainkeep._internal.core.config import CheckpointConfig
from trainkeep._internal.core.layout import MANIFEST_NAME, validate_checkpoint_name
from trainkeep._internal.core.manifest import IndexEntry
from trainkeep._internal.core.retention import Decision, decide, decide_corrupt
from trainkeep._internal.engine.corruption import clear_mark, write_mark
from trainkeep._internal.engine.manager import CheckpointManager
from trainkeep._internal.engine.verify import Problem, corrupt_reason, verify_checkpoint
from trainkeep.cli.common import (
    EXIT_FAILED,
    EXIT_NOT_FOUND,
    EXIT_STORAGE,
    EXIT_USAGE,
    RunView,
    emit_json,
    format_value,
    has_score,
    human_size,
    indexed_names,
    metric_names,
    open_run,
    plural,
    render,
    score_of,
    table,
)
from trainkeep.cli.listing import JSON_OPTION
from trainkeep.errors import CliError

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------- verify


@click.command("verify", short_help="Re-read checkpoint files against their checksums.")
@click.argument("run")
@click.argument("checkpoint", required=False)
@JSON_OPTION
def verify_command(run: str, checkpoint: str | None, as_json: bool) -> None:
    """Re-read every file of RUN's checkpoints (or of CHECKPOINT) against the checksums in their manifests.

    Every checkpoint is checked, whatever the others give; a file that cannot be read is reported too. A
    committed checkpoint that is damaged is marked corrupt (a marker file under the run's .trainkeep/, the only
    thing verify writes), so that retention never deletes it. Exits 0 only when every checkpoint verifies, 1
    when any file is corrupt, missing or unreadable.
    """
    view = open_run(run)
    names = _names_to_verify(view, checkpoint)
    rows = []
    for name in names:
        problems = verify_checkpoint(view.storage, view.path, name)
        entry = next((c for c in view.state.index.checkpoints if c.name == name), None)
        rows.append({"checkpoint": name, "ok": not problems, "size": entry.size if entry else None,
                     "marked_corrupt": _mark(view, entry, problems),
                     "problems": [{"path": p.path, "reason": p.reason, "kind": p.kind} for p in problems]})
    if as_json:
        emit_json(rows)
    else:
        _print_verify(rows)
    if any(not row["ok"] for row in rows):
        raise click.exceptions.Exit(EXIT_FAILED)


def _mark(view: RunView, entry: IndexEntry | None, problems: list[Problem]) -> bool:
    """Mark the committed checkpoint ``entry`` corrupt when ``problems`` show damage; return whether it is marked.

    Only the marker file is written (a live writer may hold the run index); every reader and the writer apply it.
    Storage that refuses the write (read-only) leaves the checkpoint unmarked, with a warning.
    """
    if entry is None:
        return False
    if entry.corrupt is not None:
        return True
    reason = corrupt_reason(problems)
    if reason is None:
        return False
    try:
        write_mark(view.storage, view.path, entry, reason)
    except OSError as exc:
        logger.warning("could not mark checkpoint %s corrupt (%s); retention may still delete it", entry.name, exc)
        return False
    return True


def _names_to_verify(view: RunView, checkpoint: str | None) -> list[str]:
    """Return the checkpoints to verify: the one named, or every one the index lists or storage commits.

    A checkpoint the stored index lists but whose manifest is gone is included, so that it fails; so is a
    directory whose manifest does not parse, which the reconciled index skips (e.g. when the index is damaged too).
    """
    listed = indexed_names(view.storage, view.path)
    listed.update({c.name: c.round for c in view.state.index.checkpoints})
    for name in view.storage.listdir(view.path):
        if name not in listed and name not in view.state.index.retiring and view.storage.exists(
                view.storage.join(view.path, name, MANIFEST_NAME)):
            listed[name] = len(listed) + 10**9  # its round is unknown: list it last
    if checkpoint is None:
        return sorted(listed, key=lambda name: listed[name])
    validate_checkpoint_name(checkpoint)
    if checkpoint not in listed and not view.storage.exists(view.storage.join(view.path, checkpoint)):
        raise CliError(f"run {view.url} has no checkpoint {checkpoint!r} (committed: "
                       f"{', '.join(listed) or 'none'})", EXIT_NOT_FOUND)
    return [checkpoint]


def _print_verify(rows: list[dict[str, Any]]) -> None:
    results = table("checkpoint", "size", "result", "file", "problem")
    for row in rows:
        if row["ok"]:
            results.add_row(row["checkpoint"], human_size(row["size"]), "ok", "", "")
        for problem in row["problems"]:
            results.add_row(row["checkpoint"], human_size(row["size"]), problem["kind"].upper(), problem["path"],
                            problem["reason"])
    bad = sum(1 for row in rows if not row["ok"])
    marked = sum(1 for row in rows if row["marked_corrupt"])
    summary = f"{len(rows) - bad} of {plural(len(rows), 'checkpoint')} verified" + (f"; {bad} corrupt" if bad else "")
    if marked:
        summary += (f"; {marked} marked corrupt: retention never deletes them, `trainkeep prune RUN --corrupt` "
                    "does")
    render(results, summary)


# --------------------------------------------------------------------------------------------- prune


@click.command("prune", short_help="Delete checkpoints under a new retention policy, or the corrupt ones.")
@click.argument("run")
@click.option("--num-to-keep", type=click.IntRange(min=1), default=None,
              help="Keep this many checkpoints by rank (the latest is always kept as well).")
@click.option("--corrupt", is_flag=True,
              help="Delete the checkpoints marked corrupt (by verify or a resume), and only those.")
@click.option("--score-attribute", default=None, help="Rank by this metric instead of the run's own.")
@click.option("--order", type=click.Choice(["max", "min"]), default=None,
              help="Whether higher (max) or lower (min) is better; default: the run's own order.")
@click.option("--dry-run", is_flag=True, help="Only list what would be deleted; write nothing.")
@JSON_OPTION
def prune_command(run: str, num_to_keep: int | None, corrupt: bool, score_attribute: str | None,
                  order: str | None, dry_run: bool, as_json: bool) -> None:
    """Apply a retention policy to RUN after the fact, with the same retention code as a live run; or, with
    --corrupt, delete the checkpoints marked corrupt (nothing else ever deletes them).

    Refuses (exit 3) while a live trainer or CheckpointManager holds the run. With --dry-run nothing is opened
    for writing: the decision is computed from what is on storage.

    If the process dies while pruning, every checkpoint is either still listed and whole or already out of the
    run index; the next open of the run finishes the interrupted deletes.
    """
    _check_prune_flags(num_to_keep, corrupt, score_attribute, order)
    view = open_run(run)
    policy = view.config if num_to_keep is None else _policy(view, num_to_keep, score_attribute, order)
    if dry_run:
        decision = decide_corrupt(view.records()) if corrupt else decide(view.records(), policy)
    else:
        decision = _prune(run, view, policy, corrupt)
    rows = _prune_rows(view, decision, policy, dry_run)
    if as_json:
        emit_json(rows)
    else:
        _print_prune(rows, policy, dry_run)
    undeleted = [row["name"] for row in rows if row["action"] == "delete" and not dry_run and not row["deleted"]]
    if undeleted:
        raise CliError(f"could not delete {', '.join(undeleted)}; they left the run index and the next open of "
                       "the run retries", EXIT_STORAGE)


def _check_prune_flags(num_to_keep: int | None, corrupt: bool, score_attribute: str | None,
                       order: str | None) -> None:
    if (num_to_keep is None) == (not corrupt):
        raise CliError("prune needs exactly one of --num-to-keep K (a retention policy) and --corrupt (the "
                       f"checkpoints marked corrupt), got {'both' if corrupt else 'neither'}", EXIT_USAGE)
    if corrupt and (score_attribute is not None or order is not None):
        raise CliError("--score-attribute and --order rank checkpoints for --num-to-keep; --corrupt deletes by "
                       "mark, not by rank", EXIT_USAGE)


def _policy(view: RunView, num_to_keep: int, score_attribute: str | None, order: str | None) -> CheckpointConfig:
    """Return the retention policy to apply: the flags, and the run's own ranking where they are silent."""
    own = view.config
    attribute = score_attribute or own.checkpoint_score_attribute
    if score_attribute is not None and view.records() and not has_score(view.records(), score_attribute):
        present = metric_names(r.metrics for r in view.records())
        raise CliError(f"--score-attribute {score_attribute!r} is not a finite number in any committed "
                       f"checkpoint of run {view.url} (metrics present: {', '.join(present) or 'none'}); "
                       "nothing was deleted", EXIT_USAGE)
    return CheckpointConfig(num_to_keep=num_to_keep, checkpoint_score_attribute=attribute,
                            checkpoint_score_order=order or own.checkpoint_score_order)


def _prune(run: str, view: RunView, policy: CheckpointConfig, corrupt: bool) -> Decision:
    """Open the run as its writer with its own config, prune under ``policy`` (or delete the corrupt
    checkpoints), close with its previous status, then drop the corrupt markers of what is gone.

    Raises:
        RunLockedError (exit 3) when a live writer holds the run; nothing is deleted then.
    """
    previous_status = view.state.index.status
    manager = CheckpointManager(run, view.config)
    try:
        decision = manager.prune(policy, corrupt=corrupt)
    finally:
        manager.close(previous_status)
    for record in decision.delete:  # a marker outliving its checkpoint is harmless (it names the commit), tidy
        if record.corrupt and not view.storage.exists(view.storage.join(view.path, record.name)):
            clear_mark(view.storage, view.path, record.name)
    return decision


def _prune_rows(view: RunView, decision: Decision, policy: CheckpointConfig, dry_run: bool) -> list[dict[str, Any]]:
    sizes = {c.name: c.size for c in view.state.index.checkpoints}
    doomed = {r.name for r in decision.delete}
    rows = []
    for record in sorted(decision.keep + decision.delete, key=lambda r: r.round):
        deleted = record.name in doomed and not dry_run and not view.storage.exists(
            view.storage.join(view.path, record.name))
        rows.append({"name": record.name, "round": record.round,
                     "score": score_of(record.metrics, policy.checkpoint_score_attribute),
                     "size": sizes.get(record.name), "action": "delete" if record.name in doomed else "keep",
                     "deleted": deleted, "reason": decision.reasons[record.name]})
    return rows


def _print_prune(rows: list[dict[str, Any]], policy: CheckpointConfig, dry_run: bool) -> None:
    attribute = policy.checkpoint_score_attribute
    score = f"{attribute} ({policy.checkpoint_score_order})" if attribute else "score"
    decisions = table("checkpoint", "round", score, "size", "action", "reason")
    decisions.columns[2].justify = "right"
    for row in rows:
        action = "would delete" if dry_run and row["action"] == "delete" else row["action"]
        decisions.add_row(row["name"], str(row["round"]),
                          "" if row["score"] is None else format_value(row["score"]), human_size(row["size"]),
                          action, row["reason"])
    doomed = [row for row in rows if row["action"] == "delete"]
    freed = human_size(sum(row["size"] or 0 for row in doomed))
    verb = "dry run: would delete" if dry_run else "deleted"
    tail = "; nothing was deleted" if dry_run else ""
    render(decisions, f"{verb} {len(doomed)} of {plural(len(rows), 'checkpoint')} ({freed}){tail}")
