"""Compare the bundled pruning and rewinding methods on LeNet-300-100 / Fashion-MNIST.

Every method runs the `lenet300_fashion_mnist` recipe (the paper's LeNet settings) with
the same shortened budget, one trial (seed 0), and only what differs overridden, then the
script prints a Markdown table of test accuracy at the early-stopping step (and that step)
at 10.7% and 3.5% of weights remaining (IMP rounds 10 and 15):

    python benchmarks/methods_table.py OUT_DIR [--steps 2000] [--jobs 2]

Runs go to OUT_DIR/<method>; rerunning resumes (finished rounds are reused). Pruning at
initialisation and gradual pruning reach each level in one run, with the per-layer
densities IMP reaches there (hidden layers 0.8^k, output layer 0.9^k).
"""

from __future__ import annotations

import argparse
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from lth_runs import fashion_lenet_run, summary_row

LEVELS = {10: 0.8**10, 15: 0.8**15}  # IMP round -> hidden-layer density


def at_level(k: int) -> list[str]:
    """One-shot overrides that prune straight to IMP round k's per-layer densities."""
    return ["lottery.rounds=1", f"lottery.rate={1 - 0.8 ** k:.6f}", f"lottery.layer_rates={{last: {1 - 0.9 ** k:.6f}}}"]


def gradual(k: int, steps: int) -> list[str]:
    """Gradual pruning to IMP round k's densities in as many steps as k+1 IMP rounds train."""
    cb = f"{{name: gradual_pruning, criterion: magnitude, target: {0.8 ** k:.6f}, schedule: cubic, every: 1ep}}"
    return ["lottery.rounds=0", f"trainer.max_steps={(k + 1) * steps}", f"callbacks=[{cb}]"]


def jobs(steps: int) -> dict[str, list[str]]:
    imp = ["lottery.rounds=15"]
    return {
        "magnitude_init": imp + ["controls=[random_pruning]"],
        "late_rewind": imp + ["lottery.rewind=late", "lottery.rewind_options={to: 10%}"],
        "lr_rewind": imp + ["lottery.rewind=lr_rewind"],
        "finetune": imp + ["lottery.rewind=finetune", "lottery.rewind_options={lr: 1.2e-4}"],
        "movement": imp + ["lottery.criterion=movement"],
        "snip_10": ["lottery.mode=at_init", "lottery.criterion=snip"] + at_level(10),
        "snip_15": ["lottery.mode=at_init", "lottery.criterion=snip"] + at_level(15),
        "synflow_10": ["lottery.mode=at_init", "lottery.criterion=synflow"] + at_level(10),
        "synflow_15": ["lottery.mode=at_init", "lottery.criterion=synflow"] + at_level(15),
        "gradual_10": gradual(10, steps),
        "gradual_15": gradual(15, steps),
    }


def cell(r: dict | None) -> str:
    return f"{100 * r['test_acc']:.2f} ({r['early_stop_step']}) @ {100 * r['weights_remaining']:.1f}%" if r else "not run"


def table(out: Path) -> str:
    def load(name: str) -> dict | None:
        f = out / name / "summary.json"
        return json.loads(f.read_text()) if f.is_file() else None

    lines = ["| method | ~10.7% remaining: test acc (early-stop step) | ~3.5% remaining |", "|---|---|---|"]
    dense = load("magnitude_init")
    if dense:
        lines.append(f"| dense (round 0) | {cell(summary_row(dense, 'ticket', 0))} | |")
    specs = [
        ("magnitude + rewind to θ0 (IMP)", "magnitude_init", "ticket", None),
        ("magnitude + late rewinding (10%)", "late_rewind", "ticket", None),
        ("magnitude + learning-rate rewinding", "lr_rewind", "ticket", None),
        ("magnitude + fine-tuning", "finetune", "ticket", None),
        ("movement + rewind to θ0", "movement", "ticket", None),
        ("random pruning (control of IMP)", "magnitude_init", "random_pruning", None),
        ("SNIP at init", "snip_10", "ticket", "snip_15"),
        ("SynFlow at init", "synflow_10", "ticket", "synflow_15"),
        ("gradual (per-epoch, cubic), equal steps", "gradual_10", "ticket", "gradual_15"),
    ]
    for label, a, run_name, b in specs:
        sa = load(a)
        if b is None:
            cells = [cell(summary_row(sa, run_name, 10)) if sa else "not run", cell(summary_row(sa, run_name, 15)) if sa else "not run"]
        else:
            sb = load(b)
            cells = [cell(summary_row(sa, run_name, None)) if sa else "not run", cell(summary_row(sb, run_name, None)) if sb else "not run"]
        lines.append(f"| {label} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path)
    p.add_argument("--steps", type=int, default=2000, help="training steps per IMP round")
    p.add_argument("--jobs", type=int, default=2, help="runs in parallel (one thread each)")
    p.add_argument("--table-only", action="store_true", help="print the table from finished runs")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.table_only:
        todo = jobs(args.steps)
        with ThreadPoolExecutor(args.jobs) as pool:
            list(pool.map(lambda item: fashion_lenet_run(args.out, item[0], args.steps, item[1]), todo.items()))
    print(table(args.out))


if __name__ == "__main__":
    main()
