"""``trainkeep plot``: a real image with kept, deleted and best checkpoints marked; HTML without the network."""

from __future__ import annotations

from pathlib import Path

from cli_helpers import assert_one_line_error, run_cli
from PIL import Image

from trainkeep.cli.common import open_run
from trainkeep.cli.plot import plot_series

KEPT_GREEN = (0x2C, 0xA0, 0x2C)  # matplotlib's C2: the fill of kept checkpoints
BEST_RED = (0xD6, 0x27, 0x28)  # C3: the star on the best one
REPORT_BLUE = (0x1F, 0x77, 0xB4)  # C0: the line of every report


def test_plot_writes_a_real_png(scored_run, tmp_path: Path) -> None:
    out = tmp_path / "plot.png"
    proc = run_cli("plot", scored_run.path, "--metric", "val_loss", "--metric", "nested/acc", "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"{out}\n"
    with Image.open(out) as image:
        assert image.format == "PNG"
        width, height = image.size
        assert 600 <= width <= 2000 and 500 <= height <= 2000  # two panels, one above the other
        colors = {rgb for _, rgb in image.convert("RGB").getcolors(maxcolors=1 << 20)}
    assert len(colors) > 100  # anti-aliased lines and text, not a blank canvas
    assert {KEPT_GREEN, BEST_RED, REPORT_BLUE} <= colors


def test_plot_series_splits_kept_and_deleted_like_the_engine(scored_run) -> None:
    series = plot_series(open_run(scored_run.path), "val_loss")
    committed = [h["checkpoint"] for h in scored_run.history if h["checkpoint"]]
    assert [p.checkpoint for p in series.kept] == scored_run.checkpoints
    assert [p.checkpoint for p in series.deleted] == [n for n in committed if n not in scored_run.checkpoints]
    assert len(series.points) == len(committed)  # the metrics-only rounds have no val_loss
    assert series.labelled is not None and series.labelled.checkpoint == scored_run.best
    assert series.label == "best"


def test_plot_html_is_self_contained(scored_run, tmp_path: Path) -> None:
    out = tmp_path / "plot.html"
    proc = run_cli("plot", scored_run.path, "--metric", "val_loss", "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    page = out.read_text()
    assert page.startswith("<!DOCTYPE html>") and "<svg" in page and page.rstrip().endswith("</html>")
    assert f"best: {scored_run.best}" in page
    for external in ("<script", "<link", 'src="http', "url(http", "@import"):
        assert external not in page, external


def test_plot_errors(scored_run, tmp_path: Path) -> None:
    no_metric = run_cli("plot", scored_run.path, "--metric", "accuracy", "-o", str(tmp_path / "x.png"))
    assert_one_line_error(no_metric, 1, "'accuracy'", "val_loss")
    bad_suffix = run_cli("plot", scored_run.path, "--metric", "val_loss", "-o", str(tmp_path / "x.jpg"))
    assert_one_line_error(bad_suffix, 2, "x.jpg", ".png")
    assert not list(tmp_path.glob("x.*"))


def test_plot_without_matplotlib(scored_run, tmp_path: Path) -> None:
    blocker = tmp_path / "no_matplotlib" / "matplotlib"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('No module named matplotlib')\n")
    proc = run_cli("plot", scored_run.path, "--metric", "val_loss", "-o", str(tmp_path / "x.png"),
                   env={"PYTHONPATH": str(blocker.parent)})
    assert_one_line_error(proc, 6, "matplotlib", "pip install 'trainkeep[plot]'")
    assert not (tmp_path / "x.png").exists()
