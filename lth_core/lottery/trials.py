"""Trials: the paper averages several independent lotteries (own seed, own θ0).

``trials: N`` runs trial ``i`` with seed ``seed + i`` into ``DIR/trial_<i>/`` (each a
complete run folder with its own ``summary.json``) and writes ``DIR/summary.json`` whose
rows hold the mean over trials plus ``stats`` with min, max and every trial's value.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Callable

from lth_core.config import Recipe, point_name
from lth_core.config.parallel import declared_world
from lth_core.engines.collectives import is_writer
from lth_core.engines.lockstep import Lockstep
from lth_core.engines.stacked import OFF
from lth_core.errors import LthError
from lth_core.files import atomic_write_text
from lth_core.lottery.progress import Progress
from lth_core.lottery.rounds import prepare_out_dir, run_lottery
from lth_core.lottery.tracking import log_report_run, resolve_mode
from lth_core.lottery.user_code import UserCode
from lth_core.reporting.report import write_report

METRICS = ("weights_remaining", "early_stop_step", "val_loss_min", "val_acc", "test_acc", "test_acc_final", "steps")


def extra_metrics(rows: list[dict]) -> list[str]:
    """Numbers a row holds beyond the core's own (what callbacks put in ``context.metrics``)."""
    own = {*METRICS, "round", "trials"}
    return sorted({m for r in rows for m, v in r.items()
                   if m not in own and isinstance(v, (int, float)) and not isinstance(v, bool)})


def aggregate_rows(per_trial: list[list[dict]]) -> list[dict]:
    """Mean per round over trials, with min/max/values under ``stats``."""
    rounds = sorted({r["round"] for rows in per_trial for r in rows})
    out = []
    for k in rounds:
        rows = [r for trial in per_trial for r in trial if r["round"] == k]
        row: dict = {"round": k, "trials": len(rows), "stats": {}}
        for m in (*METRICS, *extra_metrics(rows)):
            values = [r[m] for r in rows if m in r]
            if not values:
                continue
            row[m] = statistics.fmean(values)
            row["stats"][m] = {"mean": row[m], "min": min(values), "max": max(values), "values": values}
        row["early_stop_step"] = int(round(row["early_stop_step"]))
        out.append(row)
    return out


def aggregate(recipe: Recipe, summaries: list[dict], folders: list[Path]) -> dict:
    controls = sorted({name for s in summaries for name in s["controls"]})
    return {
        "recipe": recipe.to_dict(),
        "recipe_hash": recipe.hash(),
        "trials": [str(f.name) for f in folders],
        "rounds": aggregate_rows([s["rounds"] for s in summaries]),
        "controls": {c: aggregate_rows([s["controls"].get(c, []) for s in summaries]) for c in controls},
        "wall_time_s": round(sum(s.get("wall_time_s", 0.0) for s in summaries), 2),
    }


def run_experiment(recipe: Recipe, out_dir: str | Path, say: Callable[[str], None] = print, pm=None,
                   code: UserCode | None = None, progress: Progress | None = None) -> dict:
    """Run every trial of a recipe (one trial: exactly :func:`run_lottery`); ``progress``
    shows how far every run is and when the whole experiment will end."""
    out_dir = Path(out_dir)
    if recipe["sweep"]:
        return run_sweep(recipe, out_dir, say=say, pm=pm, code=code, progress=progress)
    n = recipe["trials"]
    if n == 1:
        return run_lottery(recipe, out_dir, say=say, pm=pm, code=code, progress=progress, report=True)
    prepare_out_dir(recipe, out_dir, pm, say)
    summaries, folders = [], []
    if recipe["vectorize_trials"] and code is not None:
        raise LthError(f"vectorize_trials stacks lth's own classifiers; a module of your own trains one trial after another: {OFF}")
    if recipe["vectorize_trials"]:  # the same trials, trained as one stacked model (the loop has none left)
        summaries, folders = run_trials_stacked(recipe, out_dir, say=say, pm=pm, group=f"{recipe.name}-{recipe.hash()}", progress=progress)
    for i in range(len(summaries), n):
        say(f"trial {i + 1}/{n} (seed {recipe['seed'] + i})")
        folder = out_dir / f"trial_{i}"
        summaries.append(run_lottery(recipe.for_trial(i), folder, say=say, pm=pm, group=f"{recipe.name}-{recipe.hash()}", code=code, progress=progress))
        folders.append(folder)
    summary = aggregate(recipe, summaries, folders)
    if not is_writer():  # data parallel: rank 0 writes the aggregate and the report
        return summary
    atomic_write_text(out_dir / "summary.json", json.dumps(summary, indent=2))
    report = write_report([out_dir], out_dir / "report")
    say(f"report over {n} trials: {report}")
    if recipe["tracking"]["backend"] != "none":
        log_report_run([out_dir], out_dir / "report", project=recipe["tracking"]["project"], group=f"{recipe.name}-{recipe.hash()}")
    return summary


