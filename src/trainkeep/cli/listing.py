"""The read-only commands: ``runs``, ``ls``, ``show`` and ``best``. None of them writes to storage."""

from __future__ import annotations

import json
import logging
from typing import Any

import click
from rich.table import Table

from trainkeep._internal.core.config import CheckpointConfig
from trainkeep._internal.core.layout import METADATA_NAME, validate_checkpoint_name
from trainkeep._internal.core.manifest import CHECKSUM_ALGORITHM
from trainkeep._internal.core.metrics import flatten
from trainkeep._internal.core.retention import best_checkpoints, decide, rank
from trainkeep._internal.engine.run import is_run, read_run
from trainkeep._internal.engine.verify import read_manifest
from trainkeep._internal.storage import Storage, resolve
from trainkeep.cli.common import (
    EXIT_FAILED,
    EXIT_NOT_FOUND,
    EXIT_USAGE,
    RunView,
    display_path,
    emit_json,
    fold_metrics,
    format_value,
    has_score,
    human_size,
    iso_time,
    local_time,
    metric_names,
    open_run,
    plural,
    probe_status,
    render,
    score_of,
    table,
)
from trainkeep.errors import CliError, TrainkeepError

logger = logging.getLogger(__name__)

JSON_OPTION = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts instead of a table.")


# --------------------------------------------------------------------------------------------- runs


@click.command("runs", short_help="List the runs under a storage path.")
@click.argument("storage_path")
@JSON_OPTION
def runs_command(storage_path: str, as_json: bool) -> None:
    """List the runs under STORAGE_PATH with their status, checkpoints, last report and size."""
    storage, base = resolve(storage_path)
    if not storage.exists(base):
        raise CliError(f"storage path {storage_path} does not exist", EXIT_NOT_FOUND)
    if is_run(storage, base):
        rows = [_run_row(storage, base)]
    else:
        children = [storage.join(base, name) for name in storage.listdir(base)]
        rows = [_run_row(storage, path) for path in children if is_run(storage, path)]
    if as_json:
        emit_json([{**row, "last_report": iso_time(row["last_report"])} for row in rows])
    else:
        _print_runs(rows, display_path(storage, base))
    if not rows:
        raise click.exceptions.Exit(EXIT_FAILED)


def _run_row(storage: Storage, path: str) -> dict[str, Any]:
    """Summarise one run; a run that cannot be read gets status "unreadable" and the reason."""
    row: dict[str, Any] = {"name": path.rstrip("/").rsplit("/", 1)[-1], "path": display_path(storage, path),
                           "status": "unreadable", "checkpoints": 0, "reports": 0, "last_report": None,
                           "size": 0, "error": None}
    try:
        state = read_run(storage, path)
    except (TrainkeepError, OSError) as exc:
        logger.warning("cannot read run %s: %s", path, exc)
        row["error"] = str(exc)
        return row
    entries = state.index.checkpoints
    times = [r["time"] for r in state.history] + [c.time for c in entries]
    row.update(status=probe_status(storage, path, state.index.status), checkpoints=len(entries),
               reports=len(state.history), last_report=max(times, default=None),
               size=sum(c.size for c in entries))
    return row


def _print_runs(rows: list[dict[str, Any]], base: str) -> None:
    if not rows:
        click.echo(f"no trainkeep runs under {base}", err=True)
        return
    runs = table("run", "status", "checkpoints", "reports", "last report", "size")
    for row in rows:
        runs.add_row(row["name"], row["status"], str(row["checkpoints"]), str(row["reports"]),
                     local_time(row["last_report"]), human_size(row["size"]))
    render(runs)


# --------------------------------------------------------------------------------------------- ls


