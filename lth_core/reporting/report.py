"""``lth report``: the paper's figures and tables from one or more run folders.

A *series* is one run folder (one lottery, or several trials of one). Figures:

- ``accuracy_vs_weights.png``: test accuracy at the early-stopping step against percent of
  weights remaining (log x axis, as in the paper), ticket and every control, error bars
  min..max over trials;
- ``early_stop_vs_weights.png``: the early-stopping step against weights remaining;
- ``curves.png``: test accuracy against training step for chosen rounds;
- ``oneshot_vs_iterative.png`` when both modes are among the series.

``report.md`` holds the figures, a results table per series, and the per-layer sparsity.
Any other folder goes to the report section that claims it (:mod:`lth_core.reporting.sections`):
an ``lth merge`` folder to lth's own (the linear-path figure and merge table), an ``lth
extend`` folder to the frankenmodel plugin's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from lth_core.errors import LthError
from lth_core.files import atomic_path, atomic_write_text, make_dir, read_json
from lth_core.reporting import figures
from lth_core.reporting.sections import claimed_sections, render_section

#: The paper's highlighted levels of weights remaining (Frankle & Carbin, Figure 3).
PAPER_LEVELS = (1.0, 0.513, 0.211, 0.07, 0.036)


@dataclass
class Series:
    """One run folder: its summary and the folders of its trials."""

    label: str
    path: Path
    summary: dict
    trial_dirs: list[Path] = field(default_factory=list)

    @classmethod
    def from_dir(cls, path: str | Path, label: str | None = None) -> "Series":
        path = Path(path)
        summary_path = path / "summary.json"
        if not summary_path.is_file():
            raise LthError(f"{path} is not a finished run: no summary.json (run `lth run RECIPE --out {path}` first)")
        summary = read_json(summary_path)
        trials = [path / t for t in summary.get("trials", [])] or [path]
        recipe = summary.get("recipe", {})
        mode = recipe.get("lottery", {}).get("mode", "iterative")
        callbacks = [c.get("name", "?") for c in recipe.get("callbacks", [])]
        # A run that prunes during training (lottery.rounds 0) is named by its callbacks, not its mode.
        kinds = ([mode] if recipe.get("lottery", {}).get("rounds", 1) or not callbacks else []) + callbacks
        name = label or f"{recipe.get('name', path.name)} ({', '.join(kinds)})"
        return cls(name, path, summary, trials)

    @property
    def mode(self) -> str:
        return self.summary.get("recipe", {}).get("lottery", {}).get("mode", "iterative")

    def runs(self) -> dict[str, list[dict]]:
        """Rows of the ticket and every control, by run name."""
        return {"ticket": self.summary["rounds"], **self.summary.get("controls", {})}


def _stat(row: dict, metric: str) -> tuple[float, float, float]:
    """(mean, min, max) of a metric in a summary row; min = max = value for one trial."""
    return figures.stat(row, metric)


def _curves(dirs: list[Path], round_: int) -> list[list[dict]]:
    """Round ``round_``'s evaluation rows (``curves.json``) of every trial that has them."""
    found = [d / f"round_{round_}" / "curves.json" for d in dirs]
    return [read_json(f, list) for f in found if f.is_file()]


def curve_metric(rows: list[dict], monitor: str = "val_loss") -> str:
    """What the training-curve figure plots: test accuracy where every evaluation measured
    it (lth's classifier), else the run's monitored metric (a module of the user's own is
    tested at the early-stopping step and at the end only)."""
    return "test_acc" if rows and all("test_acc" in r for r in rows) else monitor


def choose_rounds(rows: list[dict], targets=PAPER_LEVELS) -> list[int]:
    """The rounds closest to the paper's highlighted levels of weights remaining."""
    chosen = []
    for t in targets:
        best = min(rows, key=lambda r: abs(r["weights_remaining"] - t))
        if best["round"] not in chosen:
            chosen.append(best["round"])
    return chosen


def distinct_labels(series: list[Series]) -> None:
    """Two runs of one recipe: tell them apart by folder (each series keeps its own style)."""
    labels = [s.label for s in series]
    for s in series:
        if labels.count(s.label) > 1:
            s.label = f"{s.label} [{s.path.name}]"


