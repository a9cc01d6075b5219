"""``trainkeep plot``: metrics over the report index, with the committed checkpoints marked.

matplotlib is optional (``pip install 'trainkeep[plot]'``) and imported only here, only when plotting.
"""

from __future__ import annotations

import html
import io
import math
import os
from dataclasses import dataclass, field
from typing import Any

import click

from trainkeep._internal.core.metrics import as_float, lookup
from trainkeep._internal.core.retention import rank
from trainkeep.cli.common import (
    EXIT_FAILED,
    EXIT_MISSING_EXTRA,
    EXIT_USAGE,
    RunView,
    has_score,
    metric_names,
    open_run,
)
from trainkeep.errors import CliError

FORMATS = (".png", ".svg", ".pdf", ".html")


@dataclass
class Point:
    """One report of a metric: its round, value and the checkpoint it committed (None for metrics only)."""

    round: int
    value: float
    checkpoint: str | None = None


@dataclass
class Series:
    """What one panel shows: every report of ``metric``, its kept and deleted checkpoints, the labelled one."""

    metric: str
    points: list[Point] = field(default_factory=list)
    kept: list[Point] = field(default_factory=list)
    deleted: list[Point] = field(default_factory=list)
    labelled: Point | None = None
    label: str = "best"


def plot_series(view: RunView, metric: str) -> Series:
    """Return the points of ``metric`` over the run's history, split into kept and deleted checkpoints.

    Kept means still in the run index. The labelled point is the best checkpoint by the run's own ranking,
    or the latest one when the run ranks by recency.

    Raises:
        CliError (exit 1) when no report has a finite numeric ``metric``.
    """
    committed = {c.name for c in view.state.index.checkpoints}
    series = Series(metric)
    for report in view.state.history:
        value = as_float(lookup(report["metrics"], metric))
        if value is None or not math.isfinite(value):
            continue
        point = Point(report["round"], value, report.get("checkpoint"))
        series.points.append(point)
        if point.checkpoint is not None:
            (series.kept if point.checkpoint in committed else series.deleted).append(point)
    if not series.points:
        present = metric_names(r["metrics"] for r in view.state.history)
        raise CliError(f"no report of run {view.url} has a finite number {metric!r}; metrics present: "
                       f"{', '.join(present) or 'none'}", EXIT_FAILED)
    name, series.label = _labelled_checkpoint(view)
    series.labelled = next((p for p in series.kept if p.checkpoint == name), None)
    return series


def _labelled_checkpoint(view: RunView) -> tuple[str | None, str]:
    records, attribute = view.records(), view.config.checkpoint_score_attribute
    if not records:
        return None, "best"
    if attribute and has_score(records, attribute):
        return rank(records, view.config)[-1].name, "best"
    return max(records, key=lambda r: r.round).name, "latest"


@click.command("plot", short_help="Plot metrics over the report index, checkpoints marked.")
@click.argument("run")
@click.option("--metric", "metrics", multiple=True, required=True,
              help="A metric to plot (nested keys joined with '/'); repeat for several panels.")
@click.option("-o", "--output", default=None,
              help="The file to write: .png, .svg, .pdf or .html (self-contained). Default: RUN_NAME.png.")
def plot_command(run: str, metrics: tuple[str, ...], output: str | None) -> None:
    """Plot METRIC of RUN over the report index, marking kept and deleted checkpoints and the best one."""
    if output is not None and os.path.splitext(output)[1].lower() not in FORMATS:
        raise CliError(f"--output {output!r} must end in one of {', '.join(FORMATS)}", EXIT_USAGE)
    view = open_run(run)
    series = [plot_series(view, metric) for metric in metrics]
    target = output or f"{view.name}.png"
    figure = _render(series, _title(view))
    _write(figure, target, f"run {view.name}: {', '.join(metrics)}")
    click.echo(target)


def _title(view: RunView) -> str:
    kept = len(view.state.index.checkpoints)
    made = sum(1 for report in view.state.history if report.get("checkpoint"))
    return f"{view.url}: {len(view.state.history)} reports, {made} checkpoints committed, {kept} kept"


def _import_matplotlib() -> Any:
    try:
        import matplotlib  # noqa: F401
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise CliError("plot needs matplotlib, which is not installed: pip install 'trainkeep[plot]'",
                       EXIT_MISSING_EXTRA) from None
    return Figure, FigureCanvasAgg


def _render(series: list[Series], title: str) -> Any:
    """Draw one panel per series on an Agg canvas (no pyplot, no global backend state)."""
    figure_cls, canvas_cls = _import_matplotlib()
    from matplotlib.ticker import MaxNLocator

    figure = figure_cls(figsize=(9, 0.8 + 3.0 * len(series)), dpi=100, layout="constrained")
    canvas_cls(figure)
    axes = figure.subplots(len(series), 1, sharex=True, squeeze=False)[:, 0]
    for ax, s in zip(axes, series, strict=True):
        _draw_panel(ax, s)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[-1].set_xlabel("report index (round)")
    figure.suptitle(title)
    return figure


def _draw_panel(ax: Any, s: Series) -> None:
    ax.plot([p.round for p in s.points], [p.value for p in s.points], color="C0", linewidth=1.2, marker=".",
            markersize=4, label="report", zorder=2)
    if s.deleted:
        ax.scatter([p.round for p in s.deleted], [p.value for p in s.deleted], s=55, facecolors="white",
                   edgecolors="0.45", linewidths=1.3, label="checkpoint, deleted", zorder=3)
    if s.kept:
        ax.scatter([p.round for p in s.kept], [p.value for p in s.kept], s=60, color="C2",
                   edgecolors="black", linewidths=0.6, label="checkpoint, kept", zorder=4)
    if s.labelled is not None:
        p = s.labelled
        ax.scatter([p.round], [p.value], s=260, marker="*", color="C3", edgecolors="black", linewidths=0.6,
                   label=f"{s.label}: {p.checkpoint} ({s.metric} = {p.value:.4g})", zorder=5)
        ax.annotate(f"{s.label}: {p.checkpoint}", (p.round, p.value), xytext=(0, 13), textcoords="offset points",
                    ha="center", va="bottom", fontsize="x-small", zorder=6,
                    bbox={"boxstyle": "round,pad=0.2", "facecolor": "white", "edgecolor": "0.7", "alpha": 0.85})
    ax.set_ylabel(s.metric)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize="small", framealpha=0.9)


def _write(figure: Any, target: str, caption: str) -> None:
    """Save the figure; HTML gets the SVG inline, so the page needs nothing from the network."""
    suffix = os.path.splitext(target)[1].lower() or ".png"
    if suffix != ".html":
        figure.savefig(target, format=suffix[1:])
        return
    import matplotlib

    buffer = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none"}):  # real text: searchable and selectable in the page
        figure.savefig(buffer, format="svg")
    svg = buffer.getvalue()
    svg = svg[svg.index("<svg"):]
    page = (f"<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{html.escape(caption)}</title>\n</head>\n<body>\n<h1>{html.escape(caption)}</h1>\n"
            f"{svg}\n</body>\n</html>\n")
    with open(target, "w", encoding="utf-8") as f:
        f.write(page)
