"""Combine LeNet-300-100 tickets on Fashion-MNIST with every merge strategy.

Trains three lotteries of the `lenet300_fashion_mnist` recipe (the paper's LeNet settings)
with a shortened budget, one trial each and no controls:

- ``seed0``: seed 0;
- ``seed1``: seed 1 (another θ0, validation split and data order);
- ``seed0_order2``: seed 0 with ``data.order_seed=100`` (the same θ0 and split, another
  order of training batches);

then runs ``lth merge`` with every installed strategy on the last round's tickets of
(seed0, seed1) and (seed0, seed0_order2), and prints a Markdown table and a final JSON line:

    python benchmarks/merge_table.py OUT_DIR [--steps 3000] [--rounds 3]

Runs go to OUT_DIR/<run>, merges to OUT_DIR/merge_<pair>_<strategy>; rerunning resumes
(finished rounds are reused, finished merges are read back).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

RUNS = {"seed0": ["seed=0"], "seed1": ["seed=1"], "seed0_order2": ["seed=0", "data.order_seed=100"]}
PAIRS = {"two_seeds": ("seed0", "seed1"), "two_orders": ("seed0", "seed0_order2")}
STRATEGIES = ("ensemble", "average", "weight_matching", "union", "intersection")


def _lth(args: list[str], log: Path) -> int:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with open(log, "w") as f:
        return subprocess.run([sys.executable, "-m", "lth_core.commands.cli", *args], stdout=f, stderr=subprocess.STDOUT, env=env).returncode


def common(steps: int, rounds: int) -> list[str]:
    sets = ["trials=1", f"trainer.max_steps={steps}", f"lottery.rounds={rounds}", "tracking=none", "controls=[]",
            "trainer.enable_progress_bar=false"]
    return [a for s in sets for a in ("--set", s)]


def train(out: Path, name: str, steps: int, rounds: int) -> float:
    started = time.time()
    args = ["run", "lenet300_fashion_mnist", "--out", str(out / name), *common(steps, rounds)]
    args += [a for s in RUNS[name] for a in ("--set", s)]
    rc = _lth(args, out / f"{name}.log")
    print(f"train {name}: exit {rc} in {time.time() - started:.0f}s", flush=True)
    if rc:
        raise SystemExit(f"training {name} failed; see {out / f'{name}.log'}")
    return time.time() - started


def merge(out: Path, pair: str, strategy: str, rounds: int) -> dict:
    folder = out / f"merge_{pair}_{strategy}"
    if (folder / "merge.json").is_file():
        return json.loads((folder / "merge.json").read_text())
    if folder.exists():  # an interrupted merge of this script's own: start it again
        shutil.rmtree(folder)
    a, b = PAIRS[pair]
    started = time.time()
    args = ["merge", str(out / a / f"round_{rounds}"), str(out / b / f"round_{rounds}"), "--strategy", strategy, "--out", str(folder)]
    rc = _lth(args, out / f"merge_{pair}_{strategy}.log")
    print(f"merge {pair} {strategy}: exit {rc} in {time.time() - started:.0f}s", flush=True)
    if rc:
        raise SystemExit(f"merge {pair} {strategy} failed; see {out / f'merge_{pair}_{strategy}.log'}")
    return json.loads((folder / "merge.json").read_text())


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.2f}"


def _mid_acc(path: dict | None) -> float | None:
    return min(path["points"], key=lambda p: abs(p["lambda"] - 0.5))["test_acc"] if path else None


def table(results: dict[str, dict[str, dict]]) -> str:
    """One row per (pair, strategy): members, merge, weights, barriers on the test split."""
    lines = [
        "| tickets | strategy | A test acc (%) | B test acc (%) | merged test acc (%) | merged weights (% of one net) | "
        "loss barrier naive / aligned | test acc at λ=0.5 naive / aligned (%) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for pair, by_strategy in results.items():
        for strategy, m in by_strategy.items():
            a, b = m["members"][0], m["members"][1]
            paths = {p["kind"]: p for p in m["paths"]}
            naive, aligned = paths.get("naive"), paths.get("aligned")
            barrier = " / ".join(f"{p['loss_barrier']:.3f}" if p else "-" for p in (naive, aligned))
            lines.append(
                f"| {pair} | {strategy} | {_pct(a['test_acc'])} | {_pct(b['test_acc'])} | {_pct(m['merged']['test_acc'])} | "
                f"{_pct(m['merged']['weights_remaining'])} | {barrier} | {_pct(_mid_acc(naive))} / {_pct(_mid_acc(aligned))} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--steps", type=int, default=3000, help="training steps per round")
    parser.add_argument("--rounds", type=int, default=3, help="IMP rounds (20%% per round, output layer 10%%)")
    parser.add_argument("--train-only", action="store_true")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    train_s = {name: round(train(args.out, name, args.steps, args.rounds), 1) for name in RUNS}
    if args.train_only:
        return
    results = {pair: {s: merge(args.out, pair, s, args.rounds) for s in STRATEGIES} for pair in PAIRS}
    print(table(results))
    print(json.dumps({
        "steps": args.steps, "rounds": args.rounds, "train_wall_s": train_s, "wall_s": round(time.time() - started, 1),
        "results": {p: {s: {"merged_test_acc": m["merged"]["test_acc"], "members_test_acc": [x["test_acc"] for x in m["members"]],
                            "weights_remaining": m["merged"]["weights_remaining"],
                            "loss_barrier": {p_["kind"]: p_["loss_barrier"] for p_ in m["paths"]},
                            "mask_overlap": m["mask_overlap"]}
                        for s, m in by.items()} for p, by in results.items()},
    }))


if __name__ == "__main__":
    main()