def make_figures(series: list[Series], out: Path, rounds: list[int] | None = None) -> dict[str, Path]:
    """Write the report's PNG figures into ``out``; returns name -> path (how they are drawn:
    :mod:`lth_core.reporting.figures`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    make_dir(out)
    distinct_labels(series)
    made: dict[str, Path] = {}
    styles = figures.Styles()

    def save(fig, name: str) -> None:
        path = out / f"{name}.png"
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=110, format="png", bbox_inches="tight")
        plt.close(fig)
        made[name] = path

    many = any(len(s.trial_dirs) > 1 for s in series)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    figures.plot_levels(ax, series, "test_acc", 100, styles)
    figures.at_least(ax, figures.MIN_ACC_SPAN, ceiling=100.5)
    ax.set_ylabel("test accuracy at early stop (%)")
    ax.set_title("Test accuracy vs weights remaining" + (" (means; bars: min..max over trials)" if many else ""))
    figures.legend_outside(ax)
    save(fig, "accuracy_vs_weights")

    fig, ax = plt.subplots(figsize=(7, 4.5))
    figures.plot_levels(ax, series, "early_stop_step", 1, styles)
    figures.budget_line(ax, series)
    ax.set_ylabel("early-stopping step (min validation loss)")
    ax.set_title("Early-stopping step vs weights remaining" + (" (means; bars: min..max over trials)" if many else ""))
    figures.legend_outside(ax)
    save(fig, "early_stop_vs_weights")

    save(_curves_figure(plt, series, rounds, styles), "curves")

    modes = {s.mode for s in series}
    if {"iterative", "one_shot"} <= modes:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        figures.plot_levels(ax, series, "test_acc", 100, styles, controls=False)
        figures.at_least(ax, figures.MIN_ACC_SPAN, ceiling=100.5)
        ax.set_ylabel("test accuracy at early stop (%)")
        ax.set_title("One-shot vs iterative pruning")
        figures.legend_outside(ax)
        save(fig, "oneshot_vs_iterative")
    return made


def _curves_figure(plt, series: list[Series], rounds: list[int] | None, styles: figures.Styles):
    """Training curves of the chosen rounds, one panel per compared run folder."""
    fig, axes = plt.subplots(1, len(series), figsize=(6.2 * len(series) + 1.5, 4.5), sharey=True, squeeze=False)
    first = series[0]
    monitor = first.summary.get("recipe", {}).get("lottery", {}).get("monitor", "val_loss")
    chosen0 = rounds if rounds is not None else choose_rounds(first.summary["rounds"])
    metric = curve_metric(next(iter(_curves(first.trial_dirs, chosen0[0])), []) if chosen0 else [], monitor)
    scale, what = (100, f"{metric.replace('_', ' ')} (%)") if metric.endswith("acc") else (1, metric.replace("_", " "))
    for ax, s in zip(axes[0], series):
        chosen = rounds if rounds is not None else choose_rounds(s.summary["rounds"])
        figures.plot_curves(ax, s, chosen, metric, scale, lambda d, k: next(iter(_curves([d], k)), []), styles)
        trials = len(s.trial_dirs)
        ax.set_title(f"{s.label}" + (f": mean of {trials} trials, band min..max" if trials > 1 else ""), fontsize=9)
        figures.legend_outside(ax)
    axes[0][0].set_ylabel(what)
    if metric.endswith("acc"):
        figures.at_least(axes[0][0], figures.MIN_ACC_SPAN, ceiling=100.5)
    fig.suptitle(f"{what.split(' (')[0]} during training (markers: early-stopping steps)", fontsize=10)
    fig.tight_layout()
    return fig


def _fmt(row: dict | None, metric: str, scale: float = 100, digits: int = 2) -> str:
    if row is None:
        return "-"
    m, lo, hi = _stat(row, metric)
    if row.get("stats") and lo != hi:
        return f"{scale * m:.{digits}f} [{scale * lo:.{digits}f}, {scale * hi:.{digits}f}]"
    return f"{scale * m:.{digits}f}"


def results_table(s: Series) -> str:
    runs = s.runs()
    names = list(runs)
    header = "| round | weights remaining (%) | " + " | ".join(f"{n} test acc (%) | {n} early stop" for n in names) + " |"
    lines = [header, "|" + "---|" * (2 + 2 * len(names))]
    by_round = {n: {r["round"]: r for r in rows} for n, rows in runs.items()}
    for row in s.summary["rounds"]:
        k = row["round"]
        cells = []
        for n in names:
            r = by_round[n].get(k)
            cells += [_fmt(r, "test_acc"), _stop(r)]
        lines.append(f"| {k} | {100 * row['weights_remaining']:.1f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _stop(row: dict | None) -> str:
    """The early-stopping step, marked when it is the run's last step (capped)."""
    return _fmt(row, "early_stop_step", 1, 0) + (" (capped)" if row is not None and figures.is_capped(row) else "")


