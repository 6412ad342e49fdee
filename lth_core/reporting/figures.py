"""The report's figures, drawn so that they can be read at a glance.

- **One style per series.** Every (run folder, run) pair (``quickstart: ticket``,
  ``quickstart: random_reinit``) keeps one colour and one marker in every figure
  (:class:`Styles`), so a reader learns the legend once.
- **Honest y-ranges.** Accuracy axes span at least :data:`MIN_ACC_SPAN` percentage points:
  with 360 test images one image is 0.28 points, and a tighter axis turns it into a cliff.
  Early-stopping steps are drawn from 0 to the budget, which is marked: a point on it is
  *capped* (the minimum validation loss may lie beyond the run), and drawn hollow.
- **Coinciding series stay visible.** Each series is dodged a little along the log x axis
  and controls are drawn with hollow markers over the filled ticket.
- **Ticks that never overlap.** Of the levels of weights remaining of every compared run,
  a tick is kept only when it is far enough (on the log axis) from the last one kept.
- **Means say so.** Over several trials the training curves are means, with a min..max
  band and each trial's early-stopping point; the legend says how many trials.
- **Every compared run's curves**: one panel per run folder.
- **Legends off the data**: to the right of the axes.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any, Callable

#: The narrowest accuracy axis, in percentage points.
MIN_ACC_SPAN = 5.0
#: The closest two x ticks may be, as a fraction of the log axis' width.
MIN_TICK_GAP = 0.07
#: Markers per run name, in order of first appearance (the ticket's is a filled circle).
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "h")


class Styles:
    """Colour and marker per series, fixed the first time a series is seen."""

    def __init__(self) -> None:
        import matplotlib

        self.colours = list(matplotlib.colormaps["tab10"].colors)
        self.seen: dict[str, dict] = {}
        self.runs: dict[str, str] = {}

    def of(self, series: str, run: str) -> dict:
        key = f"{series}: {run}"
        if key not in self.seen:
            marker = self.runs.setdefault(run, MARKERS[len(self.runs) % len(MARKERS)])
            self.seen[key] = {"color": self.colours[len(self.seen) % len(self.colours)], "marker": marker}
        return self.seen[key]


def stat(row: dict, metric: str) -> tuple[float, float, float]:
    """(mean, min, max) of a metric in a summary row; min = max = value for one trial."""
    st = row.get("stats", {}).get(metric)
    if st:
        return st["mean"], st["min"], st["max"]
    v = row[metric]
    return v, v, v


def is_capped(row: dict) -> bool:
    """The early-stopping step is the run's last step: the minimum validation loss may lie
    beyond the budget (of some trial, over several)."""
    steps = row.get("stats", {}).get("steps", {}).get("values") or [row.get("steps")]
    stops = row.get("stats", {}).get("early_stop_step", {}).get("values") or [row.get("early_stop_step")]
    return any(s is not None and t is not None and s == t for s, t in zip(stops, steps))


def spread_ticks(levels: list[float]) -> list[float]:
    """Levels (percent, descending) thinned so that no two ticks are closer than
    :data:`MIN_TICK_GAP` of the log axis; the first and last are kept."""
    levels = sorted(set(levels), reverse=True)
    if len(levels) < 3:
        return levels
    width = math.log10(levels[0]) - math.log10(levels[-1]) or 1.0
    kept = [levels[0]]
    for v in levels[1:-1]:
        if (math.log10(kept[-1]) - math.log10(v)) / width >= MIN_TICK_GAP and (math.log10(v) - math.log10(levels[-1])) / width >= MIN_TICK_GAP:
            kept.append(v)
    return kept + [levels[-1]]


def at_least(ax: Any, span: float, floor: float | None = None, ceiling: float | None = None) -> None:
    """Widen the y axis to ``span`` around its data (within ``floor``..``ceiling``)."""
    lo, hi = ax.get_ylim()
    if hi - lo < span:
        mid = (lo + hi) / 2
        lo, hi = mid - span / 2, mid + span / 2
        if ceiling is not None and hi > ceiling:
            lo, hi = lo - (hi - ceiling), ceiling
        if floor is not None and lo < floor:
            lo, hi = floor, hi + (floor - lo)
        ax.set_ylim(lo, hi)


def legend_outside(ax: Any) -> None:
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, frameon=False)


def plot_levels(ax: Any, series: list, metric: str, scale: float, styles: Styles, controls: bool = True) -> None:
    """``metric`` against percent of weights remaining for every series' ticket (and
    controls): means with min..max bars over trials, dodged, capped points hollow."""
    drawn = [(s, run, rows) for s in series for run, rows in s.runs().items() if controls or run == "ticket"]
    for i, (s, run, rows) in enumerate(drawn):
        dodge = 1.0 + 0.012 * (i - (len(drawn) - 1) / 2)  # coinciding series side by side
        rows = sorted(rows, key=lambda r: -r["weights_remaining"])
        x = [100 * r["weights_remaining"] * dodge for r in rows]
        stats = [stat(r, metric) for r in rows]
        y = [scale * m for m, _, _ in stats]
        err = [[scale * (m - lo) for m, lo, _ in stats], [scale * (hi - m) for m, _, hi in stats]]
        style = styles.of(s.label, run)
        trials = len(s.trial_dirs)
        label = f"{s.label}: {run}" + (f" (mean of {trials} trials)" if trials > 1 else "")
        ax.errorbar(x, y, yerr=err, color=style["color"], marker=style["marker"], linestyle="-" if run == "ticket" else "--",
                    capsize=3, markersize=6 if run == "ticket" else 5, linewidth=1.4, label=label,
                    markerfacecolor=style["color"] if run == "ticket" else "white", zorder=3 if run == "ticket" else 4)
        capped = [(xi, yi) for xi, yi, r in zip(x, y, rows) if metric == "early_stop_step" and is_capped(r)]
        if capped:
            ax.plot(*zip(*capped), linestyle="none", marker="o", markersize=11, markerfacecolor="none",
                    markeredgecolor=style["color"], zorder=2)
    _level_axis(ax, series)


def _level_axis(ax: Any, series: list) -> None:
    from matplotlib.ticker import FixedLocator, NullFormatter, NullLocator

    ax.set_xscale("log")
    levels = [100 * r["weights_remaining"] for s in series for r in s.summary["rounds"]]
    ax.xaxis.set_major_locator(FixedLocator(spread_ticks(levels)))
    ax.xaxis.set_major_formatter(lambda v, _: f"{v:.3g}")
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_minor_formatter(NullFormatter())
    lo, hi = min(levels), max(levels)
    ax.set_xlim(hi * 1.12, lo / 1.12)  # inverted: dense on the left, as in the paper
    ax.set_xlabel("percent of weights remaining")
    ax.grid(True, which="major", alpha=0.3)


def budget_line(ax: Any, series: list) -> None:
    """The step budget (``trainer.max_steps``): an early stop on it is capped."""
    budgets = {s.summary.get("recipe", {}).get("trainer", {}).get("max_steps") for s in series} - {None, -1}
    for b in sorted(budgets):
        ax.axhline(b, color="0.4", linestyle=":", linewidth=1, zorder=1, label=f"budget (trainer.max_steps {b})")
    if any(is_capped(r) for s in series for rows in s.runs().values() for r in rows):
        ax.plot([], [], linestyle="none", marker="o", markersize=11, markerfacecolor="none", markeredgecolor="0.3",
                label="circled: capped (the minimum may lie beyond)")
    top = max(budgets, default=None)
    if top:
        ax.set_ylim(0, top * 1.1)


def trial_curves(read: Callable[[Path, int], list[dict]], dirs: list[Path], round_: int, metric: str) -> dict[int, list[float]]:
    """step -> each trial's ``metric`` at that step (steps every trial evaluated)."""
    curves = [{row["step"]: row[metric] for row in read(d, round_) if metric in row} for d in dirs]
    curves = [c for c in curves if c]
    if not curves:
        return {}
    steps = sorted(set.intersection(*(set(c) for c in curves)))
    return {s: [c[s] for c in curves] for s in steps}


