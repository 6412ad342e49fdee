"""One ``lth run`` in its own process, as the table benchmarks start theirs, and the row of a
finished run's ``summary.json`` they read back.

A fresh process per run counts its imports and keeps one run's memory from the next; one
thread each (``OMP_NUM_THREADS=1``), so ``--jobs`` runs share the cores without
oversubscribing them; W&B offline, never prompting. The output goes to ``OUT/<folder>.log``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def lth_run(out: Path, folder: str, recipe: str, overrides: list[str]) -> int:
    """Run ``recipe`` into ``out/folder`` with ``--set`` ``overrides`` (later ones win); its exit status."""
    args = [sys.executable, "-m", "lth_core.commands.cli", "run", recipe, "--out", str(out / folder)]
    for o in overrides:
        args += ["--set", o]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    with open(out / f"{folder}.log", "w") as log:
        return subprocess.run(args, stdout=log, stderr=subprocess.STDOUT, env=env, check=False).returncode


def fashion_lenet_run(out: Path, folder: str, steps: int, overrides: list[str]) -> int:
    """One trial of the bundled ``lenet300_fashion_mnist`` recipe into ``out/folder``: ``steps``
    training steps a run, no controls, no tracking, no progress bar, then ``overrides``
    (later ones win). Prints and returns its exit status."""
    common = ["trials=1", f"trainer.max_steps={steps}", "tracking=none", "controls=[]", "trainer.enable_progress_bar=false"]
    rc = lth_run(out, folder, "lenet300_fashion_mnist", common + overrides)
    print(f"{folder}: exit {rc}", flush=True)
    return rc


def summary_row(summary: dict, run: str, round_: int | None) -> dict | None:
    """Run ``run``'s (``ticket`` or a control's) row for round ``round_`` in a ``summary.json``,
    its last row when ``round_`` is None; None when there is none."""
    rows = summary["rounds"] if run == "ticket" else summary["controls"].get(run, [])
    if round_ is None:
        return rows[-1] if rows else None
    return next((r for r in rows if r["round"] == round_), None)