def levels_table(s: Series, targets=PAPER_LEVELS) -> str:
    """The paper's view: dense vs ticket vs each control at the highlighted levels.

    One row per round nearest 100/51/21/7/3.6% of weights remaining: test accuracy at the
    early-stopping step and the early-stopping step, mean [min, max] over trials.
    """
    runs = s.runs()
    by_round = {n: {r["round"]: r for r in rows} for n, rows in runs.items()}
    dense = by_round["ticket"].get(0)
    if dense is not None and dense["weights_remaining"] < 1.0:
        dense = None  # round 0 pruned while it trained (gradual pruning): no dense run here
    names = list(runs)
    header = "| weights remaining (%) | round | dense acc (%) | dense stop | " + " | ".join(f"{n} acc (%) | {n} stop" for n in names) + " |"
    lines = [header, "|" + "---|" * (4 + 2 * len(names))]
    for k in choose_rounds(s.summary["rounds"], targets):
        cells = [_fmt(dense, "test_acc"), _stop(dense)]
        for n in names:
            r = by_round[n].get(k)
            cells += [_fmt(r, "test_acc"), _stop(r)]
        wr = by_round["ticket"][k]["weights_remaining"]
        lines.append(f"| {100 * wr:.1f} | {k} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def sparsity_table(s: Series) -> str:
    """Per-layer percent of weights remaining in each round (first trial)."""
    d = s.trial_dirs[0]
    per_round = {}
    for row in s.summary["rounds"]:
        f = d / f"round_{row['round']}" / "ticket.json"
        if f.is_file():
            per_round[row["round"]] = read_json(f).get("sparsity", {})
    if not per_round:
        return "(no ticket files found)"
    layers = list(next(iter(per_round.values())))
    lines = ["| round | " + " | ".join(layers) + " | total |", "|" + "---|" * (len(layers) + 2)]
    for k, sp in per_round.items():
        kept = sum(v["kept"] for v in sp.values())
        total = sum(v["total"] for v in sp.values())
        lines.append(f"| {k} | " + " | ".join(f"{100 * sp[l]['density']:.1f}" for l in layers) + f" | {100 * kept / max(total, 1):.1f} |")
    return "\n".join(lines)


def _ticket_steps(s: Series) -> int:
    """Optimiser steps of the ticket's runs (every round, controls excluded): its training compute."""
    return int(round(sum(r.get("steps", 0) for r in s.summary["rounds"])))


def is_run_folder(path: Path) -> bool:
    """A finished lottery run: the one kind of folder ``lth report`` reads itself."""
    return (path / "summary.json").is_file()


def _run_parts(series: list[Series], out: Path, rounds: list[int] | None) -> list[str]:
    """The figures and tables of the run folders, as ``report.md`` lines."""
    distinct_labels(series)
    figures = make_figures(series, out, rounds) if series else {}
    parts = [] if not series else ["Runs: " + ", ".join(f"`{s.path}` ({s.label}, {len(s.trial_dirs)} trial(s), {_ticket_steps(s)} training steps over its ticket runs)" for s in series), ""]
    for name, path in figures.items():
        parts += [f"## {name.replace('_', ' ')}", "", f"![{name}]({path.name})", ""]
    for s in series:
        parts += [f"## At the paper's levels: {s.label}", "", "Test accuracy at the early-stopping step and the early-stopping step; mean [min, max] over trials; (capped): the early stop is the run's last step, the minimum validation loss may lie beyond the budget.", "", levels_table(s), ""]
        parts += [f"## Results: {s.label}", "", "Test accuracy at the early-stopping step; mean [min, max] over trials.", "", results_table(s), ""]
        parts += [f"### Per-layer weights remaining (%): {s.label}", "", sparsity_table(s), ""]
    return parts


def write_report(dirs: list[str | Path], out: str | Path, rounds: list[int] | None = None) -> Path:
    """Build figures and ``report.md`` for the given folders; returns report.md's path.

    Run folders first, then each report section's folders. Every folder is read (and
    claimed) before anything is written, so a wrong one costs nothing.
    """
    if not dirs:
        raise LthError("lth report needs at least one run folder")
    out = Path(out)
    folders = [Path(d) for d in dirs]
    series = [Series.from_dir(d) for d in folders if is_run_folder(d)]
    sections = claimed_sections([d for d in folders if not is_run_folder(d)])
    parts = ["# Lottery ticket report", "", *_run_parts(series, out, rounds)]
    make_dir(out)
    for entry, claimed in sections:
        parts += render_section(entry, claimed, out)
    report = out / "report.md"
    atomic_write_text(report, "\n".join(parts))
    return report