def plot_curves(ax: Any, s: Any, rounds: list[int], metric: str, scale: float, read: Callable, styles: Styles) -> None:
    """One run folder's curves of the chosen rounds: the mean over trials with its
    min..max band, and each trial's early-stopping step marked on it."""
    remaining = {r["round"]: r for r in s.summary["rounds"]}
    trials = len(s.trial_dirs)
    for k in rounds:
        by_step = trial_curves(read, s.trial_dirs, k, metric)
        if not by_step:
            continue
        steps = list(by_step)
        mean = [scale * statistics.fmean(v) for v in by_step.values()]
        row = remaining.get(k, {})
        style = styles.of("curves", f"round {k}")
        label = f"round {k} ({100 * row.get('weights_remaining', float('nan')):.1f}%)"
        ax.plot(steps, mean, color=style["color"], linewidth=1.4, label=label + (f", mean of {trials}" if trials > 1 else ""))
        if trials > 1:
            ax.fill_between(steps, [scale * min(v) for v in by_step.values()], [scale * max(v) for v in by_step.values()],
                            color=style["color"], alpha=0.15, linewidth=0)
        stops = row.get("stats", {}).get("early_stop_step", {}).get("values") or [row.get("early_stop_step")]
        marks = [(t, mean[steps.index(t)]) for t in stops if t in steps]
        if marks:
            ax.plot(*zip(*marks), linestyle="none", marker=style["marker"], color=style["color"], markersize=6,
                    markeredgecolor="black", markeredgewidth=0.6, zorder=5)
    ax.set_xlabel("training step")
    ax.grid(True, alpha=0.3)