def checkpoint_roles(view: RunView) -> dict[str, tuple[str, str]]:
    """Return each committed checkpoint's role and retention reason, as the run's own retention sees them.

    Roles: "best" (rank 1 by the score attribute), "latest", "best, latest", "kept" (in the top k),
    "kept as latest only" (the latest, outside the top k), "not kept" (outside the top k: the next
    retention of the run deletes it) and "corrupt" (failed verification: neither ranked nor ever deleted
    automatically; ``trainkeep prune RUN --corrupt`` deletes it).
    """
    records, config = view.records(), view.config
    if not records:
        return {}
    decision = decide(records, config)
    top = {r.name for r in best_checkpoints(records, config)}
    ranked = rank(records, config)
    attribute = config.checkpoint_score_attribute
    best_name = ranked[-1].name if ranked and attribute and has_score(ranked[-1:], attribute) else None
    latest = max((r for r in records if not r.corrupt), key=lambda r: r.round, default=None)
    why = {c.name: c.corrupt for c in view.state.index.checkpoints}
    roles: dict[str, tuple[str, str]] = {}
    for record in records:
        if record.corrupt:
            roles[record.name] = ("corrupt", f"corrupt ({why[record.name]}): never deleted automatically; "
                                             "`trainkeep prune RUN --corrupt` deletes it")
            continue
        if latest is not None and record.name == latest.name and record.name not in top:
            role = "kept as latest only"
        elif latest is not None and record.name == latest.name:
            role = "best, latest" if record.name == best_name else "latest"
        else:
            role = "best" if record.name == best_name else "kept" if record.name in top else "not kept"
        roles[record.name] = (role, decision.reasons[record.name])
    return roles


def checkpoint_rows(view: RunView, include_reports: bool) -> list[dict[str, Any]]:
    """Return one row per committed checkpoint (and, with ``include_reports``, per other report), by round."""
    attribute = view.config.checkpoint_score_attribute
    roles = checkpoint_roles(view)
    rows = []
    for entry in view.state.index.checkpoints:
        role, reason = roles[entry.name]
        rows.append({"name": entry.name, "round": entry.round, "time": entry.time,
                     "score": score_of(entry.metrics, attribute), "metrics": entry.metrics, "size": entry.size,
                     "role": role, "reason": reason})
    if include_reports:
        for report in view.state.history:
            name = report.get("checkpoint")
            if name in roles:
                continue
            rows.append({"name": name, "round": report["round"], "time": report.get("time"),
                         "score": score_of(report["metrics"], attribute), "metrics": report["metrics"],
                         "size": None, "role": "report" if name is None else "deleted", "reason": None})
    return sorted(rows, key=lambda row: row["round"])


@click.command("ls", short_help="List a run's checkpoints and their retention roles.")
@click.argument("run")
@click.option("--all", "include_reports", is_flag=True, help="Add the other reports of the history: metrics-only ones, and those whose checkpoint was deleted.")
@JSON_OPTION
def ls_command(run: str, include_reports: bool, as_json: bool) -> None:
    """List the committed checkpoints of RUN: round, time, score, metrics, size and retention role."""
    view = open_run(run)
    rows = checkpoint_rows(view, include_reports)
    if as_json:
        emit_json([{**row, "time": iso_time(row["time"])} for row in rows])
        return
    config = view.config
    attribute = config.checkpoint_score_attribute
    listing = table("checkpoint", "round", "time")
    if attribute:
        listing.add_column(f"{attribute} ({config.checkpoint_score_order})", justify="right")
    for header in ("metrics", "size", "role"):
        listing.add_column(header, justify="right" if header == "size" else "left")
    for row in rows:
        cells = [row["name"] or "-", str(row["round"]), local_time(row["time"])]
        if attribute:
            cells.append("" if row["score"] is None else format_value(row["score"]))
        cells += [fold_metrics(row["metrics"], skip=attribute), human_size(row["size"]), row["role"]]
        listing.add_row(*cells)
    render(listing, _ls_footer(view))


def _ls_footer(view: RunView) -> str:
    config = view.config
    by = (f"by {config.checkpoint_score_attribute} ({config.checkpoint_score_order})"
          if config.checkpoint_score_attribute else "by recency")
    policy = ("retention keeps every checkpoint" if config.num_to_keep is None
              else f"retention keeps the top {config.num_to_keep} {by} plus the latest")
    total = sum(c.size for c in view.state.index.checkpoints)
    corrupt = sum(1 for c in view.state.index.checkpoints if c.corrupt is not None)
    marked = f"; {corrupt} corrupt, kept until `trainkeep prune RUN --corrupt`" if corrupt else ""
    return f"{plural(len(view.state.index.checkpoints), 'checkpoint')}, {human_size(total)}; {policy}{marked}"


# --------------------------------------------------------------------------------------------- show


