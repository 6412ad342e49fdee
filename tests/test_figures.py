"""The report's figures and tables, read back: capped early stops are said in the table
and the figure, ticks never crowd, one style per series in every figure, every compared
run's curves drawn, accuracy axes never zoomed onto a single test image. Real tiny
lotteries on digits; the figures are checked through what matplotlib drew."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

import lth_core
from conftest import with_changes
from lth_core.lottery.summary import format_table
from lth_core.reporting import figures
from lth_core.reporting.report import Series, make_figures, write_report


@pytest.fixture(scope="module")
def runs(tmp_path_factory, make_tiny) -> dict[str, Path]:
    """A lottery capped by its budget (60 steps), one that is not (its minimum validation
    loss inside 300 steps on 300 images), and a 2-trial one at another pruning rate."""
    root = tmp_path_factory.mktemp("fig")
    tiny = with_changes(make_tiny(), controls=["random_reinit"])
    specs = {
        "capped": tiny,
        "inside": with_changes(tiny, trainer={"max_steps": 300, "val_check_interval": 20}, data={**tiny["data"], "subset": 300}),
        "trials": with_changes(tiny, trials=2, lottery={**tiny["lottery"], "rate": 0.45}),
    }
    for name, raw in specs.items():
        lth_core.run(raw, out=root / name, say=lambda s: None, quiet=True)
    return {name: root / name for name in specs}


def _summary(folder: Path) -> dict:
    return json.loads((folder / "summary.json").read_text())


def test_capped_early_stops_are_marked_in_both_tables(runs) -> None:
    capped = _summary(runs["capped"])
    rows = [r for rows in [capped["rounds"], *capped["controls"].values()] for r in rows]
    flagged = [r for r in rows if r["early_stop_step"] == r["steps"]]
    assert flagged, "the 60-step tiny run should stop at its budget somewhere"
    table = format_table(capped)
    assert table.count("*") == len(flagged) + 1 and "* capped" in table.splitlines()[-1]
    report = write_report([runs["capped"]], runs["capped"] / "rep").read_text()
    assert report.count("60 (capped)") >= len([r for r in flagged if r["round"] in {0, 1, 2}])
    inside = _summary(runs["inside"])
    if all(r["early_stop_step"] < r["steps"] for r in inside["rounds"]):
        assert "*" not in format_table(inside).replace("* capped", "")


def test_ticks_never_crowd_when_runs_with_other_levels_are_compared(runs) -> None:
    levels = [100 * r["weights_remaining"] for f in runs.values() for r in _summary(f)["rounds"]]
    ticks = figures.spread_ticks(levels)
    assert ticks[0] == max(levels) and ticks[-1] == min(levels)
    width = math.log10(max(levels)) - math.log10(min(levels))
    gaps = [(math.log10(a) - math.log10(b)) / width for a, b in zip(ticks, ticks[1:])]
    assert min(gaps) >= figures.MIN_TICK_GAP
    assert len(set(round(v, 1) for v in levels)) > len(ticks)  # 50 and 55 (rates 0.5, 0.45) were too close to both stay


def _drawn(monkeypatch, runs, names: list[str], tmp_path: Path) -> dict[str, object]:
    """The figures ``make_figures`` draws for ``names``, kept open to be read back."""
    import matplotlib.pyplot as plt

    kept: dict[str, object] = {}
    monkeypatch.setattr(plt, "close", lambda fig: kept.setdefault(f"fig{len(kept)}", fig))
    make_figures([Series.from_dir(runs[n]) for n in names], tmp_path)
    return dict(zip(["accuracy", "early_stop", "curves"], kept.values()))


def test_one_style_per_series_in_every_figure_and_every_runs_curves(runs, monkeypatch, tmp_path) -> None:
    drawn = _drawn(monkeypatch, runs, ["capped", "trials"], tmp_path)
    styles = {}
    for name in ("accuracy", "early_stop"):
        ax = drawn[name].axes[0]
        for handle, label in zip(*ax.get_legend_handles_labels()):
            if not isinstance(handle, tuple):  # the budget line and the "capped" key, not a series
                continue
            line = handle[0]  # an errorbar's data line
            styles.setdefault(label, set()).add((line.get_color() if isinstance(line.get_color(), str) else tuple(line.get_color()),
                                                 line.get_marker()))
    assert len(styles) == 4 and all(len(s) == 1 for s in styles.values())  # 2 runs x (ticket, random_reinit)
    assert len({next(iter(s)) for s in styles.values()}) == 4  # and no two alike
    assert any("(mean of 2 trials)" in label for label in styles)
    curves = [ax for ax in drawn["curves"].axes if ax.get_lines()]
    assert len(curves) == 2  # one panel per compared run
    assert "mean of 2 trials, band min..max" in curves[1].get_title() and curves[1].collections  # the band


def test_accuracy_axes_span_more_than_a_few_test_images(runs, monkeypatch, tmp_path) -> None:
    drawn = _drawn(monkeypatch, runs, ["inside"], tmp_path)
    lo, hi = drawn["accuracy"].axes[0].get_ylim()
    assert hi - lo >= figures.MIN_ACC_SPAN
    lo, hi = drawn["early_stop"].axes[0].get_ylim()
    assert lo == 0 and hi >= 300  # from zero to above the budget, which is drawn
    assert any(line.get_label().startswith("budget") for line in drawn["early_stop"].axes[0].get_lines())
