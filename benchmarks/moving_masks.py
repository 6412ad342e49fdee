"""Masks that move both ways, against IMP and pruning at init, on LeNet-300-100 / Fashion-MNIST.

At the two densities IMP reaches after 10 and 15 rounds of the paper's allocation (20% of
each hidden layer, 10% of the output layer per round: 10.8% and 3.6% of the weights), with
the paper's LeNet settings (Adam 1.2e-3, batch 60, 5,000 validation images) and the same
number of training steps ``T`` for every ticket:

- IMP (rewind to θ0; its round 0 is the dense network);
- gradual magnitude pruning (cubic, every 100 steps, to IMP's per-layer densities);
- hard and soft movement pruning (``movement_pruning``; hard at IMP's per-layer densities,
  soft at the L1 coefficient that lands near each density, see ``--soft-l1``);
- SET and RigL (ERK, update every 100 steps, drop fraction 0.3; RigL also at the recipe's
  uniform allocation, IMP's per-layer densities);
- SNIP and SynFlow pruned as their papers prune, one global ranking at initialisation
  (SynFlow's 100 iterations), each beside random pruning at the per-layer densities it
  produced (``random_pruning``), all trained from θ0.

    python benchmarks/moving_masks.py OUT_DIR [--steps 5000] [--seeds 0 1] [--jobs 2]

Each run goes to ``OUT_DIR/<method>_<level>_s<seed>`` (IMP: ``imp_s<seed>``); rerunning
resumes (finished runs are reused). The table gives the mean test accuracy over the
seeds (each seed's in brackets) at the last step, as every method's ticket trained ``T``
steps, and the early-stopping step's where the method has one.
"""

from __future__ import annotations

import argparse
import json
import statistics
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from lth_runs import fashion_lenet_run, summary_row

LEVELS = (10, 15)  #: IMP rounds
SIZES = {"hidden": 784 * 300 + 300 * 100, "last": 100 * 10}
SOFT_L1 = {10: 31.0, 15: 65.0}  #: soft movement's λ landing near each level (measured at T = 5,000, seed 0; --soft-l1)


def density(k: int) -> float:
    """IMP's overall density after ``k`` rounds of the paper's allocation."""
    return (0.8**k * SIZES["hidden"] + 0.9**k * SIZES["last"]) / sum(SIZES.values())


def callback(text: str) -> list[str]:
    return ["lottery.rounds=0", f"callbacks=[{text}]"]


def at_init_global(criterion: str, k: int) -> list[str]:
    """One global ranking at θ0 to IMP's overall density (the papers' way), random pruning beside."""
    return ["lottery.mode=at_init", f"lottery.criterion={criterion}", "lottery.scope=global", "lottery.layer_rates={}",
            "lottery.rounds=1", f"lottery.rate={1 - density(k):.8f}", "controls=[random_pruning]"]


def jobs(soft_l1: dict[int, float]) -> dict[str, list[str]]:
    out = {"imp": ["lottery.rounds=15"]}
    for k in LEVELS:
        d = density(k)
        out[f"gradual_{k}"] = callback(f"{{name: gradual_pruning, criterion: magnitude, target: {0.8 ** k:.8f}, schedule: cubic, every: 100it}}")
        out[f"movement_hard_{k}"] = callback(f"{{name: movement_pruning, method: hard, density: {d:.8f}}}")
        out[f"movement_soft_{k}"] = callback(f"{{name: movement_pruning, method: soft, l1: {soft_l1[k]}}}")
        out[f"set_{k}"] = callback(f"{{name: set, density: {d:.8f}}}")
        out[f"rigl_{k}"] = callback(f"{{name: rigl, density: {d:.8f}}}")
        out[f"rigl_uniform_{k}"] = callback(f"{{name: rigl, density: {d:.8f}, distribution: uniform}}")
        out[f"snip_{k}"] = at_init_global("snip", k)
        out[f"synflow_{k}"] = at_init_global("synflow", k)
    return out


def run(out: Path, name: str, overrides: list[str], steps: int, seed: int) -> int:
    return fashion_lenet_run(out, f"{name}_s{seed}", steps, [f"seed={seed}", *overrides])


def rows(out: Path, name: str, seeds: list[int], run_name: str, round_: int | None) -> list[dict]:
    found = []
    for seed in seeds:
        f = out / f"{name}_s{seed}" / "summary.json"
        r = summary_row(json.loads(f.read_text()), run_name, round_) if f.is_file() else None
        if r:
            found.append(r)
    return found