def run_sweep(recipe: Recipe, out_dir: Path, say: Callable[[str], None] = print, pm=None, code: UserCode | None = None,
              progress: Progress | None = None) -> dict:
    """Run every point of ``sweep:`` into ``DIR/<point>/`` and tabulate them in ``DIR/sweep.json``.

    Each point is a complete run folder (with its trials), so it resumes like any run and
    ``lth report DIR/<point> ...`` compares points. ``sweep.md`` holds one line per point:
    its settings and the last round of the ticket (and of each control).
    """
    prepare_out_dir(recipe, out_dir, pm, say)
    points = recipe.sweep_points()
    results = []
    for i, (point, sub) in enumerate(points, start=1):
        folder = out_dir / point_name(point)
        say(f"sweep point {i}/{len(points)}: {point_name(point)}")
        summary = run_experiment(sub, folder, say=say, pm=pm, code=code, progress=progress)
        last = summary["rounds"][-1]
        controls = {c: rows[-1] for c, rows in summary["controls"].items() if rows}
        results.append({"point": point, "folder": folder.name, "recipe_hash": sub.hash(), "last_round": last, "controls": controls})
    sweep = {"recipe": recipe.to_dict(), "recipe_hash": recipe.hash(), "points": results}
    if not is_writer():  # data parallel: rank 0 writes the table
        return sweep
    atomic_write_text(out_dir / "sweep.json", json.dumps(sweep, indent=2))
    atomic_write_text(out_dir / "sweep.md", sweep_table(sweep))
    say(sweep_table(sweep))
    return sweep


def sweep_table(sweep: dict) -> str:
    """One markdown row per sweep point: its values, then the last round's measurements."""
    keys = list(sweep["recipe"]["sweep"])
    metrics = ["weights_remaining", "test_acc", "test_acc_final"]
    extra = extra_metrics([p["last_round"] for p in sweep["points"]])
    controls = sorted({c for p in sweep["points"] for c in p["controls"]})
    head = keys + metrics + extra + [f"{c} test_acc" for c in controls]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for p in sweep["points"]:
        row = p["last_round"]
        cells = [str(p["point"][k]) for k in keys]
        cells += [f"{row['weights_remaining']:.2%}", f"{row['test_acc']:.4f}", f"{row['test_acc_final']:.4f}"]
        cells += [f"{row[m]:.4f}" if m in row else "-" for m in extra]
        cells += [f"{p['controls'][c]['test_acc']:.4f}" if c in p["controls"] else "-" for c in controls]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def check_stackable(recipe: Recipe) -> None:
    """Refuse, before anything runs, what stacked trials do not support (one line each)."""
    if recipe["callbacks"]:
        names = ", ".join(c["name"] for c in recipe["callbacks"])
        raise LthError(f"vectorize_trials: recipe callbacks ({names}) work on one unstacked model during training; {OFF}")
    if (declared_world(recipe["trainer"]) or 1) > 1 or str(recipe["trainer"].get("strategy", "auto")) != "auto":
        raise LthError(f"vectorize_trials: stacked trials train in one process on one device; {OFF}, or trainer.devices: 1")
    if recipe["tracking"]["backend"] != "none" and resolve_mode(recipe["tracking"]["mode"]) != "disabled":
        raise LthError("vectorize_trials: W&B keeps one active run per process, and the trials run together; "
                           "set tracking: none (or WANDB_MODE=disabled), or vectorize_trials: false")


def run_trials_stacked(recipe: Recipe, out_dir: Path, say: Callable[[str], None] = print, pm=None, group: str | None = None,
                       progress: Progress | None = None) -> tuple[list[dict], list[Path]]:
    """Every trial of ``recipe`` into ``out_dir/trial_<i>/``, trained stacked: (summaries, folders)."""
    check_stackable(recipe)
    n = recipe["trials"]
    folders = [out_dir / f"trial_{i}" for i in range(n)]
    mode = {True: "stacked", "batched": "batched", "parallel": "parallel"}[recipe["vectorize_trials"]]
    how = {"stacked": "", "batched": " (batched matrix products)", "parallel": " (their steps on parallel threads)"}[mode]
    say(f"trials 1..{n} (seeds {recipe['seed']}..{recipe['seed'] + n - 1}) trained stacked as one model{how}")
    lockstep = Lockstep(n, mode)

    def body(i: int) -> Callable[[], dict]:
        def tell(text: str) -> None:
            say(f"[trial {i}] {text}")

        return lambda: run_lottery(recipe.for_trial(i), folders[i], say=tell, pm=pm, group=group, engine=lockstep.engine(i), progress=progress)

    return lockstep.run([body(i) for i in range(n)]), folders
