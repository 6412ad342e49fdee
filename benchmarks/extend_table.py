"""The README's frankenmodel evidence: a Fashion-MNIST ticket for classes 0-4 learns 5-9.

    python benchmarks/extend_table.py runs/extend [--steps 2000]

1. ``lth run lenet300_fashion_mnist_classes04``: IMP on classes 0-4 to 16.8% (round 8);
2. ``lth extend`` by classes 5-9 (``frankenmodel_fashion_mnist``: 20 rehearsal images per
   old class, so with and without rehearsal, plus the fine-tune and dense baselines), and
   again with 200 and 1,000 rehearsal images per old class (baselines off);
3. a chain: classes 5-7 with half of the new weights given back (``extend.prune=0.5``),
   then classes 8-9 from that extension (baselines off);
4. ``lth report`` over both extensions, and the markdown table printed.

Every step is a plain ``lth`` command (printed before it runs); finished steps are reused.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

LTH = [sys.executable, "-m", "lth_core.commands.cli"]


def lth(*args: str) -> float:
    print("$ lth " + " ".join(args), flush=True)
    t0 = time.time()
    subprocess.run([*LTH, *args], check=True)
    return time.time() - t0


def row(name: str, v: dict, tasks: list[str]) -> str:
    cells = [f"{100 * v['task_acc'][t]:.2f}" if t in v["task_acc"] else "-" for t in tasks]
    return f"| {name} | " + " | ".join(cells) + f" | {100 * v['joint_acc']:.2f} |"


def table(folder: Path) -> str:
    record = json.loads((folder / "extend.json").read_text())
    tasks = [str(t["task"]) for t in record["tasks"]]
    labels = [f"task {t['task']} ({t['classes'][0]}-{t['classes'][-1]})" for t in record["tasks"]]
    lines = [f"| {folder.name} | " + " | ".join(labels) + " | joint |", "|" + "---|" * (len(tasks) + 2)]
    lines.append(row("before (source)", record["before"], tasks))
    lines += [row(name, v, tasks) for name, v in record["variants"].items()]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("--steps", type=int, default=2000, help="training steps per round and per extension variant")
    args = parser.parse_args()
    root, steps = args.root, [f"--set=trainer.max_steps={args.steps}", "--set=tracking=none"]
    times = {}
    if not (root / "a" / "summary.json").is_file():
        times["ticket"] = lth("run", "lenet300_fashion_mnist_classes04", *steps, "--out", str(root / "a"))
    ticket = str(root / "a" / "round_8")
    jobs = {
        "ab": [ticket, "--recipe", "frankenmodel_fashion_mnist", *steps],
        "ab_r200": [ticket, "--recipe", "frankenmodel_fashion_mnist", *steps, "--set=extend.rehearsal=200", "--set=extend.baselines=false"],
        "ab_r1000": [ticket, "--recipe", "frankenmodel_fashion_mnist", *steps, "--set=extend.rehearsal=1000", "--set=extend.baselines=false"],
        "ab567": [ticket, "--recipe", "frankenmodel_fashion_mnist", *steps, "--set=extend.classes=[5,6,7]",
                  "--set=extend.prune=0.5", "--set=extend.baselines=false"],
        "abc": [str(root / "ab567"), "--recipe", "frankenmodel_fashion_mnist", *steps, "--set=extend.classes=[8,9]",
                "--set=extend.baselines=false"],
    }
    for name, job in jobs.items():
        if not (root / name / "extend.json").is_file():
            times[name] = lth("extend", *job, "--out", str(root / name))
    lth("report", str(root / "ab"), str(root / "abc"), "--out", str(root / "report"))
    for name in jobs:
        print(f"\n{table(root / name)}")
    print("\nwall time (s):", {k: round(v) for k, v in times.items()})


if __name__ == "__main__":
    main()