@click.command("show", short_help="Show a checkpoint's files, checksums, metrics, metadata.")
@click.argument("run")
@click.argument("checkpoint")
@JSON_OPTION
def show_command(run: str, checkpoint: str, as_json: bool) -> None:
    """Show the manifest of CHECKPOINT in RUN: its files with sizes and checksums, metrics and metadata."""
    validate_checkpoint_name(checkpoint)
    view = open_run(run)
    try:
        manifest = read_manifest(view.storage, view.path, checkpoint)
    except FileNotFoundError:
        names = ", ".join(c.name for c in view.state.index.checkpoints) or "none"
        raise CliError(f"run {view.url} has no checkpoint {checkpoint!r} (committed: {names})",
                       EXIT_NOT_FOUND) from None
    role, reason = checkpoint_roles(view).get(checkpoint, ("not in the run index", ""))
    document = {
        "name": manifest.name, "path": view.checkpoint_url(manifest.name), "round": manifest.round,
        "time": manifest.time, "size": manifest.size, "role": role, "reason": reason,
        "trainkeep_version": manifest.writer_version, "checksum_algorithm": CHECKSUM_ALGORITHM,
        "metrics": manifest.metrics, "metadata": _read_metadata(view, checkpoint),
        "files": [f.to_dict() for f in manifest.files],
    }
    if as_json:
        emit_json({**document, "time": iso_time(manifest.time)})
    else:
        _print_show(document)


def _read_metadata(view: RunView, name: str) -> Any:
    path = view.storage.join(view.path, name, METADATA_NAME)
    try:
        return json.loads(view.storage.read_bytes(path))
    except FileNotFoundError:
        return None
    except ValueError as exc:
        logger.warning("the user metadata %s is not valid JSON (%s)", path, exc)
        return None


def _print_show(doc: dict[str, Any]) -> None:
    summary = Table.grid(padding=(0, 2))
    for key, value in (("checkpoint", doc["name"]), ("path", doc["path"]), ("round", str(doc["round"])),
                       ("time", local_time(doc["time"])), ("size", f"{human_size(doc['size'])} "
                       f"({plural(doc['size'], 'byte')}) in {plural(len(doc['files']), 'file')}"),
                       ("role", f"{doc['role']}: {doc['reason']}" if doc["reason"] else doc["role"]),
                       ("written by", f"trainkeep {doc['trainkeep_version']}")):
        summary.add_row(key, value)
    metrics = table("metric", "value")
    for key, value in flatten(doc["metrics"]).items():
        metrics.add_row(key, format_value(value))
    files = table("file", "size", f"checksum ({doc['checksum_algorithm']})")
    for entry in doc["files"]:
        files.add_row(entry["path"], human_size(entry["size"]), entry["checksum"])
    metadata = "none" if doc["metadata"] is None else json.dumps(doc["metadata"], sort_keys=True)
    render(summary, "", metrics, "", files, "", f"metadata: {metadata}")


# --------------------------------------------------------------------------------------------- best


@click.command("best", short_help="Print the path of a run's best checkpoint.")
@click.argument("run")
@click.option("--metric", default=None, help="Rank by this metric (nested keys joined with '/').")
@click.option("--mode", type=click.Choice(["min", "max"]), default=None,
              help="Whether lower (min) or higher (max) is better; default: the run's order for its metric.")
def best_command(run: str, metric: str | None, mode: str | None) -> None:
    """Print the path (a URL for remote runs) of the best committed checkpoint of RUN, and nothing else."""
    view = open_run(run)
    own = view.config.checkpoint_score_attribute
    attribute = metric or own
    if attribute is None:
        raise CliError(f"run {view.url} has no checkpoint_score_attribute; pass --metric NAME --mode min|max",
                       EXIT_USAGE)
    if mode is None:
        if attribute != own:
            raise CliError(f"--metric {attribute} needs --mode min or --mode max (the run ranks by "
                           f"{own or 'recency'})", EXIT_USAGE)
        mode = view.config.checkpoint_score_order
    records = view.records()
    if not records:
        raise CliError(f"run {view.url} has no committed checkpoints", EXIT_FAILED)
    if not has_score(records, attribute):
        present = metric_names(r.metrics for r in records)
        raise CliError(f"no committed checkpoint of run {view.url} has a finite number {attribute!r}; "
                       f"metrics present: {', '.join(present) or 'none'}", EXIT_FAILED)
    ranking = CheckpointConfig(checkpoint_score_attribute=attribute, checkpoint_score_order=mode)
    click.echo(view.checkpoint_url(rank(records, ranking)[-1].name))