def method_rows(out: Path, seeds: list[int], name: str, run_name: str, k: int) -> list[dict]:
    """A method's rows at level ``k``: IMP's round k, or the last row of the method's own run for k."""
    return rows(out, "imp", seeds, run_name, k) if name == "imp" else rows(out, f"{name}_{k}", seeds, run_name, None)


def cell(rs: list[dict], early: bool = False) -> str:
    if not rs:
        return "not run"
    key = "test_acc" if early else "test_acc_final"
    accs = [100 * r[key] for r in rs]
    dens = statistics.fmean(100 * r["weights_remaining"] for r in rs)
    return f"{statistics.fmean(accs):.2f} ({', '.join(f'{a:.2f}' for a in accs)}) @ {dens:.2f}%"


SPECS = [  # label, job name or (name at level 10, name at level 15), run, has early stopping
    ("IMP (magnitude, rewind to θ0)", "imp", "ticket", True),
    ("gradual magnitude (cubic)", "gradual", "ticket", True),
    ("hard movement pruning", "movement_hard", "ticket", False),
    ("soft movement pruning", "movement_soft", "ticket", False),
    ("SET (ERK)", "set", "ticket", False),
    ("RigL (ERK)", "rigl", "ticket", False),
    ("RigL (uniform: IMP's per-layer densities)", "rigl_uniform", "ticket", False),
    ("SNIP, global, at init", "snip", "ticket", True),
    ("random pruning at SNIP's per-layer densities", "snip", "random_pruning", True),
    ("SynFlow, global, at init", "synflow", "ticket", True),
    ("random pruning at SynFlow's per-layer densities", "synflow", "random_pruning", True),
]


def results(out: Path, seeds: list[int]) -> dict[str, dict]:
    """Every (method, level) that ran: mean final test accuracy, mean density, seeds found."""
    found = {}
    for label, name, run_name, _ in SPECS:
        for k in LEVELS:
            rs = method_rows(out, seeds, name, run_name, k)
            if rs:
                found[f"{name}/{run_name}/{k}"] = {
                    "label": label, "seeds": len(rs),
                    "test_acc_final": statistics.fmean(r["test_acc_final"] for r in rs),
                    "weights_remaining": statistics.fmean(r["weights_remaining"] for r in rs)}
    return found


def table(out: Path, seeds: list[int]) -> str:
    lines = ["| method | ~10.8%: test acc at step T | early stop | ~3.6%: test acc at step T | early stop |", "|---|---|---|---|---|"]
    dense = rows(out, "imp", seeds, "ticket", 0)
    lines.append(f"| dense network (IMP's round 0) | {cell(dense)} | {cell(dense, True)} | | |")
    for label, name, run_name, early in SPECS:
        cells = []
        for k in LEVELS:
            rs = method_rows(out, seeds, name, run_name, k)
            cells += [cell(rs), cell(rs, True) if early else "= at T"]
        lines.append(f"| {label} | {' | '.join(cells)} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path)
    p.add_argument("--steps", type=int, default=5000, help="training steps of every ticket (T)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--jobs", type=int, default=2, help="runs in parallel (one thread each)")
    p.add_argument("--soft-l1", type=float, nargs=2, default=[SOFT_L1[k] for k in LEVELS], metavar=("L10", "L15"),
                   help="soft movement's L1 coefficient at each level")
    p.add_argument("--only", nargs="*", default=None, help="run only these job names (e.g. imp rigl_10)")
    p.add_argument("--table-only", action="store_true", help="print the table from finished runs")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.table_only:
        todo = jobs(dict(zip(LEVELS, args.soft_l1)))
        if args.only is not None:
            todo = {k: v for k, v in todo.items() if k in args.only}
        work = [(name, overrides, seed) for seed in args.seeds for name, overrides in todo.items()]
        work.sort(key=lambda w: w[0] != "imp")  # the longest first
        with ThreadPoolExecutor(args.jobs) as pool:
            codes = list(pool.map(lambda w: run(args.out, w[0], w[1], args.steps, w[2]), work))
        failed = [f"{name}_s{seed}" for (name, _, seed), rc in zip(work, codes) if rc != 0]
    else:
        failed = []
    text = table(args.out, args.seeds)
    (args.out / "table.md").write_text(text + "\n")
    print(text)
    print(json.dumps({"failed": failed, "densities": {k: density(k) for k in LEVELS}, "results": results(args.out, args.seeds)}))


if __name__ == "__main__":
    main()
