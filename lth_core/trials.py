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

from lth_core.lottery import prepare_out_dir, run_lottery
from lth_core.recipes import Recipe
from lth_core.report import write_report
from lth_core.tracking import log_report_run
from lth_core.files import atomic_write_text

METRICS = ("weights_remaining", "early_stop_step", "val_loss_min", "val_acc", "test_acc", "test_acc_final", "steps")


def aggregate_rows(per_trial: list[list[dict]]) -> list[dict]:
    """Mean per round over trials, with min/max/values under ``stats``."""
    rounds = sorted({r["round"] for rows in per_trial for r in rows})
    out = []
    for k in rounds:
        rows = [r for trial in per_trial for r in trial if r["round"] == k]
        row: dict = {"round": k, "trials": len(rows), "stats": {}}
        for m in METRICS:
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


def run_experiment(recipe: Recipe, out_dir: str | Path, say: Callable[[str], None] = print, pm=None) -> dict:
    """Run every trial of a recipe (one trial: exactly :func:`run_lottery`)."""
    out_dir = Path(out_dir)
    n = recipe["trials"]
    if n == 1:
        return run_lottery(recipe, out_dir, say=say, pm=pm)
    prepare_out_dir(recipe, out_dir)
    summaries, folders = [], []
    for i in range(n):
        say(f"trial {i + 1}/{n} (seed {recipe['seed'] + i})")
        folder = out_dir / f"trial_{i}"
        summaries.append(run_lottery(recipe.for_trial(i), folder, say=say, pm=pm, group=f"{recipe.name}-{recipe.hash()}"))
        folders.append(folder)
    summary = aggregate(recipe, summaries, folders)
    atomic_write_text(out_dir / "summary.json", json.dumps(summary, indent=2))
    report = write_report([out_dir], out_dir / "report")
    say(f"report over {n} trials: {report}")
    if recipe["tracking"]["backend"] != "none":
        log_report_run([out_dir], out_dir / "report", project=recipe["tracking"]["project"], group=f"{recipe.name}-{recipe.hash()}")
    return summary
